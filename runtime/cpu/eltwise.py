"""Elementwise CPU kernels with numpy broadcasting, and int8 (de)quantisation.

- float32: Add, Sub, Mul, Div, Max, Min (Max/Min take one or more inputs), Relu, Clip, Sigmoid,
  Tanh, Exp. Exp, Sigmoid and Tanh use Cephes-style float32 approximations (a few ulp), written
  in IR so they vectorise;
- integer (int8, int32, int64, uint8): Max, Min (exact); Add, Sub, Mul (wrapping); Div
  truncating toward zero, a division by zero giving 0 (ONNX leaves it undefined; nothing
  traps); Relu, Clip on int8/int32 (exact);
- AddRequant: int8 + int8 -> int8, ``clamp((a*mul_a + b*mul_b + 2**(shift-1)) >> shift)`` in
  int32 (rounds half up), clamped to [-128, 127] or, with ``relu=1``, [0, 127];
- QuantizeLinear: float32 -> int8, ``saturate(round_half_even(x / scale))`` (zero point 0),
  per-tensor or per-channel along ``axis``; DequantizeLinear: int8/int32 -> float32,
  ``x * scale``, per-tensor or per-channel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from llvmlite import ir

from tessera.runtime.cpu.builder import (
    DTYPES,
    F32,
    I8,
    I32,
    KernelBuilder,
    Shape,
    Spec,
    broadcast_shape,
    broadcast_strides,
    check,
    check_attrs,
    check_dtype,
    check_inputs,
    coalesce,
    contiguous_strides,
    fail,
    float_attr,
    int_attr,
    norm_axis,
)

ValueFn = Callable[[list[ir.Value]], ir.Value]
_INTS = ("int8", "int32", "int64", "uint8")


def emit_map(kb: KernelBuilder, in_shapes: Sequence[Shape], in_types: Sequence[ir.Type],
             out_shape: Shape, out_type: ir.Type, fn: ValueFn) -> None:
    """``out[i] = fn(in0[i], in1[i], ...)`` over ``out_shape`` with numpy broadcasting."""
    strides = [broadcast_strides(s, out_shape) for s in in_shapes]
    strides.append(contiguous_strides(out_shape))
    if any(d == 0 for d in out_shape):
        return
    shape, strides = coalesce(out_shape, strides)
    with kb.nest(shape) as idx:
        vals = [kb.load(kb.ins[j], in_types[j], kb.index(list(zip(idx, strides[j], strict=True))))
                for j in range(len(in_shapes))]
        kb.store(fn(vals), kb.outs[0], out_type,
                 kb.index(list(zip(idx, strides[-1], strict=True))))


def _binary(op: str, attrs: dict[str, Any], in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ())
    variadic = op in ("Max", "Min")
    check_inputs(op, in_specs, range(1, 17) if variadic else (2,))
    dt = check_dtype(op, "input 0", in_specs[0], ("float32", *_INTS))
    for k, spec in enumerate(in_specs[1:], 1):
        check(spec[1].name == dt, op, f"input {k} must have dtype {dt}, not {spec[1].name}")
    out_shape = broadcast_shape(op, [s for s, _ in in_specs])
    ty = DTYPES[dt]
    kb = KernelBuilder(f"tsr_{op.lower()}_{dt}", len(in_specs), 1)
    b = kb.b
    flt = dt == "float32"
    unsigned = dt == "uint8"

    def divide(a: ir.Value, d: ir.Value) -> ir.Value:
        if flt:
            return b.fdiv(a, d)
        zero, one = ir.Constant(ty, 0), ir.Constant(ty, 1)
        by_zero = b.icmp_signed("==", d, zero)
        safe = b.select(by_zero, one, d)
        if unsigned:
            return b.select(by_zero, zero, b.udiv(a, safe))
        # INT_MIN / -1 overflows in LLVM: it wraps to INT_MIN (a * -1)
        minus_one = b.icmp_signed("==", safe, ir.Constant(ty, -1))
        q = b.sdiv(a, b.select(minus_one, one, safe))
        return b.select(by_zero, zero, b.select(minus_one, b.sub(zero, a), q))

    def fold(vals: list[ir.Value]) -> ir.Value:
        acc = vals[0]
        for v in vals[1:]:
            if op == "Add":
                acc = b.fadd(acc, v) if flt else b.add(acc, v)
            elif op == "Sub":
                acc = b.fsub(acc, v) if flt else b.sub(acc, v)
            elif op == "Mul":
                acc = b.fmul(acc, v) if flt else b.mul(acc, v)
            elif op == "Div":
                acc = divide(acc, v)
            elif flt:
                acc = kb.fmax(acc, v) if op == "Max" else kb.fmin(acc, v)
            else:
                rel = (">" if op == "Max" else "<")
                take = b.icmp_unsigned(rel, acc, v) if unsigned else b.icmp_signed(rel, acc, v)
                acc = b.select(take, acc, v)
        return acc

    emit_map(kb, [s for s, _ in in_specs], [ty] * len(in_specs), out_shape, ty, fold)
    return kb.finish(), kb.name, [(out_shape, np.dtype(dt))]


def _unary(op: str, attrs: dict[str, Any], in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ("min", "max") if op == "Clip" else ())
    check_inputs(op, in_specs, (1,))
    int_ok = ("int8", "int32") if op in ("Relu", "Clip") else ()
    dt = check_dtype(op, "input", in_specs[0], ("float32", *int_ok))
    shape = in_specs[0][0]
    ty = DTYPES[dt]
    kb = KernelBuilder(f"tsr_{op.lower()}_{dt}", 1, 1)
    flt = dt == "float32"
    if op == "Clip":
        info = np.finfo(np.float32) if flt else np.iinfo(np.dtype(dt))
        lo = float_attr(op, attrs, "min", float(info.min))
        hi = float_attr(op, attrs, "max", float(info.max))
        if not flt:
            check(lo == int(lo) and hi == int(hi), op,
                  f"min and max must be integers for {dt}, not {lo} and {hi}")
            lo, hi = max(int(lo), int(info.min)), min(int(hi), int(info.max))

    def fn(vals: list[ir.Value]) -> ir.Value:
        x = vals[0]
        if op == "Relu":
            return kb.fmax(x, kb.fconst(0.0)) if flt else kb.smax(x, ir.Constant(ty, 0))
        if op == "Clip":
            if flt:
                return kb.fmin(kb.fmax(x, kb.fconst(lo)), kb.fconst(hi))
            return kb.smin(kb.smax(x, ir.Constant(ty, lo)), ir.Constant(ty, hi))
        if op == "Sigmoid":
            return kb.sigmoid(x)
        if op == "Tanh":
            return kb.tanh(x)
        return kb.exp(x)

    emit_map(kb, [shape], [ty], shape, ty, fn)
    return kb.finish(), kb.name, [(shape, np.dtype(dt))]


def requant_multipliers(scale_a: float, scale_b: float, scale_out: float,
                        shift: int = 16) -> tuple[int, int]:
    """Integer multipliers so that ``(a*mul_a + b*mul_b) >> shift ~ (a*sa + b*sb) / so``."""
    return (int(round(scale_a / scale_out * (1 << shift))),
            int(round(scale_b / scale_out * (1 << shift))))


def _add_requant(op: str, attrs: dict[str, Any],
                 in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ("mul_a", "mul_b", "shift", "scale_a", "scale_b", "scale_out",
                            "relu"))
    check_inputs(op, in_specs, (2,))
    for k in range(2):
        check_dtype(op, f"input {k}", in_specs[k], ("int8",))
    shift = int_attr(op, attrs, "shift", 16)
    check(1 <= shift <= 30, op, f"shift must be in [1, 30], not {shift}")
    scales = [k for k in ("scale_a", "scale_b", "scale_out") if k in attrs]
    if scales:
        check(len(scales) == 3 and "mul_a" not in attrs and "mul_b" not in attrs, op,
              "give either scale_a, scale_b and scale_out, or mul_a and mul_b")
        sa, sb, so = (float_attr(op, attrs, k) for k in ("scale_a", "scale_b", "scale_out"))
        check(so > 0 and sa > 0 and sb > 0, op, "scales must be positive")
        mul_a, mul_b = requant_multipliers(sa, sb, so, shift)
    else:
        mul_a, mul_b = int_attr(op, attrs, "mul_a"), int_attr(op, attrs, "mul_b")
    relu = int_attr(op, attrs, "relu", 0)
    check(relu in (0, 1), op, f"relu must be 0 or 1, not {relu}")
    worst = 128 * (abs(mul_a) + abs(mul_b)) + (1 << (shift - 1))
    check(worst < 1 << 31, op, f"multipliers {mul_a}, {mul_b} overflow int32 arithmetic")
    out_shape = broadcast_shape(op, [s for s, _ in in_specs])
    kb = KernelBuilder("tsr_add_requant_int8", 2, 1)
    b = kb.b

    def fn(vals: list[ir.Value]) -> ir.Value:
        a, c = (b.sext(v, I32) for v in vals)
        acc = b.add(b.mul(a, ir.Constant(I32, mul_a)), b.mul(c, ir.Constant(I32, mul_b)))
        acc = b.ashr(b.add(acc, ir.Constant(I32, 1 << (shift - 1))), ir.Constant(I32, shift))
        return kb.saturate_i8(acc, 0 if relu else -128, 127)

    emit_map(kb, [s for s, _ in in_specs], [I8, I8], out_shape, I8, fn)
    return kb.finish(), kb.name, [(out_shape, np.dtype("int8"))]


def _scale_shape(op: str, attrs: dict[str, Any], x_shape: Shape, s_shape: Shape) -> Shape:
    """The shape the scale broadcasts as: () per-tensor, or (C, 1, ..., 1) per-channel."""
    if len(s_shape) == 0 or s_shape == (1,):
        return s_shape
    check(len(s_shape) == 1, op, f"scale must be a scalar or 1-D, not shape {s_shape}")
    axis = norm_axis(op, int_attr(op, attrs, "axis", 1), len(x_shape))
    check(x_shape[axis] == s_shape[0], op,
          f"scale has {s_shape[0]} values but axis {axis} of the input has {x_shape[axis]}")
    return (s_shape[0],) + (1,) * (len(x_shape) - axis - 1)


def _quantize(op: str, attrs: dict[str, Any], in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ("axis",))
    if len(in_specs) == 3:
        raise fail(op, "only zero point 0 is supported; pass x and scale only")
    check_inputs(op, in_specs, (2,))
    check_dtype(op, "scale", in_specs[1], ("float32",))
    quant = op == "QuantizeLinear"
    dt = check_dtype(op, "x", in_specs[0], ("float32",) if quant else ("int8", "int32"))
    shape = in_specs[0][0]
    s_shape = _scale_shape(op, attrs, shape, in_specs[1][0])
    kb = KernelBuilder(f"tsr_{op.lower()}_{dt}", 2, 1)
    b = kb.b

    def fn(vals: list[ir.Value]) -> ir.Value:
        x, s = vals
        if quant:
            q = kb.call1("llvm.roundeven", b.fdiv(x, s))
            q = kb.fmin(kb.fmax(q, kb.fconst(-128.0)), kb.fconst(127.0))
            return b.fptosi(q, I8)
        return b.fmul(b.sitofp(x, F32), s)

    out_dt = "int8" if quant else "float32"
    emit_map(kb, [shape, s_shape], [DTYPES[dt], F32], shape, DTYPES[out_dt], fn)
    return kb.finish(), kb.name, [(shape, np.dtype(out_dt))]


GENERATORS = {
    **{op: _binary for op in ("Add", "Sub", "Mul", "Div", "Max", "Min")},
    **{op: _unary for op in ("Relu", "Clip", "Sigmoid", "Tanh", "Exp")},
    "AddRequant": _add_requant,
    "QuantizeLinear": _quantize,
    "DequantizeLinear": _quantize,
}
