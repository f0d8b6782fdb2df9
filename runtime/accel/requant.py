"""The accelerator's ALU program for a layer's epilogue: the bias add and the
:class:`~tessera.runtime.accel.epilogue.Epilogue` steps, shortened where that is exact.

Every accumulator row of a layer passes through its epilogue once per ALU instruction, so the
length of the program is a cost paid on every output element. :func:`lower_epilogue` starts
from the reference program ``[ADD bias] + epi.alu_steps()`` and rewrites it; each rewrite
computes the same int32 results as the reference for every accumulator value the layer can
produce:

- exact for all int32 values (ring identities mod 2**32): two adjacent ADDs become one;
  ``ADD a; MUL m`` becomes ``MUL m; ADD a*m`` (when an ADD follows the MUL, to merge with it);
  an ADD after the residual combine moves before it; two MULs become one;
- exact when no intermediate overflows, which :func:`lower_epilogue` proves with per-channel
  interval bounds derived from the layer's own accumulator range: ``SHR a; ADD c; SHR b`` (the
  split rounding shift of a shift above 15) becomes ``ADD c*2**a; SHR a+b``, ``SHR a; SHR b``
  becomes ``SHR a+b`` and ``ADD x; SHR s; ADD c`` becomes ``ADD x + c*2**s; SHR s``
  (floor-division identities; the merged constant may exceed the 16-bit immediate, so it
  becomes a vector operand held in accumulator rows).

A ResNet layer's 9 steps (bias, pre-shift rounding, MUL, three-step rounding shift, clip)
become 7: ``ADD b'; SHR p; MUL m; ADD r; SHR s; MIN; MAX``. Operands are immediates when they
fit the 16-bit field and are the same for every channel, else vectors: one accumulator row per
output-channel block, or one row in all (``uniform``) when every channel has the same value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tessera.errors import ProgramError
from tessera.isa import IMM_MAX, IMM_MIN, AluOp
from tessera.runtime.accel.epilogue import Epilogue
from tessera.sim.fsim import alu_apply

__all__ = ["DevStep", "DeviceEpilogue", "lower_epilogue", "acc_bounds"]

I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1
_FULL = (I32_MIN, I32_MAX)


@dataclass(frozen=True)
class DevStep:
    """One ALU instruction of a device epilogue: ``operand`` is an immediate (int), the name of a
    vector of :attr:`DeviceEpilogue.vectors` (str), or None for the residual combine (the
    residual rows are the source)."""

    opcode: AluOp
    operand: int | str | None
    branch: str = "main"  # "main", "residual" or "combine"


@dataclass(frozen=True, eq=False)
class DeviceEpilogue:
    """The ALU program of one layer's epilogue, and the per-channel int32 vectors its vector
    operands read (``uniform``: names whose value is the same for every channel)."""

    steps: tuple[DevStep, ...]
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    uniform: frozenset[str] = frozenset()
    reference_steps: int = 0  # ALU steps of the unoptimised program (bias add included)

    @property
    def residual(self) -> bool:
        return any(s.branch == "combine" for s in self.steps)

    def run(self, acc: np.ndarray, residual: np.ndarray | None = None,
            channel_axis: int = 1) -> np.ndarray:
        """The program on int32 accumulators (bias NOT yet added) with fsim's ALU; int8 out."""
        v = np.asarray(acc, np.int64)
        u = None if residual is None else np.asarray(residual, np.int64)
        if self.residual and u is None:
            raise ProgramError("the device epilogue expects a residual input but none was given")
        shape = [1] * v.ndim
        shape[channel_axis] = -1
        for st in self.steps:
            if st.branch == "combine":
                v = alu_apply(AluOp.ADD, v, u).astype(np.int64)
                continue
            op = (np.asarray(st.operand, np.int64) if isinstance(st.operand, int)
                  else self.vectors[st.operand].reshape(shape))
            if st.branch == "residual":
                u = alu_apply(st.opcode, u, op).astype(np.int64)
            else:
                v = alu_apply(st.opcode, v, op).astype(np.int64)
        return v.astype(np.int8)


def acc_bounds(w: np.ndarray, in_lo: int = -128, in_hi: int = 127) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel range of ``sum(x * w)`` over int8 inputs in ``[in_lo, in_hi]``
    (``w``: int weights, output channel first)."""
    wf = np.asarray(w).reshape(np.shape(w)[0], -1)
    # int8 rows short enough that no sum can leave int32 are summed in int32 (faster, exact)
    small = wf.dtype == np.int8 and wf.shape[1] < 1 << 23
    acc = np.int32 if small else np.int64
    total = wf.sum(axis=1, dtype=acc).astype(np.int64)
    # sums of the positive weights (by slabs of rows: no temporary of the whole matrix) and of
    # the negative ones (no abs(): -128 has no int8 magnitude)
    pos = np.empty(wf.shape[0], np.int64)
    step = max(1, (1 << 18) // max(1, wf.shape[1]))
    for r in range(0, wf.shape[0], step):
        pos[r:r + step] = np.maximum(wf[r:r + step], 0).sum(axis=1, dtype=acc)
    neg = total - pos
    hi = pos * in_hi + neg * in_lo
    lo = pos * in_lo + neg * in_hi
    return lo, hi


def _wrap(v: np.ndarray) -> np.ndarray:
    return ((np.asarray(v, np.int64) - I32_MIN) & 0xFFFFFFFF) + I32_MIN


class _Prog:
    """A program being rewritten: steps as [opcode, operand array | None, branch]."""

    def __init__(self, steps: list[list], channels: int):
        self.steps = steps
        self.c = channels

    def bounds_before(self, k: int, lo0: np.ndarray, hi0: np.ndarray) -> tuple:
        """(lo, hi) arrays of the main branch's value before step ``k`` (full int32 range
        where a wrap is possible)."""
        lo, hi = lo0.copy(), hi0.copy()
        rlo, rhi = np.full(self.c, -128, np.int64), np.full(self.c, 127, np.int64)
        for op, x, br in self.steps[:k]:
            if br == "combine":
                lo, hi = _check(lo + rlo, hi + rhi)
            elif br == "residual":
                rlo, rhi = _interval(op, x, rlo, rhi)
            else:
                lo, hi = _interval(op, x, lo, hi)
        return lo, hi


def _check(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    bad = (lo < I32_MIN) | (hi > I32_MAX)
    return np.where(bad, I32_MIN, lo), np.where(bad, I32_MAX, hi)


def _interval(op: AluOp, x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple:
    if op == AluOp.ADD:
        return _check(lo + x, hi + x)
    if op == AluOp.MUL:
        a, b = lo * x, hi * x
        return _check(np.minimum(a, b), np.maximum(a, b))
    if op == AluOp.SHR:
        if (x < 0).any():  # a left shift: give up on bounds
            return np.full_like(lo, I32_MIN), np.full_like(hi, I32_MAX)
        s = np.minimum(x, 31)
        return lo >> s, hi >> s
    if op == AluOp.MIN:
        return np.minimum(lo, x), np.minimum(hi, x)
    if op == AluOp.MAX:
        return np.maximum(lo, x), np.maximum(hi, x)
    raise AssertionError(op)


def _fits(lo: np.ndarray, hi: np.ndarray, add: np.ndarray) -> bool:
    return bool(((lo + add) >= I32_MIN).all() and ((hi + add) <= I32_MAX).all())


def _const(x: np.ndarray) -> int | None:
    return int(x[0]) if x is not None and (x == x[0]).all() else None


def _rewrite(p: _Prog, lo0: np.ndarray, hi0: np.ndarray) -> bool:
    """Apply the first applicable rewrite on the main branch; True if one was applied."""
    st = p.steps
    main = [k for k, s in enumerate(st) if s[2] != "residual"]  # main + combine, in order
    for i in range(len(main) - 1):
        a, b = main[i], main[i + 1]
        (oa, xa, ba), (ob, xb, bb) = st[a], st[b]
        c = main[i + 2] if i + 2 < len(main) else None
        if ba == bb == "main" and oa == ob == AluOp.ADD:
            st[a] = [AluOp.ADD, _wrap(xa + xb), "main"]
            del st[b]
            return True
        if ba == bb == "main" and oa == ob == AluOp.MUL:
            st[a] = [AluOp.MUL, _wrap(xa * xb), "main"]
            del st[b]
            return True
        if ba == "combine" and bb == "main" and ob == AluOp.ADD:
            st[a], st[b] = st[b], st[a]  # (v + u) + c == (v + c) + u
            return True
        if (ba == bb == "main" and oa == AluOp.ADD and ob == AluOp.MUL and c is not None
                and st[c][2] == "main" and st[c][1] is not None and st[c][0] == AluOp.ADD):
            st[a], st[b] = [AluOp.MUL, xb, "main"], [AluOp.ADD, _wrap(xa * xb), "main"]
            return True
        if ba == bb == "main" and oa == ob == AluOp.SHR and (xa >= 0).all() \
                and (xb >= 0).all() and (xa + xb <= 31).all():
            st[a] = [AluOp.SHR, xa + xb, "main"]
            del st[b]
            return True
        if (c is not None and ba == bb == st[c][2] == "main" and oa == AluOp.SHR
                and ob == AluOp.ADD and st[c][0] == AluOp.SHR and (xa >= 0).all()
                and (st[c][1] >= 0).all() and (xa + st[c][1] <= 31).all()):
            lo, hi = p.bounds_before(a, lo0, hi0)
            add = xb << xa
            slo, shi = lo >> xa, hi >> xa
            if _fits(lo, hi, add) and _fits(slo, shi, xb):
                st[a] = [AluOp.ADD, add, "main"]
                st[b] = [AluOp.SHR, xa + st[c][1], "main"]
                del st[c]
                return True
        if (c is not None and ba == bb == st[c][2] == "main" and oa == AluOp.ADD
                and ob == AluOp.SHR and st[c][0] == AluOp.ADD and (xb >= 0).all()
                and (xb <= 31).all()):
            lo, hi = p.bounds_before(b, lo0, hi0)  # the value after ADD x (maybe wrapped)
            add = st[c][1] << xb
            if _fits(lo, hi, add) and _fits(lo >> xb, hi >> xb, st[c][1]):
                st[a] = [AluOp.ADD, _wrap(xa + add), "main"]
                del st[c]
                return True
    return False


def lower_epilogue(epi: Epilogue, bias: np.ndarray | None, channels: int,
                   acc_lo: np.ndarray | None = None,
                   acc_hi: np.ndarray | None = None) -> DeviceEpilogue:
    """The shortened ALU program of ``bias`` + ``epi`` for ``channels`` output channels.

    ``acc_lo``/``acc_hi`` bound each channel's accumulator (without the bias) over every input
    the layer can see (see :func:`acc_bounds`); without them only the rewrites that are exact
    for every int32 value are made.
    """
    if not isinstance(epi, Epilogue):
        raise ProgramError(f"the epilogue must be an Epilogue, not {epi!r}")
    c = int(channels)
    if epi.per_channel and epi.mult.size != c:
        raise ProgramError(f"the epilogue has {epi.mult.size} multipliers for {c} output "
                           f"channels")

    def vec(v) -> np.ndarray:
        a = np.asarray(v, np.int64).reshape(-1)
        return np.broadcast_to(a, (c,)).copy() if a.size == 1 else a

    steps: list[list] = []
    if bias is not None:
        b = np.asarray(bias).reshape(-1)
        if b.size != c or not np.issubdtype(b.dtype, np.integer):
            raise ProgramError(f"bias must be {c} integers (one per output channel), not "
                               f"{b.size} of {b.dtype}")
        steps.append([AluOp.ADD, _wrap(b), "main"])
    for s in epi.alu_steps():
        x = None if s.branch == "combine" else vec(s.operand)
        steps.append([AluOp[s.opcode], x, s.branch])
    n_ref = len(steps)
    if acc_lo is None or acc_hi is None:
        lo0, hi0 = np.full(c, I32_MIN, np.int64), np.full(c, I32_MAX, np.int64)
    else:
        lo0, hi0 = _check(np.asarray(acc_lo, np.int64).reshape(c),
                          np.asarray(acc_hi, np.int64).reshape(c))
    p = _Prog(steps, c)
    while _rewrite(p, lo0, hi0):
        pass
    out, vectors, uniform = [], {}, set()
    for op, x, br in p.steps:
        if x is None:
            out.append(DevStep(op, None, br))
            continue
        k = _const(x)
        if k is not None and IMM_MIN <= k <= IMM_MAX:
            out.append(DevStep(op, k, br))
            continue
        name = f"v{len(vectors)}"
        vectors[name] = _wrap(x)
        if k is not None:
            uniform.add(name)
        out.append(DevStep(op, name, br))
    return DeviceEpilogue(tuple(out), vectors, frozenset(uniform), n_ref)
