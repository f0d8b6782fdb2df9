"""Reduction-shaped CPU kernels: Reduce, ArgMax/ArgMin, LayerNorm, LogSoftmax.

- Reduce (``fn`` sum, max, min, prod, l1, l2, sum_square, log_sum, log_sum_exp; ``axes``
  (empty: none), ``keepdims``; means are misc's Mean): float32 accumulates in float64 (max/min
  in float32; NaNs are skipped as ``maxnum`` does); int8/int32/int64 accumulate in int64
  (wrapping); max and min also take uint8 and bool. An empty reduction gives sum 0, prod 1,
  max -inf / min +inf (integers: the dtype's lowest / highest value);
- ArgMax, ArgMin (``axis``, ``keepdims``, ``select_last_index``): int64 indices of the first (or
  last) extreme value; float32 / int8 / int32 / int64;
- LayerNorm (``axis``, ``epsilon``): inputs x, scale, bias (scale and bias of the normalised
  shape ``x.shape[axis:]``); mean and variance in float64 (two passes), output float32;
- LogSoftmax (``axis``): ``x - max - log(sum(exp(x - max)))`` along one axis.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir

from tessera.runtime.cpu.builder import (
    DTYPES,
    F32,
    FAST,
    I64,
    KernelBuilder,
    Spec,
    check,
    check_attrs,
    check_dtype,
    check_inputs,
    contiguous_strides,
    float_attr,
    int_attr,
    ints_attr,
    norm_axis,
    size,
)

__all__ = ["GENERATORS", "REDUCE_FNS"]

F64 = ir.DoubleType()
REDUCE_FNS = ("sum", "max", "min", "prod", "l1", "l2", "sum_square", "log_sum", "log_sum_exp")
_NUM = ("float32", "int8", "int32", "int64")


def _axis_view(shape: tuple[int, ...], axis: int) -> tuple[int, int, int]:
    """(outer, length, inner) of ``shape`` around ``axis``."""
    return size(shape[:axis]), shape[axis], size(shape[axis + 1:])


def _reduce(op: str, attrs: dict[str, Any], in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ("fn", "axes", "keepdims"))
    check_inputs(op, in_specs, (1,))
    fn = attrs.get("fn", "sum")
    check(fn in REDUCE_FNS, op, f"fn must be one of {', '.join(REDUCE_FNS)}, not {fn!r}")
    unsigned = ("uint8", "bool") if fn in ("max", "min") else ()
    dt = check_dtype(op, "input", in_specs[0], _NUM + unsigned)
    shape = in_specs[0][0]
    rank = len(shape)
    axes = sorted({norm_axis(op, a, rank, "axes") for a in ints_attr(op, attrs, "axes", None,
                                                                       ())})
    keep = int_attr(op, attrs, "keepdims", 1)
    check(keep in (0, 1), op, f"keepdims must be 0 or 1, not {keep}")
    out = tuple(1 if k in axes else d for k, d in enumerate(shape) if keep or k not in axes)
    flt = dt == "float32"
    check(flt or fn in ("sum", "max", "min", "prod", "l1", "sum_square"), op,
          f"fn {fn!r} needs float32 input, not {dt}")
    kept = [k for k in range(rank) if k not in axes]
    strides = contiguous_strides(shape)
    ty = DTYPES[dt]
    extreme = fn in ("max", "min")
    acc_ty = (F32 if extreme else F64) if flt else (ty if extreme else I64)
    kb = KernelBuilder(f"tsr_reduce_{fn}_{dt}", 1, 1)
    b = kb.b
    x, y = kb.ins[0], kb.outs[0]
    slot = kb.alloca(acc_ty, 1)
    mslot = kb.alloca(F32, 1)
    kept_shape = [shape[k] for k in kept]
    red_shape = [shape[k] for k in axes]
    ostr = contiguous_strides(kept_shape)

    def init() -> ir.Constant:
        if fn == "prod":
            return ir.Constant(acc_ty, 1.0 if flt else 1)
        if extreme:
            if flt:
                return kb.fconst(-np.inf if fn == "max" else np.inf)
            if dt == "bool":
                return ir.Constant(acc_ty, 0 if fn == "max" else 1)
            info = np.iinfo(np.dtype(dt))
            return ir.Constant(acc_ty, int(info.min if fn == "max" else info.max))
        return ir.Constant(acc_ty, 0.0 if flt else 0)

    def element(base: ir.Value, ri: list[ir.Value]) -> ir.Value:
        idx = kb.index([(base, 1)] + [(i, strides[k]) for i, k in zip(ri, axes, strict=True)])
        return kb.load(x, ty, idx)

    def combine(acc: ir.Value, v: ir.Value, m: ir.Value | None) -> ir.Value:
        if extreme:
            if flt:
                f = "llvm.maxnum.f32" if fn == "max" else "llvm.minnum.f32"
                return b.call(kb.intrinsic(f, F32, [F32, F32]), [acc, v])
            if dt in ("uint8", "bool"):
                take = b.icmp_unsigned(">" if fn == "max" else "<", acc, v)
                return b.select(take, acc, v)
            return kb.smax(acc, v) if fn == "max" else kb.smin(acc, v)
        if flt:
            if fn == "log_sum_exp":
                v = b.fpext(kb.exp(b.fsub(v, m)), F64)
            else:
                v = b.fpext(v, F64)
            if fn == "l1":
                v = kb.b.call(kb.intrinsic("llvm.fabs.f64", F64, [F64]), [v])
            elif fn in ("l2", "sum_square"):
                v = b.fmul(v, v)
            return b.fmul(acc, v) if fn == "prod" else b.fadd(acc, v, flags=FAST)
        v = b.sext(v, I64) if ty != I64 else v
        if fn == "l1":
            v = b.select(b.icmp_signed("<", v, kb.i64(0)), b.sub(kb.i64(0), v), v)
        elif fn == "sum_square":
            v = b.mul(v, v)
        return b.mul(acc, v) if fn == "prod" else b.add(acc, v)

    def finish(acc: ir.Value, m: ir.Value | None) -> ir.Value:
        if extreme:
            return acc
        if not flt:
            return acc if ty == I64 else b.trunc(acc, ty)
        if fn == "l2":
            acc = b.call(kb.intrinsic("llvm.sqrt.f64", F64, [F64]), [acc])
        r = b.fptrunc(acc, F32)
        if fn in ("log_sum", "log_sum_exp"):
            r = b.call(kb.intrinsic("logf", F32, [F32]), [r])
        if fn == "log_sum_exp":
            finite = b.fcmp_ordered("one", m, kb.fconst(-np.inf))
            r = b.select(finite, b.fadd(r, m), r)
        return r

    if size(out):
        with kb.nest(kept_shape, name="o") as oi:
            base = kb.index([(i, strides[k]) for i, k in zip(oi, kept, strict=True)])
            m = None
            if fn == "log_sum_exp":
                b.store(kb.fconst(-np.inf), mslot)
                with kb.nest(red_shape, name="r") as ri:
                    v = element(base, ri)
                    b.store(kb.fmax_reduce(b.load(mslot, typ=F32), v), mslot)
                m = b.load(mslot, typ=F32)
                # exp(x - max) with max = -inf would be NaN: shift by 0 then
                m = b.select(b.fcmp_ordered("one", m, kb.fconst(-np.inf)), m, kb.fconst(0.0))
            b.store(init(), slot)
            with kb.nest(red_shape, name="r") as ri:
                b.store(combine(b.load(slot, typ=acc_ty), element(base, ri), m), slot)
            res = finish(b.load(slot, typ=acc_ty), m)
            kb.store(res, y, ty, kb.index(list(zip(oi, ostr, strict=True))))
    return kb.finish(), kb.name, [(out, np.dtype(dt))]


def _argmax(op: str, attrs: dict[str, Any], in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ("axis", "keepdims", "select_last_index"))
    check_inputs(op, in_specs, (1,))
    dt = check_dtype(op, "input", in_specs[0], _NUM)
    shape = in_specs[0][0]
    check(len(shape) >= 1, op, "input must have rank >= 1")
    axis = norm_axis(op, int_attr(op, attrs, "axis", 0), len(shape))
    keep = int_attr(op, attrs, "keepdims", 1)
    last = int_attr(op, attrs, "select_last_index", 0)
    check(keep in (0, 1) and last in (0, 1), op, "keepdims and select_last_index must be 0 or 1")
    outer, length, inner = _axis_view(shape, axis)
    check(length > 0, op, f"axis {axis} of {shape} is empty")
    out = tuple(d for k, d in enumerate(shape) if k != axis)
    if keep:
        out = shape[:axis] + (1,) + shape[axis + 1:]
    ty = DTYPES[dt]
    flt = dt == "float32"
    kb = KernelBuilder(f"tsr_{op.lower()}_{dt}", 1, 1)
    b, x = kb.b, kb.ins[0]
    best, where = kb.alloca(ty, 1), kb.alloca(I64, 1)
    rel = (">=" if last else ">") if op == "ArgMax" else ("<=" if last else "<")
    if size(out):
        with kb.loop(0, outer, name="o") as o, kb.loop(0, inner, name="i") as i:
            base = kb.index([(o, length * inner), (i, 1)])
            b.store(kb.load(x, ty, base), best)
            b.store(kb.i64(0), where)
            with kb.loop(1, length, name="a") as a:
                v = kb.load(x, ty, kb.index([(base, 1), (a, inner)]))
                cur = b.load(best, typ=ty)
                better = b.fcmp_ordered(rel, v, cur) if flt else b.icmp_signed(rel, v, cur)
                b.store(b.select(better, v, cur), best)
                b.store(b.select(better, a, b.load(where, typ=I64)), where)
            kb.store(b.load(where, typ=I64), kb.outs[0], I64, kb.index([(o, inner), (i, 1)]))
    return kb.finish(), kb.name, [(out, np.dtype("int64"))]


def _layernorm(op: str, attrs: dict[str, Any],
               in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ("axis", "epsilon"))
    check_inputs(op, in_specs, (3,))
    for k, what in enumerate(("x", "scale", "bias")):
        check_dtype(op, what, in_specs[k], ("float32",))
    shape = in_specs[0][0]
    check(len(shape) >= 1, op, "x must have rank >= 1")
    axis = norm_axis(op, int_attr(op, attrs, "axis", -1), len(shape))
    eps = float_attr(op, attrs, "epsilon", 1e-5)
    outer, inner = size(shape[:axis]), size(shape[axis:])
    for k in (1, 2):
        check(size(in_specs[k][0]) == inner, op, f"input {k} must have the {inner} elements of "
                                                 f"the normalised shape {shape[axis:]}, not "
                                                 f"shape {in_specs[k][0]}")
    kb = KernelBuilder("tsr_layernorm", 3, 1)
    b = kb.b
    x, scale, bias = kb.ins
    y = kb.outs[0]
    s1, s2 = kb.alloca(F64, 1), kb.alloca(F64, 1)
    if size(shape) and inner:
        with kb.loop(0, outer, name="r") as r:
            base = kb.index([(r, inner)])
            b.store(ir.Constant(F64, 0.0), s1)
            with kb.loop(0, inner, name="m") as i:
                v = b.fpext(kb.load(x, F32, b.add(base, i, flags=("nsw",))), F64)
                b.store(b.fadd(b.load(s1, typ=F64), v, flags=FAST), s1)
            mean = b.fdiv(b.load(s1, typ=F64), ir.Constant(F64, float(inner)))
            b.store(ir.Constant(F64, 0.0), s2)
            with kb.loop(0, inner, name="v") as i:
                d = b.fsub(b.fpext(kb.load(x, F32, b.add(base, i, flags=("nsw",))), F64), mean)
                b.store(b.fadd(b.load(s2, typ=F64), b.fmul(d, d), flags=FAST), s2)
            var = b.fdiv(b.load(s2, typ=F64), ir.Constant(F64, float(inner)))
            sqrt = kb.intrinsic("llvm.sqrt.f64", F64, [F64])
            inv = b.fptrunc(b.fdiv(ir.Constant(F64, 1.0), b.call(sqrt, [
                b.fadd(var, ir.Constant(F64, eps))])), F32)
            m32 = b.fptrunc(mean, F32)
            with kb.loop(0, inner, name="y") as i:
                idx = b.add(base, i, flags=("nsw",))
                v = b.fmul(b.fsub(kb.load(x, F32, idx), m32), inv)
                v = b.fadd(b.fmul(v, kb.load(scale, F32, i)), kb.load(bias, F32, i))
                kb.store(v, y, F32, idx)
    return kb.finish(), kb.name, [(shape, np.dtype("float32"))]


def _log_softmax(op: str, attrs: dict[str, Any],
                 in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ("axis",))
    check_inputs(op, in_specs, (1,))
    check_dtype(op, "input", in_specs[0], ("float32",))
    shape = in_specs[0][0]
    check(len(shape) >= 1, op, "input must have rank >= 1")
    axis = norm_axis(op, int_attr(op, attrs, "axis", -1), len(shape))
    outer, length, inner = _axis_view(shape, axis)
    kb = KernelBuilder("tsr_logsoftmax", 1, 1)
    b = kb.b
    x, y = kb.ins[0], kb.outs[0]
    mslot, sslot = kb.alloca(F32, 1), kb.alloca(F64, 1)
    logf = kb.intrinsic("logf", F32, [F32])
    if size(shape):
        with kb.loop(0, outer, name="o") as o, kb.loop(0, inner, name="i") as i:
            base = kb.index([(o, length * inner), (i, 1)])
            b.store(kb.fconst(-np.inf), mslot)
            with kb.loop(0, length, name="m") as a:
                v = kb.load(x, F32, kb.index([(base, 1), (a, inner)]))
                b.store(kb.fmax_reduce(b.load(mslot, typ=F32), v), mslot)
            m = b.load(mslot, typ=F32)
            b.store(ir.Constant(F64, 0.0), sslot)
            with kb.loop(0, length, name="s") as a:
                v = kb.load(x, F32, kb.index([(base, 1), (a, inner)]))
                e = b.fpext(kb.exp(b.fsub(v, m)), F64)
                b.store(b.fadd(b.load(sslot, typ=F64), e, flags=FAST), sslot)
            log_sum = b.call(logf, [b.fptrunc(b.load(sslot, typ=F64), F32)])
            with kb.loop(0, length, name="w") as a:
                idx = kb.index([(base, 1), (a, inner)])
                kb.store(b.fsub(b.fsub(kb.load(x, F32, idx), m), log_sum), y, F32, idx)
    return kb.finish(), kb.name, [(shape, np.dtype("float32"))]


GENERATORS = {
    "Reduce": _reduce,
    "ArgMax": _argmax,
    "ArgMin": _argmax,
    "LayerNorm": _layernorm,
    "LogSoftmax": _log_softmax,
}
