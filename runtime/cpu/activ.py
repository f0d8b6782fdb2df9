"""Unary math and activation CPU kernels (float32; Abs and Sign also on int8/int32/int64).

ONNX semantics (opset 6-24): Abs, Sign, Floor, Ceil, Round (half to even), Log, Reciprocal,
Erf, Sin, Cos, Softplus (``log(exp(x) + 1)``, computed as ``max(x, 0) + log(1 + exp(-|x|))``),
Softsign, HardSigmoid (``alpha``, ``beta``), HardSwish, Swish (``x * sigmoid(alpha * x)``, SiLU
for alpha 1), Mish, Gelu (``approximate`` none or tanh), Elu, Selu, Celu, ThresholdedRelu. Exp and
tanh inside them use the builder's Cephes-style float32 approximations (a few ulp); Log, Erf, Sin
and Cos call the C library's ``logf``, ``erff``, ``sinf`` and ``cosf``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from llvmlite import ir

from tessera.runtime.cpu.builder import (
    DTYPES,
    F32,
    KernelBuilder,
    Spec,
    check,
    check_attrs,
    check_dtype,
    check_inputs,
    fail,
    float_attr,
)
from tessera.runtime.cpu.eltwise import emit_map

__all__ = ["GENERATORS", "UNARY_ATTRS"]

# op -> its float attributes and their ONNX defaults
UNARY_ATTRS: dict[str, dict[str, float]] = {
    "Abs": {}, "Sign": {}, "Floor": {}, "Ceil": {}, "Round": {}, "Log": {}, "Reciprocal": {},
    "Erf": {}, "Sin": {}, "Cos": {}, "Softplus": {}, "Softsign": {},
    "HardSigmoid": {"alpha": 0.2, "beta": 0.5}, "HardSwish": {}, "Swish": {"alpha": 1.0},
    "Mish": {}, "Gelu": {}, "Elu": {"alpha": 1.0},
    "Selu": {"alpha": 1.6732632423543772, "gamma": 1.0507009873554805},
    "Celu": {"alpha": 1.0}, "ThresholdedRelu": {"alpha": 1.0},
}
_INT_OK = ("Abs", "Sign")


class _Math:
    """Float32 building blocks on one builder."""

    def __init__(self, kb: KernelBuilder):
        self.kb, self.b = kb, kb.b

    def c(self, v: float) -> ir.Constant:
        return self.kb.fconst(v)

    def libm(self, name: str, x: ir.Value) -> ir.Value:
        return self.b.call(self.kb.intrinsic(name, F32, [F32]), [x])

    def clamp01(self, v: ir.Value) -> ir.Value:
        return self.kb.fmin(self.kb.fmax(v, self.c(0.0)), self.c(1.0))

    def softplus(self, x: ir.Value) -> ir.Value:
        b, kb = self.b, self.kb
        ax = kb.call1("llvm.fabs", x)
        tail = self.libm("logf", b.fadd(self.c(1.0), kb.exp(b.fneg(ax))))
        return b.fadd(kb.fmax(x, self.c(0.0)), tail)

    def expm1(self, x: ir.Value) -> ir.Value:
        return self.b.fsub(self.kb.exp(x), self.c(1.0))

    def elu(self, x: ir.Value, alpha: float) -> ir.Value:
        b = self.b
        neg = b.fmul(self.c(alpha), self.expm1(self.kb.fmin(x, self.c(0.0))))
        return b.select(b.fcmp_ordered(">", x, self.c(0.0)), x, neg)


def _fn(op: str, m: _Math, attrs: dict[str, float], approximate: str
        ) -> Callable[[ir.Value], ir.Value]:
    kb, b, c = m.kb, m.b, m.c
    al = attrs.get("alpha", 0.0)
    table: dict[str, Callable[[ir.Value], ir.Value]] = {
        "Abs": lambda x: kb.call1("llvm.fabs", x),
        "Sign": lambda x: b.select(b.fcmp_ordered(">", x, c(0.0)), c(1.0), b.select(
            b.fcmp_ordered("<", x, c(0.0)), c(-1.0), b.fmul(x, c(0.0)))),
        "Floor": lambda x: kb.call1("llvm.floor", x),
        "Ceil": lambda x: kb.call1("llvm.ceil", x),
        "Round": lambda x: kb.call1("llvm.roundeven", x),
        "Log": lambda x: m.libm("logf", x),
        "Reciprocal": lambda x: b.fdiv(c(1.0), x),
        "Erf": lambda x: m.libm("erff", x),
        "Sin": lambda x: m.libm("sinf", x),
        "Cos": lambda x: m.libm("cosf", x),
        "Softplus": m.softplus,
        "Softsign": lambda x: b.fdiv(x, b.fadd(c(1.0), kb.call1("llvm.fabs", x))),
        "HardSigmoid": lambda x: m.clamp01(b.fadd(b.fmul(x, c(al)), c(attrs.get("beta", 0)))),
        "HardSwish": lambda x: b.fmul(x, m.clamp01(b.fadd(b.fmul(x, c(1 / 6)), c(0.5)))),
        "Swish": lambda x: b.fmul(x, kb.sigmoid(b.fmul(x, c(al)))),
        "Mish": lambda x: b.fmul(x, kb.tanh(m.softplus(x))),
        "Elu": lambda x: m.elu(x, al),
        "Selu": lambda x: b.fmul(c(attrs.get("gamma", 1.0)), m.elu(x, al)),
        "Celu": lambda x: b.fadd(kb.fmax(x, c(0.0)), kb.fmin(c(0.0), b.fmul(
            c(al), m.expm1(b.fdiv(kb.fmin(x, c(0.0)), c(al)))))),
        "ThresholdedRelu": lambda x: b.select(b.fcmp_ordered(">", x, c(al)), x, c(0.0)),
    }
    if op == "Gelu":
        if approximate == "tanh":
            k = math.sqrt(2 / math.pi)
            return lambda x: b.fmul(b.fmul(c(0.5), x), b.fadd(c(1.0), kb.tanh(b.fmul(
                c(k), b.fadd(x, b.fmul(c(0.044715), b.fmul(x, b.fmul(x, x))))))))
        return lambda x: b.fmul(b.fmul(c(0.5), x), b.fadd(c(1.0), m.libm(
            "erff", b.fmul(x, c(math.sqrt(0.5))))))
    return table[op]


def _int_fn(op: str, kb: KernelBuilder, ty: ir.Type) -> Callable[[ir.Value], ir.Value]:
    b = kb.b
    zero = ir.Constant(ty, 0)
    if op == "Abs":
        return lambda x: b.select(b.icmp_signed("<", x, zero), b.sub(zero, x), x)
    return lambda x: b.select(b.icmp_signed(">", x, zero), ir.Constant(ty, 1), b.select(
        b.icmp_signed("<", x, zero), ir.Constant(ty, -1), zero))


def _unary(op: str, attrs: dict[str, Any], in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    known = tuple(UNARY_ATTRS[op]) + (("approximate",) if op == "Gelu" else ())
    check_attrs(op, attrs, known)
    check_inputs(op, in_specs, (1,))
    ints = ("int8", "int32", "int64") if op in _INT_OK else ()
    dt = check_dtype(op, "input", in_specs[0], ("float32", *ints))
    vals = {k: float_attr(op, attrs, k, d) for k, d in UNARY_ATTRS[op].items()}
    approximate = attrs.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise fail(op, f"approximate must be 'none' or 'tanh', not {approximate!r}")
    if op == "Celu":
        check(vals["alpha"] != 0, op, "alpha must not be 0")
    shape = in_specs[0][0]
    ty = DTYPES[dt]
    kb = KernelBuilder(f"tsr_{op.lower()}_{dt}", 1, 1)
    fn = _fn(op, _Math(kb), vals, approximate) if dt == "float32" else _int_fn(op, kb, ty)
    emit_map(kb, [shape], [ty], shape, ty, lambda v: fn(v[0]))
    return kb.finish(), kb.name, [(shape, np.dtype(dt))]


GENERATORS = {op: _unary for op in UNARY_ATTRS}
