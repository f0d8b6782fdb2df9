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

import numpy as np

from tessera.config import Config
from tessera.errors import IsaError, ProgramError
from tessera.isa import MAX_ITER, Uop, uop_array_to_bytes

__all__ = ["MicroKernel", "KernelBuilder", "UopCache", "CacheStats"]


_LOOP_FIELDS = ("iter_out", "iter_in", "dst_factor_out", "dst_factor_in", "src_factor_out",
                "src_factor_in", "wgt_factor_out", "wgt_factor_in")


class MicroKernel:
    """Micro-ops plus the loop nest that runs them (factors are added per iteration).

    ``uops`` is a sequence of :class:`~tessera.isa.Uop` or an integer array of shape ``(n, 3)``
    (dst, src, wgt columns); kernels are built from arrays on the hot paths. ``lo``/``hi``
    select the micro-ops ``[lo, hi)`` that one instruction runs (a part of a resident kernel;
    default all of them).
    """

    __slots__ = ("array", "iter_out", "iter_in", "dst_factor_out", "dst_factor_in",
                 "src_factor_out", "src_factor_in", "wgt_factor_out", "wgt_factor_in", "lo",
                 "hi", "_key", "_uops", "_bounds", "checked")

    def __init__(self, uops, iter_out: int = 1, iter_in: int = 1, dst_factor_out: int = 0,
                 dst_factor_in: int = 0, src_factor_out: int = 0, src_factor_in: int = 0,
                 wgt_factor_out: int = 0, wgt_factor_in: int = 0, lo: int = 0,
                 hi: int | None = None):
        if isinstance(uops, np.ndarray):
            arr = np.ascontiguousarray(uops, dtype=np.int64)
            if arr.ndim != 2 or arr.shape[1] != 3:
                raise ProgramError(f"micro-op array must have shape (n, 3), not {arr.shape}")
        else:
            arr = np.array([(u.dst_idx, u.src_idx, u.wgt_idx) for u in uops],
                           dtype=np.int64).reshape(-1, 3)
        if arr.shape[0] == 0:
            raise ProgramError("a micro-kernel needs at least one micro-op")
        arr.setflags(write=False)
        self.array = arr
        for name, v in zip(_LOOP_FIELDS, (iter_out, iter_in, dst_factor_out, dst_factor_in,
                                          src_factor_out, src_factor_in, wgt_factor_out,
                                          wgt_factor_in)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ProgramError(f"micro-kernel {name} must be an integer, not {v!r}")
            setattr(self, name, int(v))
        for name in ("iter_out", "iter_in"):
            v = getattr(self, name)
            if not 1 <= v <= MAX_ITER:
                raise ProgramError(f"micro-kernel {name} must be in [1, {MAX_ITER}], not {v!r}")
        n = arr.shape[0]
        hi = n if hi is None else hi
        if not 0 <= lo < hi <= n:
            raise ProgramError(f"micro-kernel part [{lo}, {hi}) must be a non-empty range of its "
                               f"{n} micro-ops")
        self.lo, self.hi = int(lo), int(hi)
        self._key: bytes | None = None
        self._uops: tuple[Uop, ...] | None = None
        self._bounds: tuple[tuple[int, int, int], int] | None = None
        # (config, gemm) a builder found every index of this kernel inside the buffers for
        self.checked: tuple[object, bool] | None = None

    @property
    def uops(self) -> tuple[Uop, ...]:
        """The micro-ops as records (built on demand)."""
        if self._uops is None:
            self._uops = tuple(Uop(int(d), int(s), int(w)) for d, s, w in self.array)
        return self._uops

    @property
    def size(self) -> int:
        """Micro-ops the kernel holds in the micro-op buffer."""
        return self.array.shape[0]

    @property
    def steps(self) -> int:
        """Micro-op steps one instruction running this kernel (part) executes."""
        return self.iter_out * self.iter_in * (self.hi - self.lo)

    def part(self, lo: int, hi: int) -> MicroKernel:
        """The same resident kernel running only its micro-ops ``[lo, hi)``."""
        k = MicroKernel.__new__(MicroKernel)
        for name in self.__slots__:
            setattr(k, name, getattr(self, name))
        if not 0 <= lo < hi <= self.size:
            raise ProgramError(f"micro-kernel part [{lo}, {hi}) must be a non-empty range of its "
                               f"{self.size} micro-ops")
        k.lo, k.hi = int(lo), int(hi)
        k._bounds = k.checked = None
        return k

    def bounds(self) -> tuple[tuple[int, int, int], int]:
        """The largest dst, src and wgt index of the micro-ops ``[lo, hi)`` (loop offsets not
        added) and the smallest index of any micro-op; computed once per kernel."""
        if self._bounds is None:
            top = self.array[self.lo:self.hi].max(axis=0)
            self._bounds = ((int(top[0]), int(top[1]), int(top[2])), int(self.array.min()))
        return self._bounds

    @property
    def key(self) -> bytes:
        """The kernel's content (its micro-op indices): kernels with equal keys share words."""
        if self._key is None:
            self._key = self.array.tobytes()
        return self._key

    def words(self, cfg: Config) -> bytes:
        """The encoded micro-ops (little-endian 32-bit words), as loaded into the uop SRAM."""
        try:
            return uop_array_to_bytes(self.array, cfg)
        except IsaError as exc:
            raise ProgramError(f"micro-kernel does not fit the micro-op format: {exc}") from None

    @staticmethod
    def content_key(words: bytes) -> bytes:
        """The cache identity of a kernel: a hash of its micro-op words."""
        return hashlib.blake2b(words, digest_size=16).digest()

    def __repr__(self) -> str:
        loops = ", ".join(f"{n}={getattr(self, n)}" for n in _LOOP_FIELDS if getattr(self, n))
        part = f", part=[{self.lo}, {self.hi})" if (self.lo, self.hi) != (0, self.size) else ""
        return f"MicroKernel({self.size} uops, {loops}{part})"


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
