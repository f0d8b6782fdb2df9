"""Shared machinery of the tiled operators: requantisation and the double-buffered tile pipeline.

An operator (``matmul``, ``conv2d``) describes its work as a list of :class:`Tile` objects: one
output tile held in the accumulator, initialised (reset, or bias loaded as ACC), built up by
reduction :class:`Step` objects (loads of an input and a weight chunk, then one GEMM), then
requantised by ALU instructions and stored. :func:`emit_tiles` turns that list into a
well-synchronised stream.

Virtual threads (double buffering, ``threads=2``). The input and weight buffers are split into
two halves used by alternate reduction steps, and the accumulator/out buffer into two halves
used by alternate output tiles, so two streams interleave: while compute runs the GEMM of step
``u`` from one half, the load module fills the other half for step ``u+1``; while the store
module drains tile ``t`` from one accumulator half, compute works on tile ``t+1`` in the other.
Tokens (SPEC §5) order exactly the conflicting accesses:

- L2C: after the loads of step ``u``; the GEMM of step ``u`` pops it;
- C2L: after the GEMM of step ``u``, if step ``u+threads`` (same half) loads anything; that
  load pops it before overwriting the half;
- C2S: after the requantisation of tile ``t``; its STOREs pop it;
- S2C: after the STOREs of tile ``t``, if tile ``t+threads`` exists; its first compute
  instruction pops it before writing that accumulator half.

Program order is ``L(0), L(1), G(0), L(2), G(1), ...``, so at most ``threads`` tokens are ever
outstanding per queue (``deps.check_tokens`` verifies this on every finished stream). With
``threads=1`` the same rules serialise load, compute and store of each step.

A load whose exact region (DRAM source, shape, SRAM destination) is already resident in its
half is skipped, e.g. conv weights reused across spatial tiles.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tessera.config import Config
from tessera.errors import ProgramError
from tessera.isa import AluOp, MemType, Uop
from tessera.runtime.builder import CommandBuilder, insn_kind
from tessera.runtime.deps import Module
from tessera.runtime.uop_cache import MAX_ITER, MicroKernel

__all__ = [
    "Requant", "SATURATE", "requant_reference", "LoadReq", "StoreReq", "Step", "Tile",
    "LayerStats", "emit_tiles", "emit_epilogue", "count_kinds", "thread_caps", "element_base",
    "wrap_int32", "distinct_ceils",
]

LOAD, COMPUTE, STORE = Module.LOAD, Module.COMPUTE, Module.STORE


def wrap_int32(x: np.ndarray) -> np.ndarray:
    """Two's-complement wrap of an integer array to int32 values (as int64)."""
    x = np.asarray(x, np.int64)
    return ((x + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


@dataclass(frozen=True)
class Requant:
    """Fixed-point requantisation of the int32 accumulator to int8, run on the ALU.

    ``out = clip((acc * mul [+ 2**(shift-1) if round]) >> shift, lo, hi)`` with the exact ALU
    steps of :meth:`alu_ops`: MUL by ``mul`` (low 32 bits: the product wraps mod 2**32), the
    rounding ADD, an arithmetic SHR (floor), MIN ``hi``, MAX ``lo``. Immediates are 16-bit
    signed, so ``mul`` must be in [-32768, 32767]; a rounding constant ``2**(shift-1)`` above
    2**14 (``shift > 15``) is applied as ``SHR (shift-15); ADD 2**14; SHR 15``, which is
    exactly ``floor((x + 2**(shift-1)) / 2**shift)`` (floor division composes). The ADD wraps
    mod 2**32 like the hardware. ``lo``/``hi`` lie in [-128, 127] so the int8 the STORE writes
    (low 8 bits of the accumulator) is the clipped value; ``lo=0`` fuses a ReLU.
    """

    mul: int = 1
    shift: int = 0
    round: bool = False
    lo: int = -128
    hi: int = 127

    def __post_init__(self) -> None:
        if not isinstance(self.mul, int) or not -(1 << 15) <= self.mul < 1 << 15:
            raise ProgramError(f"requant mul must be a 16-bit signed integer, not {self.mul!r}")
        if not isinstance(self.shift, int) or not 0 <= self.shift <= 31:
            raise ProgramError(f"requant shift must be in [0, 31], not {self.shift!r}")
        if not (isinstance(self.lo, int) and isinstance(self.hi, int)
                and -128 <= self.lo <= self.hi <= 127):
            raise ProgramError(f"requant clip range must satisfy -128 <= lo <= hi <= 127, not "
                               f"lo={self.lo!r} hi={self.hi!r}")

    def alu_ops(self) -> list[tuple[AluOp, int]]:
        """The ALU instructions (opcode, immediate) of the requantisation, in order."""
        ops: list[tuple[AluOp, int]] = []
        if self.mul != 1:
            ops.append((AluOp.MUL, self.mul))
        if self.shift:
            if self.round and self.shift > 15:
                ops += [(AluOp.SHR, self.shift - 15), (AluOp.ADD, 1 << 14), (AluOp.SHR, 15)]
            elif self.round:
                ops += [(AluOp.ADD, 1 << (self.shift - 1)), (AluOp.SHR, self.shift)]
            else:
                ops.append((AluOp.SHR, self.shift))
        ops.append((AluOp.MIN, self.hi))
        ops.append((AluOp.MAX, self.lo))
        return ops


SATURATE = Requant()
"""The default requantisation: saturate the accumulator to int8 (MIN 127, MAX -128)."""


def requant_reference(acc: np.ndarray, rq: Requant) -> np.ndarray:
    """numpy model of exactly the ALU pipeline of ``rq`` on int32 accumulators -> int8."""
    x = wrap_int32(acc)
    for op, imm in rq.alu_ops():
        if op == AluOp.MUL:
            x = wrap_int32(x * imm)
        elif op == AluOp.ADD:
            x = wrap_int32(x + imm)
        elif op == AluOp.SHR:
            x = x >> imm
        elif op == AluOp.MIN:
            x = np.minimum(x, imm)
        else:
            x = np.maximum(x, imm)
    return x.astype(np.int8)


@dataclass(frozen=True)
class LoadReq:
    """A LOAD whose SRAM address is relative to the base of its buffer half."""

    mem_type: MemType
    sram: int
    dram: int
    y: int
    x: int
    stride: int
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)

    @property
    def span(self) -> int:
        yp0, yp1, xp0, xp1 = self.pads
        return (yp0 + self.y + yp1) * (xp0 + self.x + xp1)


@dataclass(frozen=True)
class StoreReq:
    """A STORE whose SRAM address is relative to the base of the tile's accumulator half."""

    sram: int
    dram: int
    y: int
    x: int
    stride: int


@dataclass
class Step:
    """One reduction step: loads into the current input/weight half, then one GEMM.

    ``kernel(inp_base, wgt_base, acc_base)`` returns the GEMM's micro-kernel for the halves the
    pipeline assigns.
    """

    loads: tuple[LoadReq, ...]
    kernel: Callable[[int, int, int], MicroKernel]


@dataclass
class Tile:
    """One output tile of ``acc_size`` accumulator elements."""

    acc_size: int
    steps: list[Step]
    stores: tuple[StoreReq, ...]
    init: tuple[LoadReq, ...] = ()  # ACC loads (bias); empty means a reset GEMM


@dataclass
class LayerStats:
    """What emitting one layer produced."""

    name: str
    insns: int = 0
    macs: int = 0  # useful multiply-accumulates of the layer
    hw_macs: int = 0  # MACs the GEMMs execute, including channel/batch padding
    counts: dict[str, int] = field(default_factory=dict)  # instructions per kind
    plan: object = None

    @property
    def macs_per_insn(self) -> float:
        return self.hw_macs / self.insns if self.insns else 0.0


def thread_caps(cfg: Config, threads: int) -> tuple[int, int, int]:
    """Input, weight and accumulator elements available to one virtual thread."""
    if threads not in (1, 2):
        raise ProgramError(f"threads must be 1 or 2, not {threads!r}")
    if threads == 2 and cfg.dep_queue_depth < 2:
        raise ProgramError("double buffering needs dep_queue_depth >= 2")
    return cfg.inp_depth // threads, cfg.wgt_depth // threads, cfg.acc_depth // threads


def element_base(cfg: Config, addr: int, mem_type: MemType, what: str) -> int:
    """DRAM element index of byte address ``addr`` (SPEC §2: element-aligned)."""
    from tessera.isa import elem_bytes

    eb = elem_bytes(cfg, mem_type)
    if not isinstance(addr, int) or addr < 0 or addr % eb:
        raise ProgramError(f"{what} address must be a non-negative multiple of {eb} bytes, "
                           f"not {addr!r}")
    return addr // eb


def distinct_ceils(n: int) -> list[int]:
    """The distinct values of ``ceil(n / d)`` for d = 1..n (balanced tile sizes), descending."""
    return sorted({-(-n // d) for d in range(1, n + 1)}, reverse=True)


def _span_kernels(base: int, n: int, alu: bool) -> list[MicroKernel]:
    """Kernels touching accumulator rows ``[base, base+n)`` once each."""
    out = []
    for off in range(0, n, MAX_ITER):
        cnt = min(MAX_ITER, n - off)
        src = base + off if alu else 0
        out.append(MicroKernel((Uop(base + off, src, 0),), iter_out=1, iter_in=cnt,
                               dst_factor_in=1, src_factor_in=1 if alu else 0))
    return out


def emit_epilogue(b: CommandBuilder, acc_base: int, n: int, rq: Requant) -> None:
    """Requantise accumulator rows ``[acc_base, acc_base+n)`` in place."""
    kernels = _span_kernels(acc_base, n, alu=True)
    for op, imm in rq.alu_ops():
        for k in kernels:
            b.alu(k, op, imm)


def emit_tiles(b: CommandBuilder, tiles: list[Tile], rq: Requant, threads: int) -> None:
    """Emit ``tiles`` as one well-synchronised pipeline (see the module docstring)."""
    inp_cap, wgt_cap, acc_cap = thread_caps(b.cfg, threads)
    caps = {MemType.INP: inp_cap, MemType.WGT: wgt_cap}
    units = [(t, s) for t, tile in enumerate(tiles) for s in range(len(tile.steps))]
    n = len(units)
    # Absolute loads per step, and the ones not already resident in their half.
    resident: list[frozenset] = [frozenset()] * threads
    actual: list[list[tuple]] = []
    for u, (t, s) in enumerate(units):
        half = u % threads
        keys = []
        for r in tiles[t].steps[s].loads:
            if r.mem_type not in caps:
                raise ProgramError(f"a reduction step may load INP or WGT, not {r.mem_type!r}")
            if r.sram + r.span > caps[r.mem_type]:
                raise ProgramError(
                    f"tile {t} step {s}: {r.mem_type.name} region [{r.sram}, "
                    f"{r.sram + r.span}) exceeds one thread's {caps[r.mem_type]} elements")
            keys.append((r.mem_type, half * caps[r.mem_type] + r.sram, r.dram, r.y, r.x,
                         r.stride, r.pads))
        actual.append([k for k in keys if k not in resident[half]])
        resident[half] = frozenset(keys)
    pops_release = {w for w in range(threads, n) if actual[w]}
    release_after = {w - threads for w in pops_release}

    def emit_loads(w: int) -> None:
        if not actual[w]:
            return
        if w in pops_release:
            b.dep_pop(COMPUTE, LOAD)
        for k in actual[w]:
            b.load_2d(*k)
        b.dep_push(LOAD, COMPUTE)

    if threads == 2 and n:
        emit_loads(0)
    u = 0
    for t, tile in enumerate(tiles):
        if tile.acc_size > acc_cap:
            raise ProgramError(f"tile {t} needs {tile.acc_size} accumulator elements; one "
                               f"thread has {acc_cap}")
        ab = (t % threads) * acc_cap
        if t >= threads:
            b.dep_pop(STORE, COMPUTE)
        if tile.init:
            for r in tile.init:
                if r.sram + r.span > tile.acc_size:
                    raise ProgramError(f"tile {t}: an init load leaves the tile's accumulator")
                b.load_2d(r.mem_type, ab + r.sram, r.dram, r.y, r.x, r.stride, r.pads)
        else:
            for k in _span_kernels(ab, tile.acc_size, alu=False):
                b.gemm(k, reset=True)
        for step in tile.steps:
            if threads == 2:
                if u + 1 < n:
                    emit_loads(u + 1)
            else:
                emit_loads(u)
            if actual[u]:
                b.dep_pop(LOAD, COMPUTE)
            half = u % threads
            b.gemm(step.kernel(half * inp_cap, half * wgt_cap, ab))
            if u in release_after:
                b.dep_push(COMPUTE, LOAD)
            u += 1
        emit_epilogue(b, ab, tile.acc_size, rq)
        b.dep_push(COMPUTE, STORE)
        b.dep_pop(COMPUTE, STORE)
        for r in tile.stores:
            if r.sram + r.y * r.x > tile.acc_size:
                raise ProgramError(f"tile {t}: a store reads outside the tile's accumulator")
            b.store_2d(ab + r.sram, r.dram, r.y, r.x, r.stride)
        if t + threads < len(tiles):
            b.dep_push(STORE, COMPUTE)


def count_kinds(insns: list) -> dict[str, int]:
    return dict(Counter(insn_kind(i) for i in insns))
