"""Comparison, logic, selection and remainder CPU kernels (numpy broadcasting everywhere).

- Equal, Less, Greater, LessOrEqual, GreaterOrEqual: float32 / int8 / int32 / int64 / bool /
  uint8 operands of one dtype -> bool (ordered float comparisons: NaN compares false);
- And, Or, Xor (bool x bool -> bool), Not (bool -> bool);
- Where(cond bool, x, y): any dtype of x and y (one dtype);
- Mod: ``fmod=1`` is C ``fmod`` (sign of the dividend), ``fmod=0`` the sign of the divisor
  (numpy's ``mod``; floats allowed from opset 28); float32, int8/int32/int64, uint8; an integer
  remainder by 0 gives 0 (ONNX leaves it undefined; nothing traps);
- PRelu(x, slope): ``x if x >= 0 else slope * x`` (float32);
- IsNaN, IsInf (``detect_positive``, ``detect_negative``): float32 -> bool.

bool tensors are bytes holding 0 or 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir

from tessera.runtime.cpu.builder import (
    DTYPES,
    F32,
    I8,
    KernelBuilder,
    Spec,
    broadcast_shape,
    check,
    check_attrs,
    check_dtype,
    check_inputs,
    int_attr,
)
from tessera.runtime.cpu.eltwise import emit_map

__all__ = ["GENERATORS"]

_ALL = ("float32", "int8", "int32", "int64", "bool", "uint8")
_INTS = ("int8", "int32", "int64")
_CMP = {"Equal": "==", "Less": "<", "Greater": ">", "LessOrEqual": "<=", "GreaterOrEqual": ">="}


def _same_dtype(op: str, in_specs: list[Spec], allowed: tuple[str, ...]) -> str:
    dt = check_dtype(op, "input 0", in_specs[0], allowed)
    for k, spec in enumerate(in_specs[1:], 1):
        check(spec[1].name == dt, op, f"input {k} must have dtype {dt}, not {spec[1].name}")
    return dt


def _bool(kb: KernelBuilder, flag: ir.Value) -> ir.Value:
    return kb.b.zext(flag, I8)


def _compare(op: str, attrs: dict[str, Any],
             in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ())
    check_inputs(op, in_specs, (2,))
    dt = _same_dtype(op, in_specs, _ALL)
    out = broadcast_shape(op, [s for s, _ in in_specs])
    kb = KernelBuilder(f"tsr_{op.lower()}_{dt}", 2, 1)
    b, rel = kb.b, _CMP[op]
    ty = DTYPES[dt]

    def fn(v: list[ir.Value]) -> ir.Value:
        if dt == "float32":
            return _bool(kb, b.fcmp_ordered(rel, v[0], v[1]))
        if dt in ("bool", "uint8"):
            return _bool(kb, b.icmp_unsigned(rel, v[0], v[1]))
        return _bool(kb, b.icmp_signed(rel, v[0], v[1]))

    emit_map(kb, [s for s, _ in in_specs], [ty, ty], out, I8, fn)
    return kb.finish(), kb.name, [(out, np.dtype(bool))]


def _logic(op: str, attrs: dict[str, Any],
           in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ())
    check_inputs(op, in_specs, (1,) if op == "Not" else (2,))
    _same_dtype(op, in_specs, ("bool",))
    out = broadcast_shape(op, [s for s, _ in in_specs])
    kb = KernelBuilder(f"tsr_{op.lower()}", len(in_specs), 1)
    b, one = kb.b, ir.Constant(I8, 1)
    fns = {"And": lambda v: b.and_(v[0], v[1]), "Or": lambda v: b.or_(v[0], v[1]),
           "Xor": lambda v: b.xor(v[0], v[1]), "Not": lambda v: b.xor(v[0], one)}
    emit_map(kb, [s for s, _ in in_specs], [I8] * len(in_specs), out, I8, fns[op])
    return kb.finish(), kb.name, [(out, np.dtype(bool))]


def _where(op: str, attrs: dict[str, Any], in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ())
    check_inputs(op, in_specs, (3,))
    check_dtype(op, "condition", in_specs[0], ("bool",))
    dt = _same_dtype(op, in_specs[1:], _ALL)
    out = broadcast_shape(op, [s for s, _ in in_specs])
    ty = DTYPES[dt]
    kb = KernelBuilder(f"tsr_where_{dt}", 3, 1)
    b = kb.b

    def fn(v: list[ir.Value]) -> ir.Value:
        return b.select(b.icmp_unsigned("!=", v[0], ir.Constant(I8, 0)), v[1], v[2])

    emit_map(kb, [s for s, _ in in_specs], [I8, ty, ty], out, ty, fn)
    return kb.finish(), kb.name, [(out, np.dtype(dt))]


def _mod(op: str, attrs: dict[str, Any], in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ("fmod",))
    check_inputs(op, in_specs, (2,))
    fmod = int_attr(op, attrs, "fmod", 0)
    check(fmod in (0, 1), op, f"fmod must be 0 or 1, not {fmod}")
    dt = _same_dtype(op, in_specs, ("float32", *_INTS, "uint8"))
    out = broadcast_shape(op, [s for s, _ in in_specs])
    ty = DTYPES[dt]
    kb = KernelBuilder(f"tsr_mod{fmod}_{dt}", 2, 1)
    b = kb.b

    def fn(v: list[ir.Value]) -> ir.Value:
        a, d = v
        if dt == "float32":
            r = b.frem(a, d)
            if fmod:
                return r
            zero_f = kb.fconst(0.0)
            differ = b.and_(b.fcmp_ordered("!=", r, zero_f),
                            b.xor(b.fcmp_ordered("<", r, zero_f), b.fcmp_ordered("<", d, zero_f)))
            return b.select(differ, b.fadd(r, d), r)
        zero = ir.Constant(ty, 0)
        if dt == "uint8":
            return b.select(b.icmp_unsigned("==", d, zero), zero,
                            b.urem(a, b.select(b.icmp_unsigned("==", d, zero),
                                               ir.Constant(ty, 1), d)))
        safe = b.select(b.icmp_signed("==", d, zero), ir.Constant(ty, 1), d)
        # INT_MIN % -1 overflows in LLVM; its remainder is 0
        r = b.select(b.icmp_signed("==", safe, ir.Constant(ty, -1)), zero, b.srem(a, safe))
        r = b.select(b.icmp_signed("==", d, zero), zero, r)
        if fmod:
            return r
        differ = b.and_(b.icmp_signed("!=", r, zero),
                        b.icmp_signed("!=", b.icmp_signed("<", r, zero),
                                      b.icmp_signed("<", d, zero)))
        return b.select(differ, b.add(r, d), r)

    emit_map(kb, [s for s, _ in in_specs], [ty, ty], out, ty, fn)
    return kb.finish(), kb.name, [(out, np.dtype(dt))]


def _prelu(op: str, attrs: dict[str, Any], in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ())
    check_inputs(op, in_specs, (2,))
    _same_dtype(op, in_specs, ("float32",))
    out = broadcast_shape(op, [s for s, _ in in_specs])
    kb = KernelBuilder("tsr_prelu", 2, 1)
    b = kb.b

    def fn(v: list[ir.Value]) -> ir.Value:
        return b.select(b.fcmp_ordered("<", v[0], kb.fconst(0.0)), b.fmul(v[0], v[1]), v[0])

    emit_map(kb, [s for s, _ in in_specs], [F32, F32], out, F32, fn)
    return kb.finish(), kb.name, [(out, np.dtype("float32"))]


def _isnan(op: str, attrs: dict[str, Any], in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ("detect_positive", "detect_negative") if op == "IsInf" else ())
    check_inputs(op, in_specs, (1,))
    check_dtype(op, "input", in_specs[0], ("float32",))
    pos = int_attr(op, attrs, "detect_positive", 1)
    neg = int_attr(op, attrs, "detect_negative", 1)
    shape = in_specs[0][0]
    kb = KernelBuilder(f"tsr_{op.lower()}", 1, 1)
    b = kb.b

    def fn(v: list[ir.Value]) -> ir.Value:
        x = v[0]
        if op == "IsNaN":
            return _bool(kb, b.fcmp_unordered("uno", x, x))
        flag = ir.Constant(ir.IntType(1), 0)
        if pos:
            flag = b.or_(flag, b.fcmp_ordered("==", x, kb.fconst(np.inf)))
        if neg:
            flag = b.or_(flag, b.fcmp_ordered("==", x, kb.fconst(-np.inf)))
        return _bool(kb, flag)

    emit_map(kb, [shape], [F32], shape, I8, fn)
    return kb.finish(), kb.name, [(shape, np.dtype(bool))]


GENERATORS = {
    **{op: _compare for op in _CMP},
    **{op: _logic for op in ("And", "Or", "Xor", "Not")},
    "Where": _where,
    "Mod": _mod,
    "PRelu": _prelu,
    "IsNaN": _isnan,
    "IsInf": _isnan,
}
