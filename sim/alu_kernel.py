"""ALU instructions for the functional simulator: the arithmetic, cached plans, the plain loop.

:func:`alu_apply` is the definition of SPEC §4's ALU arithmetic (the compiler's reference and
the epilogues use it). :func:`alu_inplace` computes exactly the same in place on int32 lanes
without an int64 detour (wrapping through uint32 views), for the simulator's hot path; a unit
test checks the two agree on every opcode, including the extreme values.

An ALU instruction applies ``acc[a] = op(acc[a], imm or acc[s])`` step by step. An
:class:`AluPlan` splits the steps into consecutive chunks that can each be applied as one
vectorised update (no step of a chunk writes a row that an earlier step of the chunk wrote, or
that a later one reads), and notes when a chunk is a contiguous run of rows (a slice).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

from tessera.isa import AluOp
from tessera.sim.races import IndexSet

__all__ = ["alu_apply", "alu_int32", "alu_inplace", "alu_ufunc", "AluPlan", "plan_alu",
           "alu_plain"]


def alu_apply(op: AluOp, lhs: np.ndarray, rhs: np.ndarray | np.int64) -> np.ndarray:
    """SPEC §4 ALU on int32 lanes given as int64 arrays; returns int32 (wrapping)."""
    if op == AluOp.MIN:
        res = np.minimum(lhs, rhs)
    elif op == AluOp.MAX:
        res = np.maximum(lhs, rhs)
    elif op == AluOp.ADD:
        res = lhs + rhs
    elif op == AluOp.SHR:
        amount = np.minimum(np.abs(rhs), 31)
        res = np.where(rhs >= 0, lhs >> amount, lhs << amount)
    else:  # MUL: low 32 bits of the signed product (int32*int32 fits in int64)
        res = lhs * rhs
    return res.astype(np.int32)  # modular narrowing: wraps mod 2**32


def alu_inplace(op: AluOp, lhs: np.ndarray, rhs: np.ndarray | int) -> None:
    """``lhs = alu_apply(op, lhs, rhs)`` in place, for an int32 array ``lhs`` (a view into the
    accumulator) and an int32 array or int ``rhs``: int32 lanes throughout, wrapping through
    uint32 views, no int64 detour (except SHR by an array of amounts)."""
    call = alu_ufunc(op, lhs, rhs)
    if call is None:
        lhs[...] = alu_apply(op, lhs.astype(np.int64), rhs.astype(np.int64))
    else:
        call()


def alu_ufunc(op: AluOp, lhs: np.ndarray, rhs: np.ndarray | int) -> Callable[[], None] | None:
    """:func:`alu_inplace` as one ufunc call, a function of no arguments, or None for SHR by
    an array of amounts (which needs the int64 detour)."""
    if op == AluOp.MIN:
        return partial(np.minimum, lhs, rhs, out=lhs)
    if op == AluOp.MAX:
        return partial(np.maximum, lhs, rhs, out=lhs)
    lu = lhs.view(np.uint32)
    if isinstance(rhs, np.ndarray):
        if op == AluOp.SHR:
            return None
        ru = rhs.view(np.uint32)
    else:
        if op == AluOp.SHR:
            if rhs >= 0:
                return partial(np.right_shift, lhs, min(rhs, 31), out=lhs)  # arithmetic
            return partial(np.left_shift, lu, np.uint32(min(-rhs, 31)), out=lu)
        ru = np.uint32(rhs & 0xFFFFFFFF)
    # ADD: uint32 arithmetic wraps mod 2**32; MUL: the low 32 bits of the product of the two's
    # complement patterns
    return partial(np.add if op == AluOp.ADD else np.multiply, lu, ru, out=lu)


def alu_int32(op: AluOp, lhs: np.ndarray, rhs: np.ndarray | int) -> np.ndarray:
    """:func:`alu_apply` for an int32 array ``lhs`` and an int32 array or int ``rhs``."""
    res = np.array(lhs, np.int32)
    alu_inplace(op, res, rhs)
    return res


class AluPlan:
    """Steps of one ALU kernel: ``a``/``s`` (destination / source rows per step, ``s`` None with
    ``use_imm``), ``chunks`` of independent steps as ``(lo, hi, dst_slice_or_None,
    src_slice_or_None, repeated_or_None)``, ``rows`` the destination rows, ``src`` the source
    rows (None with ``use_imm``). ``repeated`` is ``(dst_shape, rows, src_shape)`` for a chunk
    with a destination slice whose source is a few rows repeated (a bias or scale per channel
    block: :func:`_repeated`): the source is gathered once per row and broadcast."""

    def __init__(self, a: np.ndarray, s: np.ndarray | None, fast: bool = True):
        self.a, self.s = a, s
        self.steps = a.size
        self.rows = IndexSet(a, runs_allowed=fast)
        self.src = None if s is None else IndexSet(s, runs_allowed=fast)
        self.chunks = []
        self.checked = False  # set by the simulator once its index ranges passed
        if not fast:
            return
        for lo, hi in _independent_chunks(a, s):
            sl = _as_slice(a[lo:hi])
            # a contiguous source reads through a view: ufuncs buffer overlapping operands, so
            # the chunk still sees the values from before it (as the copy of fancy indexing)
            src = None if s is None else _as_slice(s[lo:hi]) if sl is not None else None
            rep = _repeated(s[lo:hi]) if sl is not None and s is not None and src is None \
                else None
            self.chunks.append((lo, hi, sl, src, rep))

    @property
    def nbytes(self) -> int:
        return self.a.nbytes + (0 if self.s is None else self.s.nbytes) + self.rows.nbytes

    def run(self, acc: np.ndarray, op: AluOp, imm: int | None) -> None:
        """Apply the instruction to ``acc`` (``imm`` None: the source is ``acc[s]``)."""
        for lo, hi, sl, src, rep in self.chunks:
            if rep is not None and imm is None:  # acc[s] is acc[rows] repeated: broadcast
                dst_shape, rows, src_shape = rep
                _alu_repeated(op, acc[sl].reshape(dst_shape), acc, rows, src_shape)
                continue
            rhs = imm if imm is not None else acc[src] if src is not None else acc[self.s[lo:hi]]
            if sl is not None:
                alu_inplace(op, acc[sl], rhs)
            else:
                dst = self.a[lo:hi]
                acc[dst] = alu_int32(op, acc[dst], rhs)

    def bound(self, acc: np.ndarray, op: AluOp, imm: int | None) -> Callable[[], None]:
        """:meth:`run` on ``acc`` as a function of no arguments: one ufunc call on fixed views
        when the kernel is one chunk of contiguous rows (and source rows), else ``run``."""
        if len(self.chunks) == 1:
            _, _, sl, src, rep = self.chunks[0]
            if sl is not None and (imm is not None or src is not None):
                call = alu_ufunc(op, acc[sl], imm if imm is not None else acc[src])
                if call is not None:
                    return call
            elif rep is not None and imm is None:
                dst_shape, rows, src_shape = rep
                return partial(_alu_repeated, op, acc[sl].reshape(dst_shape), acc, rows,
                               src_shape)
        return partial(self.run, acc, op, imm)


def plan_alu(ud: np.ndarray, us: np.ndarray, iter_out: int, iter_in: int,
             factors: tuple[int, int, int, int], use_imm: bool, fast: bool = True) -> AluPlan:
    """The plan of an ALU over micro-ops ``(ud, us)`` with ``factors`` = (dst_out, dst_in,
    src_out, src_in). ``fast=False``: only the step arrays, for :func:`alu_plain`."""
    dfo, dfi, sfo, sfi = factors
    i = np.arange(iter_out, dtype=np.int64)[:, None, None]
    j = np.arange(iter_in, dtype=np.int64)[None, :, None]
    a = (ud + i * dfo + j * dfi).reshape(-1)
    s = None if use_imm else (us + i * sfo + j * sfi).reshape(-1)
    return AluPlan(a, s, fast)


def alu_plain(acc: np.ndarray, op: AluOp, a: np.ndarray, s: np.ndarray | None,
              imm: int) -> None:
    """The SPEC loop nest, one step at a time with :func:`alu_apply`."""
    for k in range(a.size):
        lhs = acc[a[k]].astype(np.int64)
        rhs = np.int64(imm) if s is None else acc[s[k]].astype(np.int64)
        acc[a[k]] = alu_apply(op, lhs, rhs)


def _as_slice(d: np.ndarray) -> slice | None:
    """``d`` as a slice when it is ``lo, lo+1, ..., hi-1``, else None."""
    if d[-1] - d[0] == d.size - 1 and (d.size == 1 or bool((np.diff(d) == 1).all())):
        return slice(int(d[0]), int(d[-1]) + 1)
    return None


def _alu_repeated(op: AluOp, dst: np.ndarray, acc: np.ndarray, rows: np.ndarray,
                  src_shape: tuple) -> None:
    alu_inplace(op, dst, acc[rows].reshape(src_shape))


def _repeated(s: np.ndarray) -> tuple | None:
    """Source rows ``s`` (more than one) as a few rows repeated, for a broadcast:
    ``((k, m, ...), rows, (k, 1, ...))`` when ``s`` is each of ``rows`` (k of them) ``m`` times
    in turn, ``((k, p, ...), rows, (1, p, ...))`` when it is ``rows`` (p of them) ``k`` times
    over, else None (``...``: the accumulator element's shape, filled in by ``reshape``)."""
    n = s.size
    if n < 2:
        return None
    starts = np.flatnonzero(np.concatenate(([True], s[1:] != s[:-1])))
    m = n // starts.size
    if starts.size < n and starts.size * m == n and np.array_equal(starts, np.arange(0, n, m)):
        k = starts.size
        return (k, m, *_ELEM), s[::m].astype(np.intp), (k, 1, *_ELEM)
    again = np.flatnonzero(s[1:] == s[0])
    if again.size:
        p = int(again[0]) + 1
        if n % p == 0 and p < n and np.array_equal(s, np.tile(s[:p], n // p)):
            return (n // p, p, *_ELEM), s[:p].astype(np.intp), (1, p, *_ELEM)
    return None


_ELEM = (-1,)  # the element axes of a reshaped accumulator view (batch x block_out, merged)


def _independent_chunks(a: np.ndarray, s: np.ndarray | None):
    """Split ALU steps into consecutive chunks that can be applied in one vectorised update.

    A chunk is valid when no step writes an accumulator row that an earlier step of the same
    chunk wrote or that a later step reads; the sequential result is then the chunk's.
    """
    n = a.size
    if n == 1:
        yield 0, 1
        return
    if s is None:
        if np.unique(a).size == n:
            yield 0, n
            return
    else:
        ua = np.unique(a)
        if ua.size == n and (np.array_equal(s, a) or not np.isin(s, ua).any()):
            yield 0, n
            return
    # General case: greedy chunks, scanning steps in order.
    lo, written = 0, set()
    for k in range(n):
        ak = int(a[k])
        if ak in written or (s is not None and int(s[k]) in written):
            yield lo, k
            lo, written = k, set()
        written.add(ak)
    yield lo, n
