"""The vectorised GEMM step loop of the functional simulator.

Each step adds ``inp[x] @ wgt[w].T`` to ``acc[a]``. Integer addition modulo 2**32 is
associative, so a whole non-reset GEMM instruction equals: per-step products, summed per
accumulator row, added once. Products are computed in float32 by BLAS, which is exact here:
every partial sum of one step is an integer of magnitude at most ``BLOCK_IN * 2**14 <= 2**20``.
Sums across steps use float64 (exact below 2**53) and the final addition wraps int64 -> int32.

Two strategies:

- *folded*: when the accumulator index does not depend on the loop counters (conv- and
  matmul-shaped kernels: the loop nest walks the reduction), micro-ops with the same weight base
  see the same weight sequence, so each such group is one matrix product whose inner dimension
  is ``iter_out * iter_in * BLOCK_IN``;
- *general*: per-step products grouped by weight index, then summed per accumulator row.
"""

from __future__ import annotations

import numpy as np

MIN_GROUP = 8  # below this mean group size a batched product beats per-group BLAS calls


def _add_rows(delta: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """``delta[rows] += values`` where ``rows`` may repeat."""
    if np.unique(rows).size == rows.size:
        delta[rows] += values
    else:
        np.add.at(delta, rows, values)


def gemm_folded(acc: np.ndarray, inp: np.ndarray, wgt: np.ndarray, ud: np.ndarray,
                us: np.ndarray, uw: np.ndarray, src_off: np.ndarray, wgt_off: np.ndarray
                ) -> np.ndarray:
    """GEMM whose accumulator index is ``ud[u]`` for every loop step of micro-op ``u``.

    ``src_off``/``wgt_off`` are the loop offsets ``i*factor_out + j*factor_in`` in loop order.
    Returns the accumulator rows touched.
    """
    b, bi = inp.shape[1:]
    bo = wgt.shape[1]
    k = src_off.size
    lanes = b * bo
    rows = np.unique(ud)
    lut = np.empty(acc.shape[0], np.int64)
    lut[rows] = np.arange(rows.size)
    delta = np.zeros((rows.size, lanes), np.float64)
    order = np.argsort(uw, kind="stable")
    uws = uw[order]
    cuts = np.concatenate(([0], np.flatnonzero(uws[1:] != uws[:-1]) + 1, [uw.size]))
    for g in range(cuts.size - 1):
        sel = order[cuts[g]:cuts[g + 1]]
        m = sel.size
        xs = inp[us[sel][:, None] + src_off[None, :]]  # (m, k, b, bi)
        xs = xs.transpose(0, 2, 1, 3).reshape(m * b, k * bi).astype(np.float32)
        ws = wgt[uws[cuts[g]] + wgt_off]  # (k, bo, bi)
        ws = ws.transpose(1, 0, 2).reshape(bo, k * bi).astype(np.float32)
        y = (xs @ ws.T).reshape(m, lanes)
        _add_rows(delta, lut[ud[sel]], y)
    _commit(acc, rows, delta)
    return rows


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
    lut = np.empty(acc.shape[0], np.int64)
    lut[rows] = np.arange(rows.size)
    if rows.size == a.size:
        delta = np.empty((rows.size, lanes), np.float64)
        delta[lut[a_sorted]] = y
    else:
        flat = (lut[a_sorted][:, None] * lanes + np.arange(lanes)).reshape(-1)
        delta = np.bincount(flat, weights=y.reshape(-1), minlength=rows.size * lanes)
        delta = delta.reshape(rows.size, lanes)
    _commit(acc, rows, delta)
    return rows


def _commit(acc: np.ndarray, rows: np.ndarray, delta: np.ndarray) -> None:
    """``acc[rows] += delta`` with int32 wraparound (delta holds exact integers)."""
    shape = acc.shape[1:]
    total = acc[rows].reshape(rows.size, -1).astype(np.int64) + delta.astype(np.int64)
    acc[rows] = total.astype(np.int32).reshape((rows.size,) + shape)
