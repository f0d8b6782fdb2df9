"""Micro-kernels and the micro-op kernel cache (the role of VTA's UopKernel and UopQueue).

A :class:`MicroKernel` is a list of micro-ops run inside a loop nest of at most two levels; one
GEMM or ALU instruction executes it (SPEC §4):

    for i in range(iter_out):
      for j in range(iter_in):
        for uop in uops:   # dst/src/wgt indices, plus i*factor_out + j*factor_in

:class:`KernelBuilder` builds one with VTA's ``VTAUopLoopBegin/VTAUopPush/VTAUopLoopEnd`` style.

:class:`UopCache` manages the micro-op SRAM: kernels are identified by the content of their
micro-op words (the loop bounds and factors live in the instruction, so kernels that differ only
there share one resident copy). A miss places the kernel first-fit in a free range, evicting the
least recently used kernels until one is large enough. Overwriting an evicted kernel's words is
safe without tokens: UOP loads and the GEMM/ALU instructions that read micro-ops all run in the
compute module, in program order. The cache is invalidated whenever a stream is submitted,
because the micro-op SRAM of a previous run cannot be trusted by a stream built elsewhere.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from tessera.config import Config
from tessera.errors import IsaError, ProgramError
from tessera.isa import MAX_ITER, Uop, uops_to_bytes

__all__ = ["MicroKernel", "KernelBuilder", "UopCache", "CacheStats"]


@dataclass(frozen=True)
class MicroKernel:
    """Micro-ops plus the loop nest that runs them (factors are added per iteration)."""

    uops: tuple[Uop, ...]
    iter_out: int = 1
    iter_in: int = 1
    dst_factor_out: int = 0
    dst_factor_in: int = 0
    src_factor_out: int = 0
    src_factor_in: int = 0
    wgt_factor_out: int = 0
    wgt_factor_in: int = 0

    def __post_init__(self) -> None:
        if not self.uops:
            raise ProgramError("a micro-kernel needs at least one micro-op")
        for name in ("iter_out", "iter_in"):
            v = getattr(self, name)
            if not isinstance(v, int) or not 1 <= v <= MAX_ITER:
                raise ProgramError(f"micro-kernel {name} must be in [1, {MAX_ITER}], not {v!r}")

    @property
    def steps(self) -> int:
        """Micro-op steps one instruction running this kernel executes."""
        return self.iter_out * self.iter_in * len(self.uops)

    def words(self, cfg: Config) -> bytes:
        """The encoded micro-ops (little-endian 32-bit words), as loaded into the uop SRAM."""
        try:
            return uops_to_bytes(list(self.uops), cfg)
        except IsaError as exc:
            raise ProgramError(f"micro-kernel does not fit the micro-op format: {exc}") from None

    @staticmethod
    def content_key(words: bytes) -> bytes:
        """The cache identity of a kernel: a hash of its micro-op words."""
        return hashlib.blake2b(words, digest_size=16).digest()


class KernelBuilder:
    """Builds a :class:`MicroKernel`: open up to two loops, push micro-ops, close the loops.

    The first loop opened is the outer one. Micro-ops are pushed inside the innermost loop; the
    nest must be perfect (no push or loop after a loop has been closed).
    """

    def __init__(self) -> None:
        self._loops: list[tuple[int, int, int, int]] = []
        self._open = 0
        self._closed = False
        self._uops: list[Uop] = []

    def loop_begin(self, extent: int, dst_factor: int = 0, src_factor: int = 0,
                   wgt_factor: int = 0) -> None:
        if self._closed or self._uops:
            raise ProgramError("loop_begin after a micro-op push or loop_end: the loop nest "
                               "must be perfect")
        if len(self._loops) == 2:
            raise ProgramError("a micro-kernel has at most two loop levels")
        self._loops.append((extent, dst_factor, src_factor, wgt_factor))
        self._open += 1

    def push(self, dst: int, src: int = 0, wgt: int = 0) -> None:
        if self._closed:
            raise ProgramError("micro-op push after loop_end: the loop nest must be perfect")
        self._uops.append(Uop(dst, src, wgt))

    def loop_end(self) -> None:
        if self._open == 0:
            raise ProgramError("loop_end without a matching loop_begin")
        self._open -= 1
        self._closed = True

    def build(self) -> MicroKernel:
        if self._open:
            raise ProgramError(f"{self._open} loop(s) still open")
        loops = self._loops + [(1, 0, 0, 0)] * (2 - len(self._loops))
        (eo, do, so, wo), (ei, di, si, wi) = loops
        return MicroKernel(tuple(self._uops), eo, ei, do, di, so, si, wo, wi)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    invalidations: int = 0
    words_loaded: int = 0


class UopCache:
    """LRU cache of micro-kernels in a micro-op SRAM of ``depth`` words."""

    def __init__(self, depth: int):
        if depth <= 0:
            raise ProgramError(f"uop depth must be positive, not {depth}")
        self.depth = depth
        self._entries: OrderedDict[bytes, tuple[int, int]] = OrderedDict()  # key -> (base, n)
        self.stats = CacheStats()

    def __contains__(self, key: bytes) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: bytes, size: int) -> tuple[int, bool]:
        """``(uop_base, hit)`` of a kernel; on a miss the caller must load it at ``uop_base``."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            self.stats.hits += 1
            return entry[0], True
        if size > self.depth:
            raise ProgramError(f"a micro-kernel of {size} micro-ops does not fit the micro-op "
                               f"buffer ({self.depth} entries)")
        base = self._find_hole(size)
        while base is None:
            self._entries.popitem(last=False)
            self.stats.evictions += 1
            base = self._find_hole(size)
        self._entries[key] = (base, size)
        self.stats.misses += 1
        self.stats.words_loaded += size
        return base, False

    def _find_hole(self, size: int) -> int | None:
        cursor = 0
        for base, n in sorted(self._entries.values()):
            if base - cursor >= size:
                return cursor
            cursor = max(cursor, base + n)
        return cursor if self.depth - cursor >= size else None

    def invalidate(self) -> None:
        """Forget every resident kernel (the SRAM contents are no longer trusted)."""
        if self._entries:
            self.stats.invalidations += 1
        self._entries.clear()
