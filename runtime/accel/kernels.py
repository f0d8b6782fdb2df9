"""Micro-kernels of the accelerator operators, built from loop nests with numpy and memoised.

A GEMM over a tile is a perfect loop nest over up to seven dimensions (batch group, output
block, input block, output row, output column, kernel row, kernel column), each of which moves
the accumulator, input and weight indices by a constant factor. The hardware runs two loop
levels per instruction with the micro-ops inside (SPEC §4); :func:`gemm_parts` makes the two
largest dimensions the loops and enumerates the others as micro-ops, so a kernel holds few
micro-ops whatever the tile size (and stays resident in the micro-op buffer), then cuts the
micro-ops into contiguous parts, one GEMM instruction each (integer accumulation is
associative, so any order of the steps gives the same sums).

Kernels are memoised on their exact arguments: repeated tile shapes and buffer halves build
their micro-op arrays once per process.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np

from tessera.isa import MAX_ITER
from tessera.runtime.uop_cache import MicroKernel

__all__ = ["Dim", "gemm_parts", "rows_kernel", "block_kernel"]

Dim = tuple[int, int, int, int]
"""``(extent, dst_factor, src_factor, wgt_factor)`` of one loop dimension."""


def _choose_loops(dims: tuple[Dim, ...], parts: int) -> tuple[int, ...]:
    """Indices of the dimensions run as hardware loops (outer first): the pair (or single
    dimension) leaving the fewest micro-ops, but at least ``parts`` when the nest has that
    many steps."""
    total = 1
    for d in dims:
        total *= d[0]
    need = min(parts, total)
    ok = [i for i, d in enumerate(dims) if 1 < d[0] <= MAX_ITER]
    best, best_uops = (), total
    for cand in [(i,) for i in ok] + list(itertools.combinations(ok, 2)):
        ext = 1
        for i in cand:
            ext *= dims[i][0]
        uops = total // ext
        if need <= uops < best_uops:
            best, best_uops = cand, uops
    return best


@lru_cache(maxsize=4096)
def gemm_parts(dims: tuple[Dim, ...], base: tuple[int, int, int], parts: int = 1
               ) -> tuple[MicroKernel, ...]:
    """The GEMM kernel of the loop nest ``dims`` from indices ``base`` (dst, src, wgt), as at
    most ``parts`` instructions over contiguous ranges of one resident kernel's micro-ops."""
    loops = _choose_loops(dims, parts)
    rest = [d for i, d in enumerate(dims) if i not in loops]
    idx = np.zeros((1, 3), np.int64) + np.asarray(base, np.int64)
    for n, fd, fs, fw in rest:
        if n > 1:
            step = np.arange(n, dtype=np.int64)[:, None] * np.array([fd, fs, fw], np.int64)
            idx = (idx[:, None, :] + step[None, :, :]).reshape(-1, 3)
    lp = [dims[i] for i in loops] + [(1, 0, 0, 0)] * (2 - len(loops))
    (eo, do, so, wo), (ei, di, si, wi) = lp
    k = MicroKernel(idx, eo, ei, do, di, so, si, wo, wi)
    n = idx.shape[0]
    p = max(1, min(parts, n))
    cuts = [round(j * n / p) for j in range(p + 1)]
    return tuple(k.part(cuts[j], cuts[j + 1]) for j in range(p))


@lru_cache(maxsize=4096)
def rows_kernel(dst: int, blocks: int, per: int, src: int | None = None,
                src_block: int = 0, src_row: int = 0) -> MicroKernel:
    """One micro-op over ``blocks`` x ``per`` accumulator rows from ``dst`` (``per``
    consecutive rows per block); the source (ALU) starts at ``src`` and advances by
    ``src_block`` per block and ``src_row`` per row."""
    s = 0 if src is None else src
    return MicroKernel(np.array([[dst, s, 0]], np.int64), blocks, per, per, 1,
                       src_block, src_row)


@lru_cache(maxsize=4096)
def block_kernel(dst: int, groups: int, blocks: int, per: int, src: int) -> MicroKernel:
    """``groups`` micro-ops (one per batch group of ``blocks * per`` rows), each looping over
    ``blocks`` output blocks of ``per`` rows; the source row is ``src`` plus the block index (a
    per-channel constant shared by every group)."""
    uops = np.array([[dst + g * blocks * per, src, 0] for g in range(groups)], np.int64)
    return MicroKernel(uops, blocks, per, per, 1, 1, 0)
