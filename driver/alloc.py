"""Device-memory allocator shared by every device kind: page-aligned first fit over a flat space."""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from tessera.errors import DeviceError

__all__ = ["Buffer", "Allocator"]

PAGE = 4096


@dataclass(frozen=True)
class Buffer:
    """A block of device memory: ``addr`` is its byte address, ``size`` its length in bytes."""

    addr: int
    size: int

    @property
    def end(self) -> int:
        return self.addr + self.size


class Allocator:
    """First-fit allocator of ``[base, base + size)``; every block starts on a page boundary.

    Address 0 is never handed out (a zero address in a program is almost always a bug), so the
    managed range starts at one page.
    """

    def __init__(self, size: int, base: int = PAGE):
        if size <= base:
            raise DeviceError(f"device memory must be larger than {base} bytes, not {size}")
        self.base, self.limit = base, size
        self._starts: list[int] = []  # sorted block starts
        self._sizes: dict[int, int] = {}
        self.generation = 0  # changes whenever the allocation map does (memoised row checks)

    def alloc(self, nbytes: int, align: int = PAGE) -> Buffer:
        if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)) or nbytes <= 0:
            raise DeviceError(f"alloc size must be a positive integer, not {nbytes!r}")
        if isinstance(align, bool) or not isinstance(align, (int, np.integer)) or align <= 0 \
                or align & (align - 1):
            raise DeviceError(f"alloc align must be a positive power of two, not {align!r}")
        align = max(int(align), PAGE)
        nbytes = int(nbytes)
        cursor = self.base
        for start in self._starts + [self.limit]:
            cand = -(-cursor // align) * align
            if cand + nbytes <= start:
                bisect.insort(self._starts, cand)
                self._sizes[cand] = nbytes
                self.generation += 1
                return Buffer(cand, nbytes)
            if start in self._sizes:
                cursor = start + self._sizes[start]
        raise DeviceError(
            f"out of device memory: cannot allocate {nbytes} bytes "
            f"({self.used} of {self.limit - self.base} bytes in use)"
        )

    def free(self, buf: Buffer | int) -> None:
        if not isinstance(buf, (Buffer, int, np.integer)) or isinstance(buf, bool):
            raise DeviceError(f"free needs a Buffer or its address, not {buf!r}")
        addr = buf.addr if isinstance(buf, Buffer) else int(buf)
        if addr not in self._sizes:
            raise DeviceError(f"free of {addr:#x}, which is not the start of an allocated block")
        del self._sizes[addr]
        self._starts.remove(addr)
        self.generation += 1

    @property
    def used(self) -> int:
        return sum(self._sizes.values())

    def blocks(self) -> list[Buffer]:
        return [Buffer(s, self._sizes[s]) for s in self._starts]

    def check(self, addr: int, nbytes: int, what: str) -> None:
        """Raise DeviceError unless ``[addr, addr+nbytes)`` lies inside one allocated block."""
        if nbytes <= 0:
            return
        i = bisect.bisect_right(self._starts, addr) - 1
        if i < 0 or addr + nbytes > self._starts[i] + self._sizes[self._starts[i]]:
            raise DeviceError(
                f"{what}: bytes [{addr:#x}, {addr + nbytes:#x}) are not inside allocated "
                f"device memory"
            )

    def check_rows(self, starts: np.ndarray, length: int, what: str) -> None:
        """Vectorised :meth:`check` of many ``length``-byte rows starting at ``starts``."""
        if length <= 0 or starts.size == 0:
            return
        lo, hi = int(starts.min()), int(starts.max())
        i = bisect.bisect_right(self._starts, lo) - 1
        if i >= 0 and hi + length <= self._starts[i] + self._sizes[self._starts[i]]:
            return  # common case: all rows inside one block
        block_starts = np.asarray(self._starts, dtype=np.int64)
        block_ends = block_starts + np.asarray([self._sizes[s] for s in self._starts], np.int64)
        idx = np.searchsorted(block_starts, starts, side="right") - 1
        ok = (idx >= 0) & (starts + length <= block_ends[np.maximum(idx, 0)])
        if not ok.all():
            bad = int(starts[np.argmin(ok)])
            raise DeviceError(
                f"{what}: bytes [{bad:#x}, {bad + length:#x}) are not inside allocated "
                f"device memory"
            )
