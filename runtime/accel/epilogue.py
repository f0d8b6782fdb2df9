"""The epilogue of an accelerator layer: int32 accumulators to int8, as a program of ALU steps.

:class:`Epilogue` is the one requantisation type of Tessera. The quantiser builds it, the
accelerator kernels emit its :meth:`Epilogue.alu_steps` as ALU instructions, the CPU ``Requant``
kernel compiles the same steps, and :func:`apply_epilogue` runs them in numpy through the
functional simulator's ALU (:func:`tessera.sim.fsim.alu_apply`, SPEC §4), so every
implementation computes exactly what the hardware computes::

    v = rshift(acc + acc_offset, pre_shift) * mult[c]; v = rshift(v, shift)     # main branch
    u = rshift((residual + res_offset) * res_mult, res_shift); v = v + u        # opt. residual
    v = rshift(v, final_shift) + offset; y = max(min(v, hi), lo)                # int8 result

``rshift`` rounds half up (``(v + 2**(s-1)) >> s``) unless ``rounding`` is False (then it is
the floor ``v >> s``). ``mult`` has one int16 entry per output channel, or one for the whole
tensor. ``residual`` is an int8 tensor sign-extended into the accumulator (an ACC_8BIT load).
The three offsets (zero points of asymmetric int8 tensors) are int32 immediates, each one ADD
step when non-zero; an accelerator layer's quantiser folds them into its bias rows instead (the
ALU immediate is 16 bits), so only CPU epilogues carry them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tessera.errors import ProgramError
from tessera.isa import IMM_MAX, IMM_MIN, AluOp
from tessera.sim.alu_kernel import alu_apply, alu_inplace

__all__ = ["AluStep", "Epilogue", "apply_epilogue", "rounding_shift_steps", "MAX_SHIFT",
           "BRANCHES"]

# The largest shift whose rounding constant 1 << (s - 1) fits the ALU's immediate.
MAX_ROUND_SHIFT = IMM_MAX.bit_length()
# SHR shifts by at most 31 per step (SPEC §4); longer shifts take several steps.
MAX_SHIFT = 62
BRANCHES = ("main", "residual", "combine")


@dataclass(frozen=True)
class AluStep:
    """One ALU instruction of an epilogue. ``opcode`` is an :class:`~tessera.isa.AluOp` name;
    ``operand`` an int immediate or, for a per-channel vector (``mult``), the int array the
    accelerator loads into the accumulator and uses as the ALU's source (``use_imm = 0``)."""

    opcode: str
    operand: int | np.ndarray
    branch: str = "main"  # "main", "residual" (on the sign-extended residual) or "combine"

    def __repr__(self) -> str:
        op = self.operand if isinstance(self.operand, int) else f"vec{list(self.operand.shape)}"
        return f"{self.branch}:{self.opcode} {op}"


def rounding_shift_steps(s: int, rounding: bool = True) -> list[tuple[str, int]]:
    """ALU steps computing ``v / 2**s``, rounded half up (or floored when not ``rounding``).

    The rounding constant must fit the 16-bit signed immediate, so for ``s > 15`` the shift is
    split: ``(v + 2**(s-1)) >> s == ((v >> (s-15)) + 2**14) >> 15`` exactly (floor division
    composes, and the truncated low bits never carry into the rounded result). Each SHR shifts by
    at most 31.
    """
    if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 0 <= s <= MAX_SHIFT:
        raise ProgramError(f"shift must be an integer in [0, {MAX_SHIFT}], not {s!r}")
    s = int(s)
    if s == 0:
        return []
    steps: list[tuple[str, int]] = []
    k = min(s, MAX_ROUND_SHIFT) if rounding else min(s, 31)
    pre = s - k
    while pre > 0:
        steps.append(("SHR", min(pre, 31)))
        pre -= min(pre, 31)
    if rounding:
        steps.append(("ADD", 1 << (k - 1)))
    steps.append(("SHR", k))
    return steps


def _int_in(value: Any, lo: int, hi: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or not lo <= value <= hi:
        raise ProgramError(f"epilogue {what} must be an integer in [{lo}, {hi}], not {value!r}")
    return int(value)


@dataclass(frozen=True, eq=False)
class Epilogue:
    """Requantisation of an int32 accumulator to int8 in accelerator ALU operations (see the
    module docstring). The quantiser picks the parameters so that no step overflows int32 for the
    layer's accumulator bound ``acc_bound``; the hardware wraps if one does."""

    mult: Any = 1
    shift: int = 0
    pre_shift: int = 0
    lo: int = -128
    hi: int = 127
    res_mult: int | None = None
    res_shift: int = 0
    final_shift: int = 0
    acc_bound: int = 0
    notes: dict[str, Any] = field(default_factory=dict)
    rounding: bool = True
    acc_offset: int = 0
    res_offset: int = 0
    offset: int = 0

    def __post_init__(self) -> None:
        try:
            m = np.atleast_1d(np.asarray(self.mult))
        except (TypeError, ValueError):
            raise ProgramError(f"epilogue multipliers must be integers, not {self.mult!r}") \
                from None
        if m.ndim != 1 or m.size == 0 or not np.issubdtype(m.dtype, np.integer):
            raise ProgramError(f"epilogue multipliers must be a non-empty list of integers, not "
                               f"{self.mult!r}")
        m = m.astype(np.int64)
        if m.min() < IMM_MIN or m.max() > IMM_MAX:
            raise ProgramError(f"epilogue multipliers must fit int16, got [{m.min()}, "
                               f"{m.max()}]")
        object.__setattr__(self, "mult", m)
        for name in ("shift", "pre_shift", "res_shift", "final_shift"):
            object.__setattr__(self, name, _int_in(getattr(self, name), 0, MAX_SHIFT, name))
        if self.res_mult is not None:
            object.__setattr__(self, "res_mult",
                               _int_in(self.res_mult, IMM_MIN, IMM_MAX, "res_mult"))
        lo = _int_in(self.lo, -128, 127, "lo")
        hi = _int_in(self.hi, -128, 127, "hi")
        if lo > hi:
            raise ProgramError(f"clip bounds must satisfy -128 <= lo <= hi <= 127, not "
                               f"[{lo}, {hi}]")
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)
        for name in ("acc_offset", "res_offset", "offset"):
            object.__setattr__(self, name, _int_in(getattr(self, name), -(1 << 31),
                                                   (1 << 31) - 1, name))
        if self.res_offset and self.res_mult is None:
            raise ProgramError("epilogue res_offset needs a residual branch (res_mult)")
        if not isinstance(self.rounding, bool):
            raise ProgramError(f"epilogue rounding must be True or False, not "
                               f"{self.rounding!r}")

    @property
    def per_channel(self) -> bool:
        return self.mult.size > 1 and not np.all(self.mult == self.mult[0])

    @property
    def residual(self) -> bool:
        """Whether the epilogue adds a rescaled int8 residual input."""
        return self.res_mult is not None

    def _shift(self, s: int, branch: str = "main") -> list[AluStep]:
        return [AluStep(op, imm, branch) for op, imm in rounding_shift_steps(s, self.rounding)]

    def alu_steps(self) -> list[AluStep]:
        """The ALU program of this epilogue, in order. A per-tensor multiplier is an immediate
        (omitted when it is 1); a per-channel one is a vector operand (broadcast over spatial
        positions)."""
        steps = [AluStep("ADD", self.acc_offset)] if self.acc_offset else []
        steps += self._shift(self.pre_shift)
        if self.per_channel:
            steps.append(AluStep("MUL", self.mult))
        elif int(self.mult[0]) != 1:
            steps.append(AluStep("MUL", int(self.mult[0])))
        steps += self._shift(self.shift)
        if self.res_mult is not None:
            if self.res_offset:
                steps.append(AluStep("ADD", self.res_offset, "residual"))
            steps.append(AluStep("MUL", int(self.res_mult), "residual"))
            steps += self._shift(self.res_shift, "residual")
            steps.append(AluStep("ADD", 0, "combine"))  # main += residual (acc operand)
        steps += self._shift(self.final_shift)
        if self.offset:
            steps.append(AluStep("ADD", self.offset))
        steps += [AluStep("MIN", self.hi), AluStep("MAX", self.lo)]
        return steps

    def __repr__(self) -> str:
        m = int(self.mult[0]) if not self.per_channel else f"vec[{self.mult.size}]"
        r = f" res*{self.res_mult}>>{self.res_shift} >>{self.final_shift}" \
            if self.res_mult is not None else ""
        rnd = "" if self.rounding else " floor"
        offs = "".join(f" {k}={v:+d}" for k, v in (("acc", self.acc_offset),
                                                   ("res", self.res_offset),
                                                   ("out", self.offset)) if v)
        return (f"Epilogue(>>{self.pre_shift} *{m} >>{self.shift}{r} [{self.lo},{self.hi}]"
                f"{rnd}{offs})")


def apply_epilogue(acc: np.ndarray, epi: Epilogue, residual: np.ndarray | None = None,
                   channel_axis: int = 1, overwrite: bool = False) -> np.ndarray:
    """Run ``epi.alu_steps()`` on int32 accumulator values (any integer array whose values fit
    int32) with the functional simulator's ALU; returns int8 (the low 8 bits, as a STORE
    writes them). Steps run as :func:`~tessera.sim.alu_kernel.alu_inplace` on int32 lanes (the
    same arithmetic as :func:`~tessera.sim.alu_kernel.alu_apply`, without int64 copies); a
    branch whose input is wider than int32 takes its first step with ``alu_apply``. The final
    clip (MIN hi, MAX lo) and the int8 store are one pass. ``overwrite``: an int32 ``acc`` is
    the caller's to reuse, and serves as the main branch's lanes (no copy)."""
    v = np.asarray(acc)
    u = None if residual is None else np.asarray(residual)
    if epi.res_mult is not None and u is None:
        raise ProgramError("epilogue expects a residual input but none was given")
    lanes: dict[str, np.ndarray | None] = {"main": None, "residual": None}  # int32 results
    for branch, x in (("main", v), ("residual", u)):
        if x is not None and (x.dtype == np.int32 or x.dtype.kind in "iu"
                              and x.dtype.itemsize < 4):
            own = overwrite and branch == "main" and x.dtype == np.int32
            lanes[branch] = x if own else x.astype(np.int32)  # the steps write into it
    if lanes["main"] is None:
        v = v.astype(np.int64, copy=False)
    if u is not None and lanes["residual"] is None:
        u = u.astype(np.int64, copy=False)
    steps = epi.alu_steps()
    clip = steps[-2:]
    assert [(st.opcode, st.branch) for st in clip] == [("MIN", "main"), ("MAX", "main")], \
        "an epilogue ends with its clip"
    for step in steps[:-2]:
        op = AluOp.ADD if step.branch == "combine" else AluOp[step.opcode]
        branch = "main" if step.branch == "combine" else step.branch
        if step.branch == "combine":
            operand: Any = lanes["residual"] if lanes["residual"] is not None \
                else u.astype(np.int32)
        else:
            operand = step.operand
            if isinstance(operand, np.ndarray):
                shape = [1] * v.ndim
                shape[channel_axis] = operand.size
                operand = operand.reshape(shape).astype(np.int32)
            else:
                operand = int(operand)
        cur = lanes[branch]
        if cur is None:
            lanes[branch] = alu_apply(op, v if branch == "main" else u,
                                      np.asarray(operand, np.int64))
        else:
            alu_inplace(op, cur, operand)
    cur = lanes["main"]
    if cur is None:  # no step ran on int32 lanes yet: MIN on int64 gives them
        cur = alu_apply(AluOp.MIN, v, np.int64(clip[0].operand))
    # MIN hi then MAX lo is clip(lo, hi) (lo <= hi); the clipped values are their own int8
    out = np.empty(cur.shape, np.int8)
    np.clip(cur, int(clip[1].operand), int(clip[0].operand), out=out, casting="unsafe")
    return out
