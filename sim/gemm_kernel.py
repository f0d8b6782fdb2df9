"""The vectorised GEMM step loop of the functional simulator.

Each step adds ``inp[x] @ wgt[w].T`` to ``acc[a]``. Integer addition modulo 2**32 is
associative, so a whole non-reset GEMM instruction equals: per step products, summed per
accumulator row, added once. Products are computed in float32 by BLAS, which is exact here:
every partial sum is an integer below ``BLOCK_IN * 2**14 <= 2**20 < 2**24``. Row sums use
float64 (exact below 2**53) and the final addition wraps in int64 -> int32.
"""

from __future__ import annotations

import numpy as np

MIN_GROUP = 8  # below this mean group size a batched product beats per-group BLAS calls


def _products(inp: np.ndarray, wgt: np.ndarray, x: np.ndarray, w: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """Per-step products (n, BATCH*BLOCK_OUT) float32, and the step order they are in."""
    n = x.size
    b, bi = inp.shape[1:]
    bo = wgt.shape[1]
    order = np.argsort(w, kind="stable")
    ws = w[order]
    cuts = np.flatnonzero(ws[1:] != ws[:-1]) + 1
    if (cuts.size + 1) * MIN_GROUP <= n:
        xs = inp[x[order]].astype(np.float32).reshape(n * b, bi)
        bounds = np.concatenate(([0], cuts, [n]))
        wf = wgt[ws[bounds[:-1]]].astype(np.float32)  # (groups, bo, bi)
        y = np.empty((n * b, bo), np.float32)
        for g in range(bounds.size - 1):
            lo, hi = bounds[g] * b, bounds[g + 1] * b
            np.matmul(xs[lo:hi], wf[g].T, out=y[lo:hi])
        return y.reshape(n, b * bo), order
    xf = inp[x].astype(np.float32)  # (n, b, bi)
    wf = wgt[w].astype(np.float32)  # (n, bo, bi)
    y = np.matmul(xf, wf.transpose(0, 2, 1))  # (n, b, bo)
    return y.reshape(n, b * bo), np.arange(n)


def gemm_accumulate(acc: np.ndarray, inp: np.ndarray, wgt: np.ndarray, a: np.ndarray,
                    x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``acc[a_k] += inp[x_k] @ wgt[w_k].T`` for every step k (wrapping); returns rows touched."""
    y, order = _products(inp, wgt, x, w)
    a_sorted = a[order]
    lanes = y.shape[1]
    counts = np.bincount(a_sorted, minlength=acc.shape[0])
    rows = np.flatnonzero(counts)
    if rows.size == a.size:
        sums = np.empty((rows.size, lanes), np.float64)
        lut = np.empty(acc.shape[0], np.int64)
        lut[rows] = np.arange(rows.size)
        sums[lut[a_sorted]] = y
    else:
        lut = np.empty(acc.shape[0], np.int64)
        lut[rows] = np.arange(rows.size)
        flat = (lut[a_sorted][:, None] * lanes + np.arange(lanes)).reshape(-1)
        sums = np.bincount(flat, weights=y.reshape(-1), minlength=rows.size * lanes)
        sums = sums.reshape(rows.size, lanes)
    shape = acc.shape[1:]
    total = acc[rows].reshape(rows.size, lanes).astype(np.int64) + sums.astype(np.int64)
    acc[rows] = total.astype(np.int32).reshape((rows.size,) + shape)
    return rows
