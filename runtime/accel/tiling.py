"""The tile search of the accelerator operators and its cost model.

:func:`plan_conv2d` enumerates the tile shapes of a convolution (dense layers are 1x1
convolutions) that fit the buffers and fields (:func:`~tessera.runtime.accel.conv2d.fits`) and
picks the one with the lowest estimated cycle count; fewer instructions break ties.

The estimate (:func:`estimate`) is an analytic model of the RTL running the emitter's schedule,
evaluated once per distinct tile shape (at most two extents per dimension: the full tiles and
the ragged last one):

- compute: one cycle per GEMM step plus ``INSN`` per instruction; the reset and every epilogue
  ALU instruction pass once over the tile's rows; residual rows arrive by compute-module loads
  (``LOAD_FIXED`` plus their beats), which stall the GEMMs;
- load: per LOAD, ``LOAD_FIXED`` plus its DRAM beats plus one cycle per padding element;
  weights are loaded once per group of output blocks when every chunk has its own place in the
  weight buffer (weight-stationary), else once per stage;
- store: its beats plus ``STORE_FIXED`` per STORE;
- the three modules overlap (two threads) and a tile costs the slowest; the first stage's loads
  and the last tile's epilogue and store are not overlapped.

:func:`tessera.runtime.accel.tiling` is checked against the cycle model of the RTL
(``sim/timing``) in ``tests/unit/test_tiling.py``; ``tessera compile --tune`` ranks the best
candidates of this model with the cycle model itself (:func:`tune_conv2d`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import lru_cache, partial

from tessera.config import Config
from tessera.errors import ProgramError
from tessera.isa import INSN_BYTES
from tessera.runtime.accel.conv2d import (
    ConvGeom,
    ConvShape,
    ConvTiles,
    EpilogueShape,
    const_blocks,
    const_rows,
    emit_conv2d,
    fits,
    gemm_part_count,
)
from tessera.runtime.accel.epilogue import Epilogue
from tessera.runtime.accel.layer import LayerAddrs
from tessera.runtime.accel.requant import DeviceEpilogue, lower_epilogue
from tessera.runtime.builder import CommandBuilder
from tessera.runtime.layout import ceil_div
from tessera.sim import timing

__all__ = ["plan_conv2d", "tune_conv2d", "rank", "ranked_candidates", "estimate", "measure",
           "candidates", "spans", "INSN", "LOAD_FIXED", "STORE_FIXED"]

INSN = 7  # compute cycles per GEMM/ALU instruction beyond its steps (FSM and pipeline fill)
LOAD_FIXED = 22  # cycles per LOAD beyond its beats (FSM, request, DRAM read latency)
STORE_FIXED = 24  # cycles per STORE beyond its beats (FSM, write responses)


def spans(total: int, step: int) -> list[tuple[int, int]]:
    """(extent, count) of the full tiles and the ragged last tile covering ``total``."""
    full, rest = divmod(total, step)
    return [(step, full)] * (full > 0) + [(rest, 1)] * (rest > 0)


def _extents(total: int, cap: int = 24) -> list[int]:
    """Candidate tile extents for a dimension of ``total``: every balanced split
    ``ceil(total / k)``, and powers of two."""
    out = {ceil_div(total, k) for k in range(1, min(total, cap) + 1)}
    out |= {1 << i for i in range(total.bit_length()) if 1 << i <= total}
    return sorted(out)


@dataclass(frozen=True)
class _Cost:
    bus: int
    inp_beats: float  # beats per input element
    wgt_beats: float
    out_beats: float
    acc8_beats: float
    acc_beats: float


def _cost(cfg: Config) -> _Cost:
    b = cfg.mem_bus_bytes
    return _Cost(b, cfg.inp_elem_bytes / b, cfg.wgt_elem_bytes / b, cfg.out_elem_bytes / b,
                 cfg.acc8_elem_bytes / b, cfg.acc_elem_bytes / b)


def _beats(elems: int, per: float) -> int:
    return max(1, round(elems * per)) if elems else 0


@lru_cache(maxsize=4096)
def _spans(total: int, step: int) -> tuple[tuple[int, int], ...]:
    return tuple(spans(total, step))


@lru_cache(maxsize=4096)
def _chunks(rb: int, kc: int, kh: int, tkh: int, kw: int, tkw: int
            ) -> tuple[tuple[tuple[int, int, int, int], ...], int]:
    """The reduction chunks (kc, count, tkh, tkw) of a tile shape and their number."""
    chunks = tuple((kc_, nk * nc * nq, tkh_, tkw_) for kc_, nc in spans(rb, kc)
                   for tkh_, nk in spans(kh, tkh) for tkw_, nq in spans(kw, tkw))
    return chunks, sum(n for _, n, _, _ in chunks)


def estimate(cfg: Config, g: ConvGeom, t: ConvTiles, prog: DeviceEpilogue | EpilogueShape,
             deferred: bool = True) -> int:
    """Estimated cycles of the layer with tile shape ``t`` (resolved; see the module doc)."""
    prog = EpilogueShape.of(prog)
    c = _cost(cfg)
    n_alu = prog.steps
    residual = prog.residual
    db = t.double_buffer
    overlap = deferred and db  # epilogues and resets on the ALU engine
    chunks, n_chunks = _chunks(g.rb, t.kc, g.kh, t.tkh, g.kw, t.tkw)
    wsize = t.to * t.kc * t.tkh * t.tkw
    wgt_cap = cfg.wgt_depth // (2 if db else 1)
    stationary = n_chunks * wsize <= wgt_cap
    n_sp = ceil_div(g.oh, t.th) * ceil_div(g.ow, t.tw) * ceil_div(g.n, t.tn)
    total = 0
    first_load = last = 0
    # loop invariants hoisted (the arithmetic below is term for term the model's)
    sp_div = max(1, n_sp)
    sub = g.subsampled
    whole = not (g.pt or g.pb or g.pl or g.pr)
    inp_beats, wgt_beats = c.inp_beats, c.wgt_beats
    ws, hs, ns = _spans(g.ow, t.tw), _spans(g.oh, t.th), _spans(g.n, t.tn)
    # input window rows / columns per (tile extent, chunk extent)
    ihs = {(th, tkh): g.in_rows(th, tkh) for th, _ in hs for _, _, tkh, _ in chunks}
    iws = {(tw, tkw): g.in_width(tw, tkw) for tw, _ in ws for _, _, _, tkw in chunks}
    for to, k_o in _spans(g.ob, t.to):
        wins = g.max_windows(to)  # input windows a tile's stages load
        for th, k_h in hs:
            for tw, k_w in ws:
                for tn, k_n in ns:
                    rows = tn * to * th * tw
                    gemm = INSN
                    load = 0
                    stage_g, stage_l = [], []
                    for kc, count, tkh, tkw in chunks:
                        steps = rows * kc * tkh * tkw
                        ib = wins * kc  # input blocks the stage loads
                        parts = gemm_part_count(steps, n_chunks)
                        gemm += count * (steps + parts * INSN)
                        stage_g += [steps + parts * INSN] * count
                        ih, iw = ihs[th, tkh], iws[tw, tkw]
                        if sub:
                            e = th * iw
                            inp = tn * ib * (LOAD_FIXED + (max(1, round(e * inp_beats))
                                                           if e else 0))
                        elif ih == g.h and iw == g.w and whole:
                            e = tn * ib * ih * iw
                            inp = LOAD_FIXED + (max(1, round(e * inp_beats)) if e else 0)
                        else:
                            e = ih * iw
                            inp = tn * ib * (LOAD_FIXED + (max(1, round(e * inp_beats))
                                                           if e else 0))
                        e = to * kc * tkh * tkw
                        wgt = LOAD_FIXED + (max(1, round(e * wgt_beats)) if e else 0)
                        if tkw < g.kw:  # one LOAD per output and input block
                            wgt += (to * kc - 1) * LOAD_FIXED
                        if stationary:
                            wgt = wgt / sp_div  # once per group of output blocks
                        load += count * (inp + wgt)
                        stage_l += [inp + wgt] * count
                    # each stage's GEMMs run while the next stage's loads do
                    paced = INSN + sum(map(max, stage_g, stage_l[1:] + stage_l[:1]))
                    stores = tn if tw == g.ow else tn * to
                    store = _beats(rows, c.out_beats) + STORE_FIXED * stores
                    res = _beats(rows, c.acc8_beats) + LOAD_FIXED * stores if residual else 0
                    alu = (rows + 4) * n_alu  # the epilogue on the ALU engine
                    reset = rows + 4
                    part = gemm / max(1, parts * n_chunks)  # the schedule's slot grain (about)
                    if overlap:
                        main = paced + res + 8 + 3 * n_alu
                        # the engine: epilogue of t-1 and zeroing of t+1; with two regions the
                        # zeroing also waits for the store of t-1, which waits for the epilogue
                        chain = alu + reset + (store + 1.5 * part if t.regions == 2 else 0)
                        tile = max(main, chain, store)
                    elif db:
                        tile = max(paced + res + alu + reset, store)
                    else:
                        tile = gemm + res + alu + reset + load + store
                    total += k_o * k_h * k_w * k_n * tile
                    first_load = first_load or int(load / max(1, n_chunks))
                    last = max(last, store + (alu if overlap else 0))
    blocks = const_blocks(cfg, g, prog, t.to)
    groups = 1 if blocks == g.ob else ceil_div(g.ob, t.to)
    total += groups * (prog.per + prog.uni) * (LOAD_FIXED + _beats(blocks, c.acc_beats))
    if db:
        total += first_load + last
    return int(total)


def _tile(th: int, *, to: int, kc: int, db: bool, tw: int, tkh: int, tn: int, rg: int,
          tkw: int) -> ConvTiles:
    return ConvTiles(to, th, kc, db, tw, tkh, tn, rg, tkw=tkw)


def candidates(cfg: Config, g: ConvGeom, prog: DeviceEpilogue, double_buffer: bool,
               wide: bool = False, tune: bool = False, split_columns: bool = False
               ) -> Iterable[ConvTiles]:
    """Feasible tile shapes to consider: full-width tiles over the whole kernel, or (``wide``)
    every width and kernel-row split as well, or (``split_columns``, for kernels too wide for
    one input window) kernel-column splits too. Per combination of the other extents only the
    tallest feasible tiles are kept (and their balanced variant), unless ``tune``."""
    wide = wide or split_columns
    prog = EpilogueShape.of(prog)
    tws = _extents(g.ow) if wide else [g.ow]
    tkhs = list(range(1, g.kh + 1)) if wide else [g.kh]
    tkws = _extents(g.kw) if split_columns else [g.kw]
    ths = _extents(g.oh)
    # with R regions the store module runs up to R - 1 tiles ahead of the resets that wait
    # for it, so R - 1 STORE->COMPUTE tokens can be outstanding in the S2C queue
    regions = tuple(r for r in (2, 4) if r - 1 <= cfg.dep_queue_depth) if double_buffer \
        else (2,)
    for tn, to, tw, kc, tkh, tkw, rg in itertools.product(
            _extents(g.n, 8), _extents(g.ob), tws, _extents(g.rb), tkhs, tkws, regions):
        tile = partial(_tile, to=to, kc=kc, db=double_buffer, tw=tw, tkh=tkh, tn=tn, rg=rg,
                       tkw=tkw)
        feasible = [th for th in ths if fits(cfg, g, tile(th), prog) is None] if tune else []
        if not tune:
            # feasibility is monotone in th (every limit of fits() grows with it): the tallest
            # feasible height, by bisection unless the tallest of all fits
            lo, hi = len(ths), len(ths)  # ths[:lo] fit, ths[hi:] do not
            if fits(cfg, g, tile(ths[-1]), prog) is not None:
                lo, hi = 0, len(ths) - 1
                while lo < hi:
                    mid = (lo + hi) // 2
                    if fits(cfg, g, tile(ths[mid]), prog) is None:
                        lo = mid + 1
                    else:
                        hi = mid
            if lo:
                th = ths[lo - 1]
                feasible = sorted({th, ceil_div(g.oh, ceil_div(g.oh, th))})
        for th in feasible:
            yield tile(th)


def plan_conv2d(cfg: Config, g: ConvGeom, prog: DeviceEpilogue | None = None, *,
                double_buffer: bool = True) -> ConvTiles:
    """The feasible tile shape with the lowest estimated cycle count for the layer's epilogue
    program ``prog`` (default: no bias, identity requantisation).

    Double-buffered full-width tiles over the whole kernel are searched first; single
    buffering, split widths and split kernel rows only when nothing fits (very wide rows, tall
    kernels or a small config), split kernel columns when still nothing fits (wide kernels).
    """
    if prog is None:
        prog = lower_epilogue(Epilogue(), None, g.ob * cfg.block_out)
    if not isinstance(prog, DeviceEpilogue):
        raise ProgramError(f"plan_conv2d needs the layer's DeviceEpilogue, not {prog!r}")
    dbs = (True, False) if double_buffer and cfg.dep_queue_depth >= 2 else (False,)
    for wide, split in ((False, False), (True, False), (True, True)):
        for db in dbs:
            ranked = ranked_candidates(cfg, g, prog, db, wide, split, top=1)
            if ranked:
                return ranked[0]
    small = ConvTiles(1, 1, 1, False, 1, 1, 1, tkw=1)
    why = fits(cfg, g, small, prog)
    raise ProgramError(
        f"no conv2d tiling fits {cfg.summary()}: even a 1x1x1 tile over one kernel tap fails "
        f"({why}; {g.kh}x{g.kw} kernel, {g.cb} input and {g.ob} output channel blocks, "
        f"{const_rows(prog, 1)} constant rows)")


_RANKED: dict[tuple, list[tuple[int, int, ConvTiles]]] = {}
_RANKED_MAX = 256  # distinct searches kept per process (a large network has ~100)


def ranked_candidates(cfg: Config, g: ConvGeom, prog: DeviceEpilogue | EpilogueShape,
                      double_buffer: bool, wide: bool = False, split_columns: bool = False, *,
                      regions: int | None = None, top: int | None = None) -> list[ConvTiles]:
    """``rank(cfg, g, prog, candidates(cfg, g, prog, double_buffer, wide, split_columns=...))``
    (only the tiles with ``regions`` accumulator regions, only the ``top`` first), memoised per
    process on everything the search reads (layers of one shape and epilogue structure, e.g. a
    network's repeated blocks, are searched once). The ranking is a stable sort, so a filtered
    ranking is the ranking of the filtered candidates."""
    shape = EpilogueShape.of(prog)
    key = (cfg, g, shape, double_buffer, wide, split_columns)
    keyed = _RANKED.get(key)
    if keyed is None:
        if len(_RANKED) >= _RANKED_MAX:
            _RANKED.clear()
        keyed = _RANKED[key] = _rank_keyed(cfg, g, shape, candidates(
            cfg, g, shape, double_buffer, wide, split_columns=split_columns))
    out = []
    for c, _, t in keyed:
        if regions is None or t.regions == regions:
            if top is not None and len(out) >= top:
                break
            out.append(replace(t, est_cycles=c))
    return out


def _rank_keyed(cfg: Config, g: ConvGeom, prog: EpilogueShape, tiles: Iterable[ConvTiles]
                ) -> list[tuple[int, int, ConvTiles]]:
    keyed = []
    for t in tiles:
        n_tiles = (ceil_div(g.ob, t.to) * ceil_div(g.oh, t.th) * ceil_div(g.ow, t.tw)
                   * ceil_div(g.n, t.tn))
        keyed.append((estimate(cfg, g, t, prog), n_tiles, t))
    keyed.sort(key=lambda k: (k[0], k[1]))
    return keyed


def rank(cfg: Config, g: ConvGeom, prog: DeviceEpilogue | EpilogueShape,
         tiles: Iterable[ConvTiles]) -> list[ConvTiles]:
    """``tiles`` by estimated cycles (fewer tiles break ties), each with ``est_cycles``."""
    keyed = _rank_keyed(cfg, g, EpilogueShape.of(prog), tiles)
    return [replace(t, est_cycles=c) for c, _, t in keyed]


_ADDRS = LayerAddrs(0x0100_0000, 0x0200_0000, 0x0300_0000, 0x0400_0000, 0x0500_0000)
_UOP_AREA, _INSN_AREA = 0x0600_0000, 0x0700_0000


def measure(cfg: Config, shape: ConvShape, prog: DeviceEpilogue, tiles: ConvTiles,
            dram: timing.DramTiming | None = None) -> int:
    """Cycles the RTL takes for the layer with tile shape ``tiles``, by the cycle model
    (``sim/timing``) on the emitted stream (tensors at fixed, aligned addresses)."""
    b = CommandBuilder(cfg)
    addrs = replace(_ADDRS, consts=_ADDRS.consts if prog.vectors else None,
                    residual=_ADDRS.residual if prog.residual else None)
    emit_conv2d(b, shape, addrs, prog, tiles=tiles)
    p = b.finish()
    code = p.to_bytes(_UOP_AREA)
    n = len(code) // INSN_BYTES
    pred = timing.predict(timing.decode_stream(code, cfg), cfg, dram, insn_addr=_INSN_AREA,
                          insn_count=n)
    if pred.cycles is None:
        raise ProgramError(f"the cycle model cannot finish the layer: {pred.blocked}")
    return pred.cycles


def tune_conv2d(cfg: Config, shape: ConvShape, prog: DeviceEpilogue, *,
                double_buffer: bool = True, top: int = 8,
                dram: timing.DramTiming | None = None) -> ConvTiles:
    """A wider search than :func:`plan_conv2d`: every feasible tile height, width and
    kernel-row split, both accumulator region counts and single buffering are ranked by the
    analytic model, and the ``top`` best are run through the cycle model of the RTL
    (:func:`measure`); the fastest wins, with ``est_cycles`` its measured cycles."""
    g = ConvGeom.of(cfg, shape)
    dbs = (True, False) if double_buffer and cfg.dep_queue_depth >= 2 else (False,)
    pool: list[ConvTiles] = []
    for db in dbs:
        pool += rank(cfg, g, prog, candidates(cfg, g, prog, db, wide=True, tune=True))
    if not pool:
        return plan_conv2d(cfg, g, prog, double_buffer=double_buffer)  # raises the error
    pool.sort(key=lambda t: t.est_cycles)
    best, best_cycles = None, None
    for t in pool[:max(1, top)]:
        c = measure(cfg, shape, prog, t, dram)
        if best_cycles is None or c < best_cycles:
            best, best_cycles = t, c
    return replace(best, est_cycles=best_cycles)
