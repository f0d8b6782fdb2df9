"""GEMM instructions for the functional simulator: cached plans (fast) and the plain loop nest.

A GEMM adds ``inp[x] @ wgt[w].T`` to ``acc[a]`` for every step of its loop nest (SPEC §4).
Integer addition modulo 2**32 is associative, so an instruction equals: for every accumulator
row, the sum of its steps' products, added once with wraparound. A :class:`GemmPlan` turns the
loop nest of one micro-op kernel (its micro-ops and loop factors; it does not depend on data) into
a few large matrix products:

1. *Virtual micro-ops*: the loop levels whose destination factor is 0 walk a reduction, so each
   virtual micro-op ``v`` (a micro-op, combined with the loop levels that move the destination)
   adds ``sum_k inp[x0_v + soff_k] @ wgt[w0_v + woff_k].T`` to ``acc[a_v]``.
2. *Row groups*: destination rows whose (sorted) weight sequences ``w0`` are equal share one
   weight matrix; groups whose source sequences ``x0`` are equal too (after sorting their rows)
   form a *stack* — one product ``X (R, L) @ W (L, G*BLOCK_OUT)`` with the gathered inputs
   (im2col) ``X`` shared by the ``G`` groups. A convolution tile is one stack.

Products run in float32 BLAS, which is exact here: an int8 x int8 product has magnitude at
most 2**14, so any partial sum of at most ``EXACT_INNER = 1024`` of them is an integer below
2**24, which float32 represents exactly whatever the summation order. Longer reductions are
split into chunks of that length whose results are converted to int32 and added with int32
wraparound — no float64 or int64 detour. Kernels that do not stack well fall back to per-step
products (exact in float32 for ``BLOCK_IN <= 1024``) summed per row in int32.

:func:`gemm_plain` is the plain path: the SPEC loop nest with int64 products, for differential
tests of the plans.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tessera.sim.races import IndexSet

__all__ = ["GemmPlan", "plan_gemm", "gemm_plain", "EXACT_INNER"]

EXACT_INNER = 1 << 10  # products per float32 partial sum: 2**10 * 2**14 = 2**24
MAX_GROUPS = 64  # row groups beyond which planning stacks costs more than it saves
MAX_STACKS = 16
_max = np.maximum.reduce  # the ufunc itself: ndarray.max() adds a Python wrapper per call


@dataclass
class _Stack:
    """``acc[rows[r, g]] += X[r] @ W_g`` with ``X[r] = inp[xidx[r]]`` and ``W_g = wgt[widx[g]]``
    (each index row lists ``L / BLOCK_IN`` buffer rows, concatenated along the reduction).
    ``dst`` is how to add the result: ("rg", (base, pitch)) if ``rows[r, g] == base + r*pitch +
    g`` with ``pitch >= G``, ("gr", (base, pitch)) if ``rows[r, g] == base + g*pitch + r`` with
    ``pitch >= R`` (a strided view of the accumulator either way), else ("idx",
    rows.T.ravel()).
    ``wrange`` is ``(lo, hi)`` when ``widx`` is the contiguous block ``lo .. hi-1`` in order."""

    xidx: np.ndarray  # (R, n) intp
    widx: np.ndarray  # (G, n) intp
    dst: tuple[str, object]
    wkey: IndexSet  # weight rows read (for the cached weight matrix)
    wrange: tuple[int, int] | None


class GemmPlan:
    """How to execute one GEMM kernel; see the module docstring. Depends only on the micro-ops
    and loop fields, so it is cached per kernel.

    ``rows``/``reads_inp``/``reads_wgt``: the accumulator, input and weight rows the instruction
    touches (for range checks, race checks and the out update); ``steps``: loop steps.
    """

    def __init__(self, reset: bool, steps: int, rows: IndexSet, reads_inp: IndexSet | None,
                 reads_wgt: IndexSet | None, stacks: list[_Stack] | None,
                 general: tuple[np.ndarray, ...] | None):
        self.reset = reset
        self.steps = steps
        self.rows = rows
        self.reads_inp = reads_inp
        self.reads_wgt = reads_wgt
        self.stacks = stacks
        self.general = general
        self._wcache: list[tuple[int, np.ndarray] | None] = [None] * len(stacks or ())
        self._bound: tuple | None = None
        self.checked = False  # set by the simulator once its index ranges passed
        self.steps_arrays: tuple[np.ndarray, ...] = ()

    @property
    def nbytes(self) -> int:
        n = self.rows.nbytes + sum(s.nbytes for s in (self.reads_inp, self.reads_wgt) if s)
        for st in self.stacks or ():
            n += st.xidx.nbytes + st.widx.nbytes
            n += st.dst[1].nbytes if st.dst[0] == "idx" else 0
        for arr in self.general or ():
            n += arr.nbytes
        return n  # cached weight matrices come on top: at most 4x the weight buffer each

    def run(self, acc: np.ndarray, inp_f: np.ndarray, wgt_t: np.ndarray,
            wgt_stamp: np.ndarray) -> None:
        """``acc += `` this instruction's products (int32, wrapping). ``inp_f`` is a float32
        mirror of the input buffer, ``wgt_t`` of the weight buffer with every element transposed
        to ``[BLOCK_IN][BLOCK_OUT]``; ``wgt_stamp[i]`` increases whenever weight row ``i`` is
        written (it keys the cached weight matrices)."""
        self.bound(acc, inp_f, wgt_t, wgt_stamp)()

    def bound(self, acc: np.ndarray, inp_f: np.ndarray, wgt_t: np.ndarray,
              wgt_stamp: np.ndarray) -> Callable[[], None]:
        """:meth:`run` on these buffers as a function of no arguments, its views and shapes
        computed once (kept for the last buffers given: a simulator's never change)."""
        got = self._bound
        if (got is None or got[0] is not acc or got[1] is not inp_f or got[2] is not wgt_t
                or got[3] is not wgt_stamp):
            self._wcache[:] = [None] * len(self._wcache)  # matrices of other buffers' weights
            if self.stacks is None:
                args = (acc, inp_f, wgt_t) + self.general
                fn = functools.partial(_run_general, *args)
            else:
                steps = [self._bind_stack(k, st, acc, inp_f, wgt_t, wgt_stamp)
                         for k, st in enumerate(self.stacks)]
                fn = steps[0] if len(steps) == 1 else functools.partial(_run_all, steps)
            got = self._bound = (acc, inp_f, wgt_t, wgt_stamp, fn)
        return got[4]

    def _bind_stack(self, k: int, st: _Stack, acc: np.ndarray, inp_f: np.ndarray,
                    wgt_t: np.ndarray, wgt_stamp: np.ndarray) -> Callable[[], None]:
        """One stack's product and accumulation (see :meth:`run`) as a function."""
        b, bi = inp_f.shape[1:]
        bo = wgt_t.shape[2]
        r, n = st.xidx.shape
        g = st.widx.shape[0]
        length = n * bi
        xidx, take, matmul, add, int32 = st.xidx, inp_f.take, np.matmul, np.add, np.int32
        # the weights: a view of the buffer for one contiguous group, else a matrix cached
        # until one of its rows is written again (their newest stamp changes)
        fixed_w = None
        if g == 1 and st.wrange is not None:
            lo, hi = st.wrange
            fixed_w = wgt_t[lo:hi].reshape(length, bo)
        runs, wkey, wcache = st.wkey.runs, st.wkey, self._wcache
        one_run = wgt_stamp[runs[0][0]:runs[0][1]] if runs is not None and len(runs) == 1 \
            else None  # the common case: the stamps of one run of rows, a view
        weights = functools.partial(self._weights, k, st, wgt_t, length)
        kind, where = st.dst
        view = rows = None
        if kind in ("gr", "rg"):  # rows base + outer*pitch + inner, distinct (pitch >= inner)
            base, pitch = where
            outer, inner, perm = (g, r, (2, 0, 1, 3)) if kind == "gr" else (r, g, (0, 2, 1, 3))
            if base + outer * pitch <= acc.shape[0]:
                view = acc[base:base + outer * pitch].reshape(outer, pitch, b, bo)[:, :inner]
            else:  # the last outer row's pitch runs past the accumulator: index it
                rows = (base + pitch * np.arange(outer)[:, None] + np.arange(inner)).reshape(-1)
        else:
            rows, perm, outer, inner = where, (2, 0, 1, 3), g, r
        shape4, flat = (r, b, g, bo), (outer * inner, b, bo)

        def step() -> None:
            x = take(xidx, axis=0)  # (R, n, B, BI)
            x = x.reshape(r, length) if b == 1 else x.transpose(0, 2, 1, 3).reshape(
                r * b, length)
            if fixed_w is None:  # (L, G*BO): one product
                stamp = _max(one_run) if one_run is not None else wkey.max_of(wgt_stamp)
                cached = wcache[k]
                w = cached[1] if cached is not None and cached[0] == stamp else weights(stamp)
            else:
                w = fixed_w
            if length <= EXACT_INNER:
                y = matmul(x, w)  # float32, exact integers (see above)
            else:
                y = None
                for lo in range(0, length, EXACT_INNER):
                    hi = min(lo + EXACT_INNER, length)
                    part = matmul(x[:, lo:hi], w[lo:hi]).astype(int32)  # exact
                    if y is None:
                        y = part
                    else:
                        y += part  # int32 wraparound, as the accumulator
            yv = y.reshape(shape4).transpose(perm)
            # acc += y in int32 (the exact float32 integers cast first): wraps mod 2**32
            if view is not None:
                add(view, yv, out=view, dtype=int32, casting="unsafe")
            else:
                acc[rows] += yv.reshape(flat).astype(int32)
        return step

    def _weights(self, k: int, st: _Stack, wgt_t: np.ndarray, length: int,
                 stamp: int) -> np.ndarray:
        """The stack's weights as one ``(L, G*BLOCK_OUT)`` matrix (a copy), cached with
        ``stamp``, the newest write stamp of its rows (valid until one is written again)."""
        g = st.widx.shape[0]
        bo = wgt_t.shape[2]
        if st.wrange is not None:
            lo, hi = st.wrange
            w = wgt_t[lo:hi].reshape(g, length, bo)
        else:
            w = wgt_t.take(st.widx, axis=0).reshape(g, length, bo)
        w = np.ascontiguousarray(w.transpose(1, 0, 2)).reshape(length, g * bo)
        self._wcache[k] = (stamp, w)
        return w


def plan_gemm(ud: np.ndarray, us: np.ndarray, uw: np.ndarray, reset: bool, iter_out: int,
              iter_in: int, factors: tuple[int, int, int, int, int, int],
              fast: bool = True, stacked: bool = True) -> GemmPlan:
    """The plan of a GEMM over micro-ops ``(ud, us, uw)`` (int64 arrays, not empty) with loop
    counts ``iter_out``/``iter_in`` (> 0) and ``factors`` = (dst_out, dst_in, src_out, src_in,
    wgt_out, wgt_in). ``fast=False`` plans for the plain path: it keeps the step arrays
    ``steps_arrays = (a, x, w)`` and index sets without runs. ``stacked=False`` skips stacking
    (per-step products only), for tests of the plans."""
    dfo, dfi, sfo, sfi, wfo, wfi = factors
    i = np.arange(iter_out, dtype=np.int64)[:, None, None]
    j = np.arange(iter_in, dtype=np.int64)[None, :, None]
    a = (ud + i * dfo + j * dfi).reshape(-1)
    steps = a.size
    rows = IndexSet(a, runs_allowed=fast)
    if reset:
        return GemmPlan(True, steps, rows, None, None, None, None)
    x = (us + i * sfo + j * sfi).reshape(-1)
    w = (uw + i * wfo + j * wfi).reshape(-1)
    if not fast:
        plan = GemmPlan(False, steps, rows, IndexSet(x, runs_allowed=False),
                        IndexSet(w, runs_allowed=False), None, None)
        plan.steps_arrays = (a, x, w)
        return plan
    stacks = _stacks(*_virtual(ud, us, uw, iter_out, iter_in, factors)) if stacked else None
    if stacks is None:
        return GemmPlan(False, steps, rows, IndexSet(x), IndexSet(w), None, _general(a, x, w))
    # the stacks' index matrices hold every row read, each far fewer times than the steps do
    reads_inp = IndexSet(np.concatenate([st.xidx.reshape(-1) for st in stacks]))
    reads_wgt = (stacks[0].wkey if len(stacks) == 1 else
                 IndexSet(np.concatenate([st.widx.reshape(-1) for st in stacks])))
    return GemmPlan(False, steps, rows, reads_inp, reads_wgt, stacks, None)


def _virtual(ud, us, uw, iter_out, iter_in, factors):
    """Virtual micro-ops (a, x0, w0) and the reduction offsets (soff, woff) they share."""
    dfo, dfi, sfo, sfi, wfo, wfi = factors
    io = np.arange(iter_out, dtype=np.int64)
    ii = np.arange(iter_in, dtype=np.int64)
    if dfo == 0 and dfi == 0:  # both loop levels walk the reduction
        soff = (io[:, None] * sfo + ii[None, :] * sfi).reshape(-1)
        woff = (io[:, None] * wfo + ii[None, :] * wfi).reshape(-1)
        return ud, us, uw, soff, woff
    if dfi == 0:  # the outer level moves the destination, the inner one reduces
        lv, red, (d, s, g), (rs, rw) = io, ii, (dfo, sfo, wfo), (sfi, wfi)
    elif dfo == 0:
        lv, red, (d, s, g), (rs, rw) = ii, io, (dfi, sfi, wfi), (sfo, wfo)
    else:  # every step is its own virtual micro-op
        a = (ud + io[:, None, None] * dfo + ii[None, :, None] * dfi).reshape(-1)
        x = (us + io[:, None, None] * sfo + ii[None, :, None] * sfi).reshape(-1)
        w = (uw + io[:, None, None] * wfo + ii[None, :, None] * wfi).reshape(-1)
        zero = np.zeros(1, np.int64)
        return a, x, w, zero, zero
    a = (ud[None, :] + lv[:, None] * d).reshape(-1)
    x = (us[None, :] + lv[:, None] * s).reshape(-1)
    w = (uw[None, :] + lv[:, None] * g).reshape(-1)
    return a, x, w, red * rs, red * rw


def _stacks(a, x0, w0, soff, woff) -> list[_Stack] | None:
    """Group destination rows into stacks (module docstring), or None when they do not."""
    order = np.lexsort((x0, w0, a))
    a, x0, w0 = a[order], x0[order], w0[order]
    starts = np.flatnonzero(np.concatenate(([True], a[1:] != a[:-1])))  # a is sorted
    counts = np.diff(np.append(starts, a.size))
    rows = a[starts]
    by_key: dict[tuple[int, bytes], list[tuple[np.ndarray, np.ndarray]]] = {}
    xs_of: dict[tuple[int, bytes], np.ndarray] = {}
    ngroups = 0
    for c in np.unique(counts).tolist():
        sel = np.flatnonzero(counts == c)
        pos = starts[sel][:, None] + np.arange(c)
        wseq, xseq, rsel = w0[pos], x0[pos], rows[sel]
        # rows with equal weight sequences, by sorting the sequences (stable: rows stay in order)
        by_w = np.lexsort(wseq.T[::-1])
        ws = wseq[by_w]
        cut = np.flatnonzero((ws[1:] != ws[:-1]).any(axis=1)) + 1
        ngroups += cut.size + 1
        if ngroups > MAX_GROUPS:
            return None
        for members in np.split(by_w, cut):
            xm = xseq[members]
            canon = np.lexsort(xm.T[::-1])
            xm = np.ascontiguousarray(xm[canon])
            key = (c, xm.tobytes())
            by_key.setdefault(key, []).append((wseq[members[0]], rsel[members][canon]))
            xs_of[key] = xm
    if len(by_key) > MAX_STACKS:
        return None
    k = soff.size
    stacks = []
    for key, groups in by_key.items():
        xm = xs_of[key]
        wm = np.stack([g[0] for g in groups])  # (G, c)
        rm = np.stack([g[1] for g in groups], axis=1)  # (R, G)
        xidx = (xm[:, :, None] + soff[None, None, :]).reshape(xm.shape[0], -1)
        widx = (wm[:, :, None] + woff[None, None, :]).reshape(wm.shape[0], -1)
        flat = widx.reshape(-1)
        wrange = None
        if flat[-1] - flat[0] == flat.size - 1 and bool((np.diff(flat) == 1).all()):
            wrange = (int(flat[0]), int(flat[-1]) + 1)
        stacks.append(_Stack(xidx.astype(np.intp), widx.astype(np.intp), _dst(rm),
                             IndexSet(widx), wrange))
        assert xidx.shape[1] == key[0] * k
    return stacks


def _dst(rm: np.ndarray) -> tuple[str, object]:
    r, g = rm.shape
    base = int(rm[0, 0])
    pitch = int(rm[1, 0]) - base if r > 1 else g
    if pitch >= g and np.array_equal(rm, base + np.arange(r)[:, None] * pitch
                                     + np.arange(g)[None, :]):
        return "rg", (base, pitch)
    pitch = int(rm[0, 1]) - base if g > 1 else r
    if pitch >= r and np.array_equal(rm, base + np.arange(g)[None, :] * pitch
                                     + np.arange(r)[:, None]):
        return "gr", (base, pitch)
    return "idx", rm.T.reshape(-1).astype(np.intp)


def _general(a: np.ndarray, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, ...]:
    order = np.argsort(a, kind="stable")
    a_sorted = a[order]
    first = np.concatenate(([0], np.flatnonzero(a_sorted[1:] != a_sorted[:-1]) + 1))
    return (x[order].astype(np.intp), w[order].astype(np.intp), first.astype(np.intp),
            a_sorted[first].astype(np.intp))


def _run_all(steps: list[Callable[[], None]]) -> None:
    for step in steps:
        step()


def _run_general(acc, inp_f, wgt_t, x, w, first, rows) -> None:
    """Per-step products (exact in float32: at most BLOCK_IN * 2**14), summed per row in int32."""
    y = np.matmul(np.take(inp_f, x, axis=0), np.take(wgt_t, w, axis=0))
    sums = np.add.reduceat(y.astype(np.int32), first, axis=0)  # int32: wraps mod 2**32
    acc[rows] += sums


def gemm_plain(acc: np.ndarray, inp: np.ndarray, wgt: np.ndarray, a: np.ndarray,
               x: np.ndarray, w: np.ndarray) -> None:
    """The SPEC loop nest, step by step in int64: ``acc[a_k] += inp[x_k] @ wgt[w_k].T``."""
    prod = np.einsum("nbi,noi->nbo", inp[x].astype(np.int64), wgt[w].astype(np.int64))
    total = acc.astype(np.int64)
    np.add.at(total, a, prod)
    acc[...] = total.astype(np.int32)  # wraps mod 2**32
