"""The one tile pipeline every accelerator kernel is emitted through.

An operator (:mod:`~tessera.runtime.accel.conv2d`, :mod:`~tessera.runtime.accel.dense`)
describes its work as a list of :class:`Tile` objects. A tile is one output tile held in the
accumulator: zeroed, built up by reduction :class:`Stage` objects (loads of an input and a
weight chunk into SRAM, then one or more GEMM instructions, the stage's *parts*), finished by its
epilogue (ALU instructions reading the layer's constant rows and, with a residual, rows loaded
by ACC_8BIT loads) and written back by STOREs. :func:`emit_tiles` turns that list into one
well-synchronised stream.

Buffers. The accumulator holds two (or four) tile regions alternating between its two banks
(rows ``[0, D/2)`` and ``[D/2, D)``, ``D`` its depth), and the layer's constant rows at its top;
the input and weight buffers are split into two halves used by alternate stages. Tiles cycle
through the accumulator regions and stages alternate between the input/weight halves (VTA's two
virtual threads).

The schedule of tile ``t`` (half ``h``), two threads::

    GEMM parts of t ...                        the loads of each stage run on the load module
      after the first part:   push C2S(t-1)    tile t-1's epilogue is done: its STOREs may run
                              residual loads of t
      after part r:           pop S2C(t+1-R)   tile t+1-R is stored: zero tile t+1 (next
                              reset(t+1)       region; R regions)
    fence                                      (deferred ALUs only) reset(t+1) is complete
    epilogue ALUs of t                         deferred: they run while tile t+1's GEMMs do

With deferred ALU instructions (the hardware's ALU engine, docs/spec-notes.md) the epilogue of
tile ``t`` and the reset of tile ``t+1`` run concurrently with GEMMs on the other half; the fence
(a non-deferred empty ALU instruction) keeps the reset of tile ``t+1`` before its first GEMM.
With two regions ``r`` is chosen so that the store of tile ``t-1`` is likely done when the reset
pops its token; with four the reset goes with the first slot.
Without deferred ALUs the same order is run in sequence by the compute module. With one thread
everything is serialised: reset, stages, epilogue, store, per tile.

Tokens (SPEC §5) order exactly the conflicting accesses: L2C after a stage's loads (its first
GEMM part pops it); C2L after a stage's last GEMM part when the stage two later (same half)
loads anything; C2S and S2C as above. A load whose exact region (memory type, SRAM address,
DRAM source, shape, padding) is still resident in its half from that half's previous stage is
skipped, e.g. conv weights reused by consecutive spatial tiles.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tessera.errors import ProgramError
from tessera.isa import AluOp, MemType
from tessera.runtime.builder import CommandBuilder
from tessera.runtime.deps import Module
from tessera.runtime.uop_cache import MicroKernel

__all__ = ["Load", "Store", "Stage", "AluPass", "Tile", "AccPlan", "emit_tiles",
           "thread_caps", "acc_plan", "acc_cap"]

LOAD, COMPUTE, STORE = Module.LOAD, Module.COMPUTE, Module.STORE


@dataclass(frozen=True)
class Load:
    """A 2-D LOAD. ``sram`` is relative to the stage's buffer half (INP, WGT), to the tile's
    accumulator base (ACC_8BIT) or to the constant rows (ACC); ``dram`` is an element index
    (SPEC §2)."""

    mem_type: MemType
    sram: int
    dram: int
    y: int
    x: int
    stride: int
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)

    @property
    def span(self) -> int:
        """SRAM elements the load writes (padding included)."""
        yp0, yp1, xp0, xp1 = self.pads
        return (yp0 + self.y + yp1) * (xp0 + self.x + xp1)


@dataclass(frozen=True)
class Store:
    """A 2-D STORE of ``y`` rows of ``x`` consecutive out-buffer elements from ``sram``
    (relative to the tile's accumulator base) to DRAM element ``dram + row * stride``."""

    sram: int
    dram: int
    y: int
    x: int
    stride: int


@dataclass(frozen=True)
class Stage:
    """One reduction step: INP/WGT loads into the current half, then GEMM instructions whose
    kernels ``kernels(inp_base, wgt_base, acc_base)`` builds for the halves the pipeline assigns
    (one per part; together they run the stage's whole loop nest)."""

    loads: tuple[Load, ...]
    kernels: Callable[[int, int, int], tuple[MicroKernel, ...]]


@dataclass(frozen=True)
class AluPass:
    """One ALU instruction of a tile's epilogue: ``kernel(acc_base, const_base)``, ``op`` and an
    immediate (``None``: the kernel's source rows are the operand)."""

    kernel: Callable[[int, int], MicroKernel]
    op: AluOp
    imm: int | None = None


@dataclass(frozen=True)
class Tile:
    """One output tile: ``rows`` result rows (zeroed by ``reset(acc_base)``) and ``acc_rows``
    rows in all (with the residual rows); ``consts``: ACC loads of the constant rows its
    epilogue reads (emitted when they differ from the previous tile's); ``store_cycles``: the
    estimated duration of its STOREs (for the schedule)."""

    rows: int
    acc_rows: int
    reset: Callable[[int], MicroKernel]
    stages: tuple[Stage, ...]
    residual_loads: tuple[Load, ...]
    alu: tuple[AluPass, ...]
    stores: tuple[Store, ...]
    consts: tuple[Load, ...] = ()
    store_cycles: int = 0


@dataclass(frozen=True)
class AccPlan:
    """Where the accumulator's tile regions and constant rows are."""

    bases: tuple[int, ...]  # first row of each tile region
    cap: int  # rows available to a tile
    const_base: int  # first constant row (constants occupy [const_base, depth))


def acc_plan(cfg, regions: int, const_rows: int) -> AccPlan:
    """The accumulator layout for ``regions`` tile regions (1, 2 or 4) and ``const_rows``
    constant rows at the top of the buffer. With two or four regions they alternate between
    the two banks (``[0, D/2)`` and ``[D/2, D)``), so consecutive tiles use different banks."""
    d = cfg.acc_depth
    if regions not in (1, 2, 4):
        raise ProgramError(f"accumulator regions must be 1, 2 or 4, not {regions!r}")
    if const_rows < 0 or const_rows >= d // max(regions, 2):
        raise ProgramError(f"{const_rows} constant rows do not fit the accumulator of {d} rows "
                           f"with {regions} tile regions")
    cap = acc_cap(cfg, regions, const_rows)
    if regions == 1:
        return AccPlan((0,), cap, d - const_rows)
    bases = tuple((r % 2) * (d // 2) + (r // 2) * cap for r in range(regions))
    return AccPlan(bases, cap, d - const_rows)


def acc_cap(cfg, regions: int, const_rows: int) -> int:
    """Rows one tile region holds (:func:`acc_plan`'s ``cap``; arguments it accepts)."""
    d = cfg.acc_depth
    return d - const_rows if regions == 1 else (d // 2 - const_rows) // (regions // 2)


def thread_caps(cfg, threads: int) -> tuple[int, int]:
    """Input and weight elements available to one virtual thread."""
    if threads not in (1, 2):
        raise ProgramError(f"threads must be 1 or 2, not {threads!r}")
    if threads == 2 and cfg.dep_queue_depth < 2:
        raise ProgramError("double buffering needs dep_queue_depth >= 2")
    return cfg.inp_depth // threads, cfg.wgt_depth // threads


def _plan_loads(tiles: list[Tile], threads: int, caps: dict[MemType, int]) -> list[list[tuple]]:
    """Absolute load arguments of every stage, minus those whose exact region is still resident
    in its half (loaded there earlier and not overwritten since)."""
    # per thread half and memory type: sram start -> (load arguments, span) of what is there
    resident: list[dict[int, dict[int, tuple]]] = [{mt: {} for mt in caps}
                                                   for _ in range(threads)]
    actual: list[list[tuple]] = []
    u = 0
    for t, tile in enumerate(tiles):
        for s, stage in enumerate(tile.stages):
            half = u % threads
            held = resident[half]
            todo = []
            for r in stage.loads:
                if r.mem_type not in caps:
                    raise ProgramError(f"a reduction stage may load INP or WGT, not "
                                       f"{MemType(r.mem_type).name}")
                cap = caps[r.mem_type]
                span = r.span
                lo = r.sram
                hi = lo + span
                if lo < 0 or hi > cap:
                    raise ProgramError(
                        f"tile {t} stage {s}: {MemType(r.mem_type).name} region [{lo}, "
                        f"{hi}) exceeds one thread's {cap} elements")
                key = (r.mem_type, half * cap + lo, r.dram, r.y, r.x, r.stride, r.pads)
                res = held[r.mem_type]
                if res.get(lo) == (key, span):
                    continue
                gone = [at for at, (_, n) in res.items() if at < hi and lo < at + n]
                for at in gone:
                    del res[at]
                res[lo] = (key, span)
                todo.append(key)
            actual.append(todo)
            u += 1
    return actual


class _Pipe:
    """State shared by the two schedules."""

    def __init__(self, b: CommandBuilder, tiles: list[Tile], threads: int, acc: AccPlan,
                 deferred: bool):
        self.b, self.tiles, self.threads, self.acc = b, tiles, threads, acc
        self.regions = len(acc.bases)
        self.deferred = deferred and threads == 2
        inp_cap, wgt_cap = thread_caps(b.cfg, threads)
        self.inp_cap, self.wgt_cap = inp_cap, wgt_cap
        self.actual = _plan_loads(tiles, threads, {MemType.INP: inp_cap, MemType.WGT: wgt_cap})
        n = len(self.actual)
        self.pops_release = {w for w in range(threads, n) if self.actual[w]}
        self.release_after = {w - threads for w in self.pops_release}
        self.consts: tuple[Load, ...] | None = None
        self._parts: dict[tuple[int, int, int], tuple[Tile, list]] = {}
        self._alu: dict[tuple[int, int], tuple[tuple, list]] = {}
        self.imm_pcs: list[tuple[int, int]] | None = None
        for t, tile in enumerate(tiles):
            if tile.acc_rows > acc.cap:
                raise ProgramError(f"tile {t} needs {tile.acc_rows} accumulator rows; one thread "
                                   f"has {acc.cap}")

    def const_loads(self, tile: Tile) -> None:
        if tile.consts == self.consts:
            return
        cap = self.b.cfg.acc_depth - self.acc.const_base
        for r in tile.consts:
            if r.sram < 0 or r.sram + r.span > cap:
                raise ProgramError(f"constant rows [{r.sram}, {r.sram + r.span}) exceed the "
                                   f"{cap} reserved rows")
            self.b.load_2d(r.mem_type, self.acc.const_base + r.sram, r.dram, r.y, r.x, r.stride,
                           r.pads)
        self.consts = tile.consts

    def stage_loads(self, u: int, pop: bool = True) -> None:
        """The loads of stage ``u`` and their L2C push; ``pop``: the next compute instruction
        pops it (else call :meth:`stage_pop` before the stage's first GEMM part)."""
        b = self.b
        if not self.actual[u]:
            return
        if u in self.pops_release:
            b.dep_pop(COMPUTE, LOAD)  # the GEMM of stage u - threads is done
        for k in self.actual[u]:
            b.load_2d(*k)
        b.dep_push(LOAD, COMPUTE)
        if pop:
            b.dep_pop(LOAD, COMPUTE)

    def stage_pop(self, u: int) -> None:
        if self.actual[u]:
            self.b.dep_pop(LOAD, COMPUTE)

    def parts(self, tile: Tile, u0: int, ab: int) -> list[tuple[int, bool, MicroKernel]]:
        """(stage number, last part of its stage, kernel) of every GEMM part of a tile (the
        same arguments give the same list: it is built once)."""
        key = (id(tile), u0, ab)
        hit = self._parts.get(key)
        if hit is not None and hit[0] is tile:
            return hit[1]
        out = self._parts_of(tile, u0, ab)
        self._parts[key] = (tile, out)
        return out

    def _parts_of(self, tile: Tile, u0: int, ab: int) -> list[tuple[int, bool, MicroKernel]]:
        out = []
        for s, stage in enumerate(tile.stages):
            half = (u0 + s) % self.threads
            ks = stage.kernels(half * self.inp_cap, half * self.wgt_cap, ab)
            out += [(u0 + s, i == len(ks) - 1, k) for i, k in enumerate(ks)]
        return out

    def residual(self, t: int, tile: Tile, ab: int) -> None:
        for r in tile.residual_loads:
            if r.sram < 0 or r.sram + r.span > tile.acc_rows:
                raise ProgramError(f"tile {t}: a residual load leaves the tile's accumulator "
                                   f"rows")
            self.b.load_2d(r.mem_type, ab + r.sram, r.dram, r.y, r.x, r.stride, r.pads)

    def epilogue(self, tile: Tile, ab: int) -> int:
        """The tile's epilogue; returns its ALU engine cycles (steps plus the pipeline's)."""
        cycles = 0
        alu, deferred, imms = self.b.alu, self.deferred, self.imm_pcs
        for j, (p, k) in enumerate(zip(tile.alu, self.alu_kernels(tile, ab))):
            pc = alu(k, p.op, p.imm, deferred=deferred)
            if p.imm is not None and imms is not None:
                imms.append((pc, j))
            cycles += k.steps + 4
        return cycles

    def alu_kernels(self, tile: Tile, ab: int) -> list[MicroKernel]:
        """The kernels of a tile's epilogue passes at accumulator base ``ab`` (tiles of one
        extent share their passes: built once per passes and base)."""
        key = (id(tile.alu), ab)
        hit = self._alu.get(key)
        if hit is not None and hit[0] is tile.alu:
            return hit[1]
        ks = [a.kernel(ab, self.acc.const_base) for a in tile.alu]
        self._alu[key] = (tile.alu, ks)
        return ks

    def stores(self, t: int, tile: Tile, ab: int) -> None:
        b = self.b
        b.dep_pop(COMPUTE, STORE)
        for r in tile.stores:
            if r.sram < 0 or r.sram + r.y * r.x > tile.rows:
                raise ProgramError(f"tile {t}: a store reads outside the tile's result rows")
            b.store_2d(ab + r.sram, r.dram, r.y, r.x, r.stride)
        if t + self.regions < len(self.tiles):
            b.dep_push(STORE, COMPUTE)

    def reset(self, tile: Tile, ab: int) -> None:
        if self.deferred:
            self.b.alu(tile.reset(ab), AluOp.MUL, 0, deferred=True)
        else:
            self.b.gemm(tile.reset(ab), reset=True)


def _slots(parts: list, engine_cycles: int, store_cycles: int | None) -> tuple[int, int]:
    """The parts after which to signal the previous tile's store (its epilogue, about
    ``engine_cycles`` of ALU engine work started with this tile, is then done) and after which
    to zero the next tile (once the store, ``store_cycles``, is done; None: the next tile's
    region is long free, zero it at once); both as early as the GEMM work allows, the reset
    not after the last part when there are two or more."""
    n = len(parts)
    work, c2s = 0, n - 1
    for i, (_, _, k) in enumerate(parts):
        work += k.steps
        if work >= engine_cycles:
            c2s = i
            break
    if store_cycles is None:
        return c2s, c2s
    work, rst = 0, n - 1
    for i in range(c2s + 1, n):
        work += parts[i][2].steps
        if work >= store_cycles:
            rst = i
            break
    if n >= 2 and rst == n - 1 and c2s < n - 1:
        rst = max(c2s + 1, n - 2) if work < store_cycles else rst
    return c2s, rst


def _two_threads(p: _Pipe) -> None:
    b, tiles, acc = p.b, p.tiles, p.acc
    n, total = len(tiles), len(p.actual)
    u = 0
    p.stage_loads(0, pop=False)
    engine = 0  # ALU engine cycles of the previous tile's epilogue
    regions = p.regions
    for t, tile in enumerate(tiles):
        ab = acc.bases[t % regions]
        p.const_loads(tile)
        if t == 0:
            b.gemm(tile.reset(ab), reset=True)
        parts = p.parts(tile, u, ab)
        store = (tiles[t - 1].store_cycles if t else 0) if regions == 2 else None
        c2s, rst = _slots(parts, engine if p.deferred else 0, store) if parts else (0, 0)
        started = set()
        for i, (st, last, kern) in enumerate(parts or [(None, False, None)]):
            if kern is None:  # every stage was padding: the bias alone
                b.fence()
            elif st not in started:
                p.stage_pop(st)
            if kern is not None:
                b.gemm(kern)
            if kern is not None and st not in started:
                started.add(st)
                if st + 1 < total:
                    p.stage_loads(st + 1, pop=False)  # they run during this stage's GEMMs
            if i == c2s:
                if t:
                    b.dep_push(COMPUTE, STORE)  # tile t-1's epilogue is complete
                    p.stores(t - 1, tiles[t - 1], acc.bases[(t - 1) % regions])
                p.residual(t, tile, ab)
            if last and st in p.release_after:
                b.dep_push(COMPUTE, LOAD)
            if i == rst and t + 1 < n:
                if t + 1 >= regions:
                    b.dep_pop(STORE, COMPUTE)  # tile t+1-regions has left the region
                p.reset(tiles[t + 1], acc.bases[(t + 1) % regions])
        u += len(tile.stages)
        if p.deferred and t + 1 < n:
            b.fence()
        engine = p.epilogue(tile, ab)
    b.fence()
    b.dep_push(COMPUTE, STORE)
    p.stores(n - 1, tiles[-1], acc.bases[(n - 1) % regions])


def _one_thread(p: _Pipe) -> None:
    b, tiles, ab = p.b, p.tiles, p.acc.bases[0]
    u = 0
    for t, tile in enumerate(tiles):
        p.const_loads(tile)
        if t:
            b.dep_pop(STORE, COMPUTE)
        b.gemm(tile.reset(ab), reset=True)
        seen: set[int] = set()
        for st, last, kern in p.parts(tile, u, ab):
            if st not in seen:
                seen.add(st)
                p.stage_loads(st)
            b.gemm(kern)
            if last and st in p.release_after:
                b.dep_push(COMPUTE, LOAD)
        u += len(tile.stages)
        p.residual(t, tile, ab)
        p.epilogue(tile, ab)
        b.dep_push(COMPUTE, STORE)
        p.stores(t, tile, ab)


def _kernels(p: _Pipe) -> list[MicroKernel]:
    """Every micro-kernel the layer runs, in order of first use (to preload them)."""
    out: list[MicroKernel] = []
    seen: set[bytes] = set()
    u = 0
    for t, tile in enumerate(p.tiles):
        ab = p.acc.bases[t % p.regions]
        ks = [tile.reset(ab)] + [k for _, _, k in p.parts(tile, u, ab)]
        ks += p.alu_kernels(tile, ab)
        u += len(tile.stages)
        for k in ks:
            if k.key not in seen:
                seen.add(k.key)
                out.append(k)
    return out


def emit_tiles(b: CommandBuilder, tiles: list[Tile], double_buffer: bool, const_rows: int = 0,
               deferred: bool = True, regions: int = 2,
               imm_pcs: list[tuple[int, int]] | None = None) -> dict[str, int]:
    """Append ``tiles`` to ``b`` as one well-synchronised pipeline (module docstring).

    ``const_rows``: accumulator rows the tiles' constant loads need at the top of the buffer;
    ``deferred``: emit the epilogue and the resets as deferred ALU instructions (two threads
    only); ``regions``: accumulator tile regions with two threads (2 or 4; with 4 the zeroing
    of tile t+1 does not wait for the store of tile t-1); ``imm_pcs``: a list to which
    (pc, pass index in its tile's ``alu``) of every epilogue ALU instruction with an immediate
    is appended. Returns counts of what was emitted (``tiles``, ``stages``,
    ``loads_skipped``).
    """
    if not tiles:
        raise ProgramError("a layer needs at least one tile")
    threads = 2 if double_buffer else 1
    p = _Pipe(b, tiles, threads, acc_plan(b.cfg, regions if threads == 2 else 1, const_rows),
              deferred)
    p.imm_pcs = imm_pcs
    b.preload(_kernels(p))
    (_two_threads if threads == 2 else _one_thread)(p)
    skipped = sum(len(s.loads) for t in tiles for s in t.stages) - sum(len(a) for a in p.actual)
    return {"tiles": len(tiles), "stages": len(p.actual), "loads_skipped": skipped}
