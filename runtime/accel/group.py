"""Sibling convolutions in one accelerator stream: layers that read the same input, their tiles
interleaved through one :func:`~tessera.runtime.accel.emitter.emit_tiles` pipeline.

A 1x1 stride-2 downsample does 4-16 GEMM steps per output row but 7 ALU steps of epilogue, so
alone it waits on its epilogue; its sibling 3x3 convolution (same input) does 36-72 GEMM steps
per row. Emitted as one stream, with the tiles of the two interleaved in proportion, the
downsample's epilogues run on the ALU engine while the sibling's GEMMs do (and the other way
round), and the group costs about the GEMM time of both.

Each member keeps its own tile shape and tensors; what they share is the pipeline: the
accumulator's constant rows hold every member's constants (loaded once, at the start), each
member's resident weights have their own range of the weight buffer halves, and the tiles
cycle through the same accumulator regions. :func:`group_fits` says whether members can share
a stream (all double buffered with the same region count, every member's constants resident
and its weights stationary, every tile inside one region).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import numpy as np

from tessera.driver.base import Device, RunStats
from tessera.errors import ProgramError
from tessera.runtime.accel.conv2d import (
    ConvGeom,
    ConvShape,
    ConvTiles,
    _Bases,
    const_blocks,
    const_rows,
    conv2d_params,
    fits,
    tile_list,
)
from tessera.runtime.accel.emitter import Tile, acc_plan, emit_tiles, thread_caps
from tessera.runtime.accel.layer import (
    CONV_TENSORS,
    LayerAddrs,
    LayerStats,
    conv_bases,
    device_epilogue,
    element_base,
)
from tessera.runtime.accel.requant import DeviceEpilogue
from tessera.runtime.builder import CommandBuilder, Program, count_kinds, data_moves, relocate
from tessera.runtime.layout import ceil_div, pack_activation, unpack_activation

__all__ = ["Member", "Measured", "group_fits", "plan_group", "measure_group", "moved_group",
           "emit_conv2d_group", "conv2d_group"]

@dataclass(frozen=True)
class Member:
    """One convolution of a group: its shape, tensor addresses, device epilogue and tiles."""

    shape: ConvShape
    addrs: LayerAddrs
    prog: DeviceEpilogue
    tiles: ConvTiles


@dataclass(frozen=True)
class _Facts:
    """What :func:`group_fits`, :func:`_layout` and :func:`_sequence_cost` read of one member
    with its tiles (computed once per member and tile shape while a group is planned)."""

    geom: ConvGeom
    tiles: ConvTiles  # resolved
    crows: int  # its constant rows
    why: str | None  # fits(): None when the tile fits the member alone
    resident: bool  # its constants are resident for the whole layer
    rows: int  # accumulator rows of one tile (residual included)
    wall: int  # weight elements of every reduction chunk in its own place
    wsize: int  # weight elements of one chunk


def _facts(cfg, m: Member) -> _Facts:
    g = ConvGeom.of(cfg, m.shape)
    t = m.tiles.resolved(g)
    crows = const_rows(m.prog, const_blocks(cfg, g, m.prog, t.to))
    chunks = ceil_div(g.rb, t.kc) * ceil_div(g.kh, t.tkh) * ceil_div(g.kw, t.tkw)
    wsize = t.to * t.kc * t.tkh * t.tkw
    return _Facts(g, t, crows, fits(cfg, g, t, m.prog),
                  const_blocks(cfg, g, m.prog, t.to) == g.ob,
                  t.tn * t.to * t.th * t.tw * (2 if m.prog.residual else 1), chunks * wsize,
                  wsize)


def _offsets(cfg, facts: list[_Facts]) -> tuple[list[int], list[int], int]:
    """Constant-row offsets, weight offsets (each member's chunks of each buffer half from its
    offset on, every chunk in its own place when they fit below the half's capacity
    (weight-stationary, as :func:`~tessera.runtime.accel.conv2d.tile_list` decides), else one
    chunk; one entry more than members: the end) and the total constant rows."""
    const_offs = [sum(f.crows for f in facts[:k]) for k in range(len(facts))]
    _, cap = thread_caps(cfg, 2)
    wgt_offs = [0]
    for f in facts:
        off = wgt_offs[-1]
        wgt_offs.append(off + (f.wall if off + f.wall <= cap else f.wsize))
    return const_offs, wgt_offs, sum(f.crows for f in facts)


def _layout(cfg, members: list[Member]) -> tuple[list[ConvGeom], list[ConvTiles], list[int],
                                                  list[int], int]:
    facts = [_facts(cfg, m) for m in members]
    const_offs, wgt_offs, crow = _offsets(cfg, facts)
    return [f.geom for f in facts], [f.tiles for f in facts], const_offs, wgt_offs, crow


def group_fits(cfg, members: list[Member]) -> str | None:
    """None if ``members`` can share one stream, else why not."""
    if len(members) < 2:
        return "a group needs two or more members"
    return _group_fits(cfg, [_facts(cfg, m) for m in members])


def _group_fits(cfg, facts: list[_Facts]) -> str | None:
    for f in facts:
        if f.why is not None:
            return f.why
        if not f.resident:
            return "a member's constants are not resident for the whole layer"
    tiles = [f.tiles for f in facts]
    if not all(t.double_buffer for t in tiles) or len({t.regions for t in tiles}) != 1:
        return "members must all be double buffered with the same accumulator regions"
    regions = tiles[0].regions
    _, wgt_offs, crow = _offsets(cfg, facts)
    if crow >= cfg.acc_depth // regions:
        return "the members' constants exceed the accumulator"
    cap = acc_plan(cfg, regions, crow).cap
    for f in facts:
        if f.rows > cap:
            return "a member's tile exceeds the accumulator region"
    _, wgt_cap = thread_caps(cfg, 2)
    if wgt_offs[-1] > wgt_cap:
        return "the members' weight chunks exceed the weight buffer"
    return None


def _interleave(lists: list[list[Tile]]) -> list[Tile]:
    """The tiles of every member, interleaved in proportion to their counts."""
    keyed = [((i + 0.5) / len(ts), k, i, t) for k, ts in enumerate(lists)
             for i, t in enumerate(ts)]
    keyed.sort(key=lambda e: e[:3])
    return [e[3] for e in keyed]


def _tile_costs(cfg, m: Member, t: ConvTiles) -> list[tuple[float, float, float]]:
    """(GEMM cycles, ALU engine cycles, rows) of each of the member's tiles with shape ``t``."""
    from tessera.runtime.accel.tiling import INSN

    g = ConvGeom.of(cfg, m.shape)
    n = (ceil_div(g.ob, t.to) * ceil_div(g.oh, t.th) * ceil_div(g.ow, t.tw)
         * ceil_div(g.n, t.tn))
    rows = g.n * g.ob * g.oh * g.ow / n
    per_row = g.rb * g.kh * g.kw
    stages = ceil_div(g.rb, t.kc) * ceil_div(g.kh, t.tkh) * ceil_div(g.kw, t.tkw)
    gemm = rows * per_row + INSN * 2 * stages
    epi = (rows + 4) * len(m.prog.steps) + 3 * INSN
    return [(gemm, epi, rows)] * n


def _sequence_cost(cfg, members: list[Member], tiles: list[ConvTiles]) -> float:
    """Estimated cycles of the interleaved stream: per tile the larger of its GEMM time and
    what the ALU engine must finish meanwhile (the previous tile's epilogue, the next tile's
    reset: tile t+1 shares a bank with t-1)."""
    return _cost_of([_tile_costs(cfg, m, t) for m, t in zip(members, tiles)])


def _cost_of(seq: list[list[tuple[float, float, float]]]) -> float:
    order = _interleave(seq)
    total = 0.0
    for k, (gemm, _, _) in enumerate(order):
        eng = (order[k - 1][1] if k else 0) + (order[k + 1][2] + 8 if k + 1 < len(order) else 0)
        total += max(gemm, eng)
    return total


def plan_group(cfg, members: list[Member], pool: int = 6, measured: int = 4, *,
               keep: list[Measured] | None = None) -> tuple[list[ConvTiles], int] | None:
    """Tile shapes for ``members`` (their ``tiles`` are ignored) that share a stream best, and
    the group's cycles: of the ``pool`` best double-buffered shapes of each member (by its own
    estimate) with a common region count, the ``measured`` combinations with the lowest
    :func:`_sequence_cost` are run through the cycle model (:func:`measure_group`; the analytic
    models do not rank interleaved streams well) and the fastest wins. None when no
    combination fits. ``keep``: a list the winner's measured stream is appended to (see
    :func:`moved_group`)."""
    from tessera.runtime.accel.tiling import ranked_candidates

    if len(members) < 2:
        return None  # group_fits: a group needs two or more members
    trials = []
    for regions in (4, 2):
        pools = []
        for m in members:
            pools.append(ranked_candidates(cfg, ConvGeom.of(cfg, m.shape), m.prog, True,
                                           regions=regions, top=pool))
        # what a combination is judged by, per member and candidate: computed once
        placed = [[replace(m, tiles=t) for t in ts] for m, ts in zip(members, pools)]
        facts = [[_facts(cfg, c) for c in cs] for cs in placed]
        costs = [[_tile_costs(cfg, m, t) for t in ts] for m, ts in zip(members, pools)]
        for combo in itertools.product(*(range(len(ts)) for ts in pools)):
            if _group_fits(cfg, [facts[k][j] for k, j in enumerate(combo)]) is None:
                trial = [placed[k][j] for k, j in enumerate(combo)]
                trials.append((_cost_of([costs[k][j] for k, j in enumerate(combo)]),
                               sum(pools[k][j].est_cycles for k, j in enumerate(combo)),
                               len(trials), trial))
    trials.sort(key=lambda e: e[:3])
    best, win = None, None
    for *_, trial in trials[:measured]:
        got = _measure(cfg, trial, None)
        if best is None or got.cycles < best[1]:
            best, win = ([m.tiles for m in trial], got.cycles), got
    if keep is not None and win is not None:
        keep.append(win)
    return best


@dataclass(frozen=True)
class Measured:
    """A group stream :func:`measure_group` emitted and measured: the members as placed (each
    tensor at the start of its own :data:`_WINDOW`-byte window), the program, its stats and
    cycles."""

    members: list[Member]
    program: Program
    stats: LayerStats
    cycles: int


_WINDOW = 0x0100_0000  # bytes between the measurement's tensor addresses


def measure_group(cfg, members: list[Member], dram=None) -> int:
    """Cycles the RTL takes for the group, by the cycle model on the emitted stream (tensors
    at fixed, aligned addresses; see :func:`~tessera.runtime.accel.tiling.measure`)."""
    return _measure(cfg, members, dram).cycles


def _measure(cfg, members: list[Member], dram) -> Measured:
    from tessera.isa import INSN_BYTES
    from tessera.sim import timing

    b = CommandBuilder(cfg)
    step = _WINDOW
    placed = []
    for k, m in enumerate(members):
        base = 0x0800_0000 + k * 8 * step
        prog = device_epilogue(m.prog, m.shape.o)
        placed.append(replace(m, prog=prog, addrs=LayerAddrs(
            0x0100_0000, base, base + step, base + 2 * step if prog.vectors else None,
            base + 3 * step if prog.residual else None)))
    stats = emit_conv2d_group(b, placed)
    program = b.finish()
    code = program.to_bytes(0x0600_0000)
    pred = timing.predict(timing.decode_stream(code, cfg), cfg, dram, insn_addr=0x0700_0000,
                          insn_count=len(code) // INSN_BYTES)
    if pred.cycles is None:
        raise ProgramError(f"the cycle model cannot finish the group: {pred.blocked}")
    return Measured(placed, program, stats, pred.cycles)


def moved_group(cfg, measured: Measured, members: list[Member]) -> bytes | None:
    """The encoded stream (micro-op area at 0) :func:`emit_conv2d_group` gives for ``members``
    (the measured members with their tensors at other addresses), from the measured stream:
    the emitter adds the addresses it emits to each tensor's element base and decides nothing
    by them, so moving each tensor's window to the tensor's address (:func:`relocate` with
    regions) gives exactly that stream. None when the members are not the measured ones
    apart from their addresses, or a tensor the stream reads or writes reaches beyond its
    window (emit the stream instead)."""
    from tessera.isa import extract, layout

    if len(members) != len(measured.members):
        return None
    regions: dict[int, tuple[int, int]] = {}
    for m, at in zip(members, measured.members):
        if (m.shape, m.tiles, m.prog.steps, tuple(m.prog.vectors), m.prog.uniform) != (
                at.shape, at.tiles, at.prog.steps, tuple(at.prog.vectors), at.prog.uniform):
            return None
        for f, mt, what in CONV_TENSORS:
            new, old = getattr(m.addrs, f), getattr(at.addrs, f)
            if (new is None) != (old is None):
                return None
            if new is not None:
                element_base(cfg, new, mt, what)  # emission's own check
                if regions.setdefault(old, (_WINDOW, new)) != (_WINDOW, new):
                    return None  # one measured tensor, two real ones
    code = measured.program.to_bytes(0)
    # every data LOAD/STORE must start and end inside one window
    words = np.frombuffer(code, "<u8")
    lo, hi = words[0::2], words[1::2]
    uops = np.zeros(len(lo), bool)
    uops[measured.program.uop_load_pcs] = True
    data, eb, extent = data_moves(lo, hi, cfg, uops)
    base = extract(lo, hi, next(fl for fl in layout(cfg).mem if fl.name == "dram_base"))
    start, end = base * eb, (base + extent) * eb
    first = np.array(sorted(regions), np.int64)
    k = np.searchsorted(first, start, side="right") - 1
    at = first[np.maximum(k, 0)]
    inside = (k >= 0) & (start < at + _WINDOW) & (end <= at + _WINDOW)
    moved_end = end - at + np.array([regions[int(a)][1] for a in first], np.int64)[
        np.maximum(k, 0)]
    if not (inside[data].all() and (moved_end[data] <= 1 << 32).all()):
        return None  # (emission raises for a range beyond the 32-bit address space)
    try:
        return relocate(code, cfg, measured.program.uop_load_pcs, 0, regions)
    except ProgramError:
        return None


def emit_conv2d_group(b: CommandBuilder, members: list[Member], *,
                      deferred: bool = True) -> LayerStats:
    """Append the convolutions ``members`` (sharing one input, each with its own tiles,
    weights, epilogue and output) to ``b`` as one pipeline; starts with a barrier."""
    cfg = b.cfg
    members = [replace(m, prog=device_epilogue(m.prog, m.shape.o)) for m in members]
    why = group_fits(cfg, members)
    if why is not None:
        raise ProgramError(f"conv2d group of {len(members)} layers does not fit "
                           f"{cfg.summary()}: {why}")
    geoms, tiles, const_offs, wgt_offs, crow = _layout(cfg, members)
    lists = []
    for m, g, t, co, wo in zip(members, geoms, tiles, const_offs, wgt_offs):
        residual = m.addrs.residual is not None
        if residual != m.prog.residual:
            raise ProgramError("conv2d group: a residual input must be given exactly when the "
                               "member's epilogue has a residual branch")
        if (m.addrs.consts is not None) != bool(m.prog.vectors):
            raise ProgramError("conv2d group: constant rows must be given exactly when the "
                               "member's epilogue has vector operands")
        e = _Bases(*conv_bases(cfg, m.addrs))
        lists.append(tile_list(cfg, g, t, e, m.prog, residual, co, wo))
    consts = tuple(ld for ts in lists for ld in ts[0].consts)
    merged = [replace(t, consts=consts) for t in _interleave(lists)]
    b.barrier()
    start = len(b.insns)
    pipe = emit_tiles(b, merged, True, crow, deferred, tiles[0].regions)
    emitted = b.insns[start:]
    return LayerStats("conv2d group", insns=len(emitted),
                      macs=sum(m.shape.macs for m in members),
                      hw_macs=sum(g.gemm_steps() for g in geoms) * cfg.macs_per_gemm_step,
                      counts=count_kinds(emitted), tiles=tiles[0], pipeline=pipe)


def conv2d_group(device: Device, x: np.ndarray, layers: list[dict], *,
                 tiles: list[ConvTiles] | None = None
                 ) -> tuple[list[np.ndarray], LayerStats, RunStats]:
    """Run sibling convolutions of ``x`` as one group on ``device``. ``layers``: per member a
    dict of :func:`~tessera.runtime.accel.conv2d.conv2d`'s keywords ``w`` (required), ``bias``,
    ``stride``, ``padding``, ``epilogue``, ``dilation``; ``tiles``: per member (default: each
    member's own :func:`~tessera.runtime.accel.tiling.plan_conv2d`). Returns the NCHW int8
    outputs, the group's stats and the run's stats."""
    from tessera.runtime.accel.tiling import plan_conv2d

    cfg = device.config
    xp = pack_activation(x, cfg)
    bufs = {"x": device.alloc(xp.nbytes)}
    device.write(bufs["x"].addr, xp)
    members, outs = [], []
    try:
        for k, spec in enumerate(layers):
            unknown = set(spec) - {"w", "bias", "stride", "padding", "epilogue", "dilation"}
            if "w" not in spec or unknown:
                raise ProgramError(f"conv2d_group layer {k} needs 'w' and takes bias, stride, "
                                   f"padding, epilogue, dilation; not {sorted(unknown)}")
            w = spec["w"]
            s = ConvShape.make(np.shape(x), np.shape(w), spec.get("stride", 1),
                               spec.get("padding", 0), spec.get("dilation", 1))
            params = conv2d_params(cfg, w, spec.get("bias"), spec.get("epilogue"))
            addr = {}
            for key, arr in params.arrays.items():
                bufs[f"{k}:{key}"] = buf = device.alloc(arr.nbytes)
                device.write(buf.addr, arr)
                addr[key] = buf.addr
            out_shape = (xp.shape[0], params.arrays["w"].shape[0], s.oh, s.ow, cfg.batch,
                         cfg.block_out)
            bufs[f"{k}:y"] = y = device.alloc(int(np.prod(out_shape)))
            t = (tiles[k] if tiles is not None else
                 plan_conv2d(cfg, ConvGeom.of(cfg, s), params.program))  # replaced below
            members.append(Member(s, LayerAddrs(bufs["x"].addr, addr["w"], y.addr,
                                                addr.get("consts")), params.program, t))
            outs.append((y.addr, out_shape, s))
        if tiles is None:
            planned = plan_group(cfg, members)
            if planned is None:
                raise ProgramError(f"conv2d_group: no tile shapes let these {len(members)} "
                                   f"layers share a stream on {cfg.summary()}")
            members = [replace(m, tiles=t) for m, t in zip(members, planned[0])]
        b = CommandBuilder(cfg, device)
        stats = emit_conv2d_group(b, members)
        run = b.synchronize()
        ys = [unpack_activation(device.read_array(a, shape, np.int8), (s.n, s.o, s.oh, s.ow))
              for a, shape, s in outs]
    finally:
        for buf in bufs.values():
            device.free(buf)
    return ys, stats, run
