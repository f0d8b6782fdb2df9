"""The one double-buffered tile pipeline every accelerator kernel is emitted through.

An operator (:mod:`~tessera.runtime.accel.conv2d`, :mod:`~tessera.runtime.accel.dense`)
describes its work as a list of :class:`Tile` objects. A tile is one output tile held in the
accumulator: zeroed by a reset GEMM, built up by reduction :class:`Stage` objects (loads of an
input and a weight chunk into SRAM, then one GEMM), finished by its epilogue (accumulator loads of
bias / multiplier / residual rows, then ALU instructions) and written back by STOREs.
:func:`emit_tiles` turns that list into one well-synchronised stream.

Virtual threads (double buffering). The input and weight buffers are split into two halves used
by alternate stages, and the accumulator (with the out buffer) into two halves used by alternate
tiles, so two streams interleave (VTA's two virtual threads): while compute runs the GEMM of
stage ``s`` from one half, the load module fills the other half for stage ``s+1``; while the
store module drains tile ``t`` from one accumulator half, compute works on tile ``t+1`` in the
other. Tokens (SPEC §5) order exactly the conflicting accesses:

- L2C: after the loads of stage ``s``; the GEMM of stage ``s`` pops it;
- C2L: after the GEMM of stage ``s`` when stage ``s + threads`` (same half) loads anything;
  that stage's first load pops it before overwriting the half;
- C2S: after the epilogue of tile ``t``; its first STORE pops it;
- S2C: after the STOREs of tile ``t`` when tile ``t + threads`` exists; its reset GEMM pops it
  before writing that accumulator half.

With one thread the same rules serialise load, compute and store. A load whose exact region
(memory type, SRAM address, DRAM source, shape, padding) is still resident in its half from that
half's previous stage is skipped — e.g. conv weights reused by consecutive spatial tiles.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tessera.errors import ProgramError
from tessera.isa import AluOp, MemType
from tessera.runtime.builder import CommandBuilder
from tessera.runtime.deps import Module
from tessera.runtime.uop_cache import MicroKernel

__all__ = ["Load", "Store", "Stage", "AluPass", "Tile", "emit_tiles", "thread_caps"]

LOAD, COMPUTE, STORE = Module.LOAD, Module.COMPUTE, Module.STORE


@dataclass(frozen=True)
class Load:
    """A 2-D LOAD. ``sram`` is relative to the stage's buffer half (INP, WGT) or to the tile's
    accumulator base (ACC, ACC_8BIT); ``dram`` is an element index (SPEC §2)."""

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
    """One reduction step: INP/WGT loads into the current half, then one GEMM whose kernel
    ``kernel(inp_base, wgt_base, acc_base)`` builds for the halves the pipeline assigns."""

    loads: tuple[Load, ...]
    kernel: Callable[[int, int, int], MicroKernel]


@dataclass(frozen=True)
class AluPass:
    """One ALU instruction of a tile's epilogue: ``kernel(acc_base)``, ``op``, and an immediate
    (``None``: the kernel's source rows are the operand)."""

    kernel: Callable[[int], MicroKernel]
    op: AluOp
    imm: int | None = None


@dataclass(frozen=True)
class Tile:
    """One output tile occupying ``acc_rows`` accumulator rows of its half."""

    acc_rows: int
    reset: Callable[[int], MicroKernel]  # acc_base -> kernel zeroing the result rows
    stages: tuple[Stage, ...]
    epilogue_loads: tuple[Load, ...]  # ACC / ACC_8BIT rows the ALU passes read
    alu: tuple[AluPass, ...]
    stores: tuple[Store, ...]


def thread_caps(cfg, threads: int) -> tuple[int, int, int]:
    """Input, weight and accumulator elements available to one virtual thread."""
    if threads not in (1, 2):
        raise ProgramError(f"threads must be 1 or 2, not {threads!r}")
    if threads == 2 and cfg.dep_queue_depth < 2:
        raise ProgramError("double buffering needs dep_queue_depth >= 2")
    return cfg.inp_depth // threads, cfg.wgt_depth // threads, cfg.acc_depth // threads


def _plan_loads(tiles: list[Tile], threads: int, caps: dict[MemType, int]
                ) -> list[list[tuple]]:
    """Absolute load arguments of every stage, minus those still resident in its half."""
    resident: list[frozenset] = [frozenset()] * threads
    actual: list[list[tuple]] = []
    u = 0
    for t, tile in enumerate(tiles):
        for s, stage in enumerate(tile.stages):
            half = u % threads
            keys = []
            for r in stage.loads:
                if r.mem_type not in caps:
                    raise ProgramError(f"a reduction stage may load INP or WGT, not "
                                       f"{MemType(r.mem_type).name}")
                if r.sram < 0 or r.sram + r.span > caps[r.mem_type]:
                    raise ProgramError(
                        f"tile {t} stage {s}: {MemType(r.mem_type).name} region [{r.sram}, "
                        f"{r.sram + r.span}) exceeds one thread's {caps[r.mem_type]} elements")
                keys.append((r.mem_type, half * caps[r.mem_type] + r.sram, r.dram, r.y, r.x,
                             r.stride, r.pads))
            actual.append([k for k in keys if k not in resident[half]])
            resident[half] = frozenset(keys)
            u += 1
    return actual


def _reset(b: CommandBuilder, tile: Tile, t: int, threads: int, ab: int) -> None:
    """Zero tile ``t``'s result rows, once tile ``t - threads`` has left its half."""
    if t >= threads:
        b.dep_pop(STORE, COMPUTE)
    b.gemm(tile.reset(ab), reset=True)


def emit_tiles(b: CommandBuilder, tiles: list[Tile], double_buffer: bool) -> dict[str, int]:
    """Append ``tiles`` to ``b`` as one well-synchronised pipeline (module docstring).

    Returns counts of what was emitted (``tiles``, ``stages``, ``loads_skipped``).
    """
    threads = 2 if double_buffer else 1
    inp_cap, wgt_cap, acc_cap = thread_caps(b.cfg, threads)
    actual = _plan_loads(tiles, threads, {MemType.INP: inp_cap, MemType.WGT: wgt_cap})
    n = len(actual)
    pops_release = {w for w in range(threads, n) if actual[w]}
    release_after = {w - threads for w in pops_release}
    u = 0
    skipped = sum(len(s.loads) for t in tiles for s in t.stages) - sum(len(a) for a in actual)
    for t, tile in enumerate(tiles):
        if tile.acc_rows > acc_cap:
            raise ProgramError(f"tile {t} needs {tile.acc_rows} accumulator rows; one thread "
                               f"has {acc_cap}")
        ab = (t % threads) * acc_cap
        for s, stage in enumerate(tile.stages):
            half = u % threads
            if actual[u]:
                if u in pops_release:
                    b.dep_pop(COMPUTE, LOAD)  # the GEMM of stage u - threads is done
                for k in actual[u]:
                    b.load_2d(*k)
                b.dep_push(LOAD, COMPUTE)
                b.dep_pop(LOAD, COMPUTE)
            if s == 0:
                _reset(b, tile, t, threads, ab)
            b.gemm(stage.kernel(half * inp_cap, half * wgt_cap, ab))
            if u in release_after:
                b.dep_push(COMPUTE, LOAD)
            u += 1
        if not tile.stages:
            _reset(b, tile, t, threads, ab)
        for r in tile.epilogue_loads:
            if r.sram < 0 or r.sram + r.span > tile.acc_rows:
                raise ProgramError(f"tile {t}: an epilogue load leaves the tile's accumulator "
                                   f"rows")
            b.load_2d(r.mem_type, ab + r.sram, r.dram, r.y, r.x, r.stride, r.pads)
        for p in tile.alu:
            b.alu(p.kernel(ab), p.op, p.imm)
        b.dep_push(COMPUTE, STORE)
        b.dep_pop(COMPUTE, STORE)
        for r in tile.stores:
            if r.sram < 0 or r.sram + r.y * r.x > tile.acc_rows:
                raise ProgramError(f"tile {t}: a store reads outside the tile's accumulator "
                                   f"rows")
            b.store_2d(ab + r.sram, r.dram, r.y, r.x, r.stride)
        if t + threads < len(tiles):
            b.dep_push(STORE, COMPUTE)
    return {"tiles": len(tiles), "stages": n, "loads_skipped": skipped}
