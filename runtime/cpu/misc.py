"""Remaining CPU kernels of the IR: padding, normalisation, casts, reductions, MatMul, unary math.

Semantics follow :mod:`tessera.runtime.accel.epilogue` (numpy) where it and ONNX differ:

- Pad: any rank, ``pads`` = begins of every axis then ends (ONNX order); negative pads crop.
  ``mode`` constant (``value``; an integer in range for integer tensors), reflect (mirror
  without repeating the edge), edge (repeat the edge) or wrap (periodic); any dtype;
- LRN: ONNX LRN across channels of an NCHW float32 tensor, summing squares in channel order;
- BatchNorm: inference batch norm on axis 1, inputs x, scale, bias, mean, var;
- Cast: between float32, int8, int32, int64, uint8 and bool exactly as numpy's ``astype`` on
  x86: float -> int truncates toward zero, giving INT32_MIN (INT64_MIN for int64; then
  truncated) when out of range or NaN; int -> int sign-extends (uint8 and bool zero-extend) or
  wraps; anything -> bool is ``x != 0`` (NaN is true);
- Mean: over ``axes`` (``keepdims``); float32 sums in float64 (an empty mean is NaN);
  integers sum in int64 and divide truncating toward zero (numpy's ``mean().astype(int)``);
- Neg (float32, int8/int32/int64 wrapping), Sqrt, LeakyRelu (``alpha``) on float32; Pow
  (broadcasting): float32 with libm ``powf``, int32/int64 exactly by square-and-multiply
  (wrapping; a negative exponent gives 0 unless the base is 1 or -1); Identity copies any
  supported dtype;
- MatMul: numpy ``matmul`` (batched, broadcast batch axes, 1-D operands promoted); float32, or
  int8/int32 wrapping in the operand dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from llvmlite import ir

from tessera.runtime.cpu.builder import (
    DTYPES,
    F32,
    FAST,
    I8,
    I32,
    I64,
    KernelBuilder,
    Shape,
    Spec,
    broadcast_shape,
    broadcast_strides,
    check,
    check_attrs,
    check_dtype,
    check_inputs,
    contiguous_strides,
    fail,
    float_attr,
    int_attr,
    ints_attr,
    itemsize,
    norm_axis,
    size,
)
from tessera.runtime.cpu.data import emit_copy
from tessera.runtime.cpu.eltwise import emit_map

__all__ = ["GENERATORS"]

_ANY = ("float32", "int8", "int32", "int64", "bool", "uint8")
_CAST = _ANY
_NUMERIC = ("float32", "int8", "int32")  # Mean and MatMul
F64 = ir.DoubleType()
_PAD_MODES = ("constant", "reflect", "edge", "wrap")


def _pad_index(mode: str, i: int, n: int) -> int:
    """The input index output coordinate ``i`` (relative to the input start) reads."""
    if mode == "edge":
        return min(max(i, 0), n - 1)
    if mode == "wrap":
        return i % n
    period = 2 * (n - 1)  # reflect
    if period == 0:
        return 0
    i = abs(i) % period
    return i if i < n else period - i


def _pad_modes(op: str, mode: str, dt: str, shape: tuple[int, ...], pads: tuple[int, ...],
               out: tuple[int, ...]) -> tuple[str, str, list[Spec]]:
    rank = len(shape)
    for k, d in enumerate(shape):
        grows = pads[k] > 0 or pads[k + rank] > 0
        check(d > 0 or not grows, op, f"{mode} padding of an empty axis {k} is undefined")
    ty = DTYPES[dt]
    kb = KernelBuilder(f"tsr_pad_{mode}_{dt}", 1, 1)
    istr, ostr = contiguous_strides(shape), contiguous_strides(out)
    tabs = [kb.table([_pad_index(mode, o - pads[k], shape[k]) for o in range(out[k])])
            for k in range(rank)]
    if size(out):
        with kb.nest(list(out), name="o") as oi:
            src = kb.index([(kb.load(tabs[k], I64, oi[k]), istr[k]) for k in range(rank)])
            kb.store(kb.load(kb.ins[0], ty, src), kb.outs[0], ty,
                     kb.index(list(zip(oi, ostr, strict=True))))
    return kb.finish(), kb.name, [(out, np.dtype(dt))]


def _pad(op: str, attrs: dict[str, Any], in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ("pads", "value", "mode"))
    check_inputs(op, in_specs, (1,))
    dt = check_dtype(op, "input", in_specs[0], _ANY)
    shape = in_specs[0][0]
    rank = len(shape)
    pads = ints_attr(op, attrs, "pads", 2 * rank)
    mode = attrs.get("mode", "constant")
    check(mode in _PAD_MODES, op, f"mode must be one of {', '.join(_PAD_MODES)}, not {mode!r}")
    value = float_attr(op, attrs, "value", 0.0)
    if mode != "constant":
        out = tuple(d + pads[k] + pads[k + rank] for k, d in enumerate(shape))
        check(all(d >= 0 for d in out), op, f"pads {pads} make a negative dimension of {shape}")
        return _pad_modes(op, mode, dt, shape, pads, out)
    if dt == "bool":
        check(value in (0.0, 1.0), op, f"value must be 0 or 1 for bool, not {value}")
    elif dt != "float32":
        info = np.iinfo(np.dtype(dt))
        check(value == int(value) and info.min <= value <= info.max, op,
              f"value must be an integer in [{info.min}, {info.max}] for {dt}, not {value}")
    out = tuple(d + pads[k] + pads[k + rank] for k, d in enumerate(shape))
    check(all(d >= 0 for d in out), op, f"pads {pads} make a negative dimension of {shape}")
    ty = DTYPES[dt]
    kb = KernelBuilder(f"tsr_pad_{dt}", 1, 1)
    y = kb.outs[0]
    if size(out):
        fill = kb.const(ty, value)
        with kb.loop(0, size(out), name="f") as i:
            kb.store(fill, y, ty, i)
    # the part of the input that lands inside the output
    first = [max(0, -pads[k]) for k in range(rank)]
    stop = [min(d, d + pads[k + rank]) for k, d in enumerate(shape)]
    inner = tuple(max(0, e - s) for s, e in zip(first, stop, strict=True))
    istr, ostr = contiguous_strides(shape), contiguous_strides(out)
    if size(inner):
        emit_copy(kb, ty, inner, kb.ins[0], istr, sum(f * s for f, s in zip(first, istr)),
                  y, ostr, sum((f + pads[k]) * s for k, (f, s) in enumerate(zip(first, ostr))))
    return kb.finish(), kb.name, [(out, np.dtype(dt))]


def _lrn(op: str, attrs: dict[str, Any], in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ("size", "alpha", "beta", "bias"))
    check_inputs(op, in_specs, (1,))
    check_dtype(op, "input", in_specs[0], ("float32",))
    shape = in_specs[0][0]
    check(len(shape) == 4, op, f"input must be 4-D NCHW, not shape {shape}")
    n, c, h, w = shape
    win = int_attr(op, attrs, "size")
    check(win >= 1, op, f"size must be >= 1, not {win}")
    alpha = float_attr(op, attrs, "alpha", 1e-4) / win
    beta, bias = float_attr(op, attrs, "beta", 0.75), float_attr(op, attrs, "bias", 1.0)
    hw = h * w
    kb = KernelBuilder("tsr_lrn", 1, 1)
    b = kb.b
    x, y = kb.ins[0], kb.outs[0]
    slot = kb.alloca(F32, 1)
    powf = kb.intrinsic("llvm.pow.f32", F32, [F32, F32])
    lo_tab = kb.table([max(0, k - (win - 1) // 2) for k in range(c)])
    hi_tab = kb.table([min(c, k + win // 2 + 1) for k in range(c)])
    if size(shape):
        with kb.loop(0, n, name="n") as ni, kb.loop(0, c, name="c") as ci, \
                kb.loop(0, hw, name="p") as p:
            b.store(kb.fconst(0.0), slot)
            base = kb.index([(ni, c * hw), (p, 1)])
            with kb.loop(kb.load(lo_tab, I64, ci), kb.load(hi_tab, I64, ci), name="j") as j:
                v = kb.load(x, F32, kb.index([(base, 1), (j, hw)]))
                b.store(b.fadd(b.load(slot, typ=F32), b.fmul(v, v)), slot)
            den = b.fadd(kb.fconst(bias), b.fmul(kb.fconst(alpha), b.load(slot, typ=F32)))
            den = b.call(powf, [den, kb.fconst(beta)])
            idx = kb.index([(base, 1), (ci, hw)])
            kb.store(b.fdiv(kb.load(x, F32, idx), den), y, F32, idx)
    return kb.finish(), kb.name, [(shape, np.dtype("float32"))]


def _batchnorm(op: str, attrs: dict[str, Any],
               in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ("epsilon",))
    check_inputs(op, in_specs, (5,))
    for k, what in enumerate(("x", "scale", "bias", "mean", "var")):
        check_dtype(op, what, in_specs[k], ("float32",))
    shape = in_specs[0][0]
    check(len(shape) >= 2, op, f"x must have rank >= 2, not shape {shape}")
    c = shape[1]
    for k in range(1, 5):
        check(in_specs[k][0] == (c,), op,
              f"parameter {k} must have shape ({c},), not {in_specs[k][0]}")
    eps = float_attr(op, attrs, "epsilon", 1e-5)
    outer, inner = shape[0], size(shape[2:])
    kb = KernelBuilder("tsr_batchnorm", 5, 1)
    b = kb.b
    x, scale, bias, mean, var = kb.ins
    y = kb.outs[0]
    sqrt = kb.intrinsic("llvm.sqrt.f32", F32, [F32])
    if size(shape):
        with kb.loop(0, outer, name="n") as ni, kb.loop(0, c, name="c") as ci:
            sd = b.call(sqrt, [b.fadd(kb.load(var, F32, ci), kb.fconst(eps))])
            inv = b.fdiv(kb.load(scale, F32, ci), sd)
            shift = b.fsub(kb.load(bias, F32, ci), b.fmul(kb.load(mean, F32, ci), inv))
            base = kb.index([(ni, c * inner), (ci, inner)])
            with kb.loop(0, inner, name="i") as i:
                idx = b.add(base, i, flags=("nsw",))
                kb.store(b.fadd(b.fmul(kb.load(x, F32, idx), inv), shift), y, F32, idx)
    return kb.finish(), kb.name, [(shape, np.dtype("float32"))]


def emit_convert(kb: KernelBuilder, v: ir.Value, src: str, dst: str) -> ir.Value:
    """``v`` (dtype ``src``) converted to ``dst`` as numpy's ``astype`` does on x86."""
    b = kb.b
    if src == dst:
        return v
    out_ty = DTYPES[dst]
    if dst == "bool":
        if src == "float32":
            flag = b.fcmp_unordered("une", v, kb.fconst(0.0))
        else:
            flag = b.icmp_unsigned("!=", v, ir.Constant(v.type, 0))
        return b.zext(flag, I8)
    if src == "float32":
        wide = I64 if dst == "int64" else I32
        lim = 2.0 ** (wide.width - 1)
        inside = b.and_(b.fcmp_ordered(">=", v, kb.fconst(-lim)),
                        b.fcmp_ordered("<", v, kb.fconst(lim)))
        safe = b.select(inside, v, kb.fconst(0.0))  # fptosi of an out-of-range value is poison
        t = b.select(inside, b.fptosi(safe, wide), ir.Constant(wide, -(1 << (wide.width - 1))))
        return t if wide == out_ty else b.trunc(t, out_ty)
    unsigned = src in ("bool", "uint8")
    if dst == "float32":
        return b.uitofp(v, F32) if unsigned else b.sitofp(v, F32)
    if out_ty.width == v.type.width:
        return v
    if out_ty.width < v.type.width:
        return b.trunc(v, out_ty)
    return b.zext(v, out_ty) if unsigned else b.sext(v, out_ty)


def _cast(op: str, attrs: dict[str, Any], in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ("to",))
    check_inputs(op, in_specs, (1,))
    src = check_dtype(op, "input", in_specs[0], _CAST)
    to = attrs.get("to")
    try:
        dst = np.dtype(to).name
    except TypeError:
        raise fail(op, f"attribute to must be a dtype name, not {to!r}") from None
    check(dst in _CAST, op, f"attribute to must be one of {', '.join(_CAST)}, not {dst}")
    shape = in_specs[0][0]
    kb = KernelBuilder(f"tsr_cast_{src}_{dst}", 1, 1)
    emit_map(kb, [shape], [DTYPES[src]], shape, DTYPES[dst],
             lambda vals: emit_convert(kb, vals[0], src, dst))
    return kb.finish(), kb.name, [(shape, np.dtype(dst))]


def _mean(op: str, attrs: dict[str, Any], in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ("axes", "keepdims"))
    check_inputs(op, in_specs, (1,))
    dt = check_dtype(op, "input", in_specs[0], _NUMERIC)
    shape = in_specs[0][0]
    rank = len(shape)
    check(rank >= 1, op, "input must have rank >= 1")
    axes = sorted({norm_axis(op, a, rank, "axes") for a in ints_attr(op, attrs, "axes", None,
                                                                       (-1,))})
    keep = int_attr(op, attrs, "keepdims", 1)
    check(keep in (0, 1), op, f"keepdims must be 0 or 1, not {keep}")
    kept = [k for k in range(rank) if k not in axes]
    out = tuple(1 if k in axes else d for k, d in enumerate(shape) if keep or k not in axes)
    count = size(shape[k] for k in axes)
    check(count > 0 or dt == "float32", op,
          f"cannot take an integer mean over empty axes {axes} of {shape}")  # float: NaN
    strides = contiguous_strides(shape)
    ty = DTYPES[dt]
    flt = dt == "float32"
    acc_ty = F64 if flt else I64
    kb = KernelBuilder(f"tsr_mean_{dt}", 1, 1)
    b = kb.b
    slot = kb.alloca(acc_ty, 1)
    kept_shape = [shape[k] for k in kept]
    if size(out):
        with kb.nest(kept_shape, name="o") as oi:
            b.store(ir.Constant(acc_ty, 0.0 if flt else 0), slot)
            base = kb.index([(i, strides[k]) for i, k in zip(oi, kept, strict=True)])
            with kb.nest([shape[k] for k in axes], name="r") as ri:
                idx = kb.index([(base, 1)] + [(i, strides[k])
                                              for i, k in zip(ri, axes, strict=True)])
                v = kb.load(kb.ins[0], ty, idx)
                acc = b.load(slot, typ=acc_ty)
                if flt:
                    acc = b.fadd(acc, b.fpext(v, F64), flags=FAST)
                else:
                    acc = b.add(acc, b.sext(v, I64))
                b.store(acc, slot)
            acc = b.load(slot, typ=acc_ty)
            if flt:
                res = b.fptrunc(b.fdiv(acc, ir.Constant(F64, float(count))), F32)
            else:
                res = b.trunc(b.sdiv(acc, kb.i64(count)), ty)
            ostr = contiguous_strides(kept_shape)
            kb.store(res, kb.outs[0], ty, kb.index(list(zip(oi, ostr, strict=True))))
    return kb.finish(), kb.name, [(out, np.dtype(dt))]


def _unary(op: str, attrs: dict[str, Any], in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ("alpha",) if op == "LeakyRelu" else ())
    check_inputs(op, in_specs, (1,))
    allowed = {"Neg": ("float32", "int8", "int32", "int64"), "Identity": _ANY}.get(
        op, ("float32",))
    dt = check_dtype(op, "input", in_specs[0], allowed)
    shape = in_specs[0][0]
    ty = DTYPES[dt]
    kb = KernelBuilder(f"tsr_{op.lower()}_{dt}", 1, 1)
    b = kb.b
    if op == "Identity":
        if size(shape):
            kb.memcpy(kb.outs[0], kb.ins[0], size(shape) * itemsize(ty))
        return kb.finish(), kb.name, [(shape, np.dtype(dt))]
    alpha = float(np.float32(float_attr(op, attrs, "alpha", 0.01))) if op == "LeakyRelu" else 0

    def fn(vals: Sequence[ir.Value]) -> ir.Value:
        x = vals[0]
        if op == "Neg":
            return b.fneg(x) if dt == "float32" else b.sub(ir.Constant(ty, 0), x)
        if op == "Sqrt":
            return kb.call1("llvm.sqrt", x)
        return b.select(b.fcmp_ordered(">=", x, kb.fconst(0.0)), x,
                        b.fmul(x, kb.fconst(alpha)))

    emit_map(kb, [shape], [ty], shape, ty, fn)
    return kb.finish(), kb.name, [(shape, np.dtype(dt))]


def _pow(op: str, attrs: dict[str, Any], in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ())
    check_inputs(op, in_specs, (2,))
    dt = check_dtype(op, "input 0", in_specs[0], ("float32", "int32", "int64"))
    check_dtype(op, "input 1", in_specs[1], (dt,))
    out = broadcast_shape(op, [s for s, _ in in_specs])
    ty = DTYPES[dt]
    kb = KernelBuilder(f"tsr_pow_{dt}", 2, 1)
    if dt == "float32":
        powf = kb.intrinsic("llvm.pow.f32", F32, [F32, F32])
        emit_map(kb, [s for s, _ in in_specs], [F32, F32], out, F32,
                 lambda vals: kb.b.call(powf, list(vals)))
        return kb.finish(), kb.name, [(out, np.dtype(dt))]
    b = kb.b
    acc, base, exp = kb.alloca(ty, 1), kb.alloca(ty, 1), kb.alloca(ty, 1)
    zero, one = ir.Constant(ty, 0), ir.Constant(ty, 1)

    def ipow(vals: list[ir.Value]) -> ir.Value:
        # square-and-multiply over the exponent's bits (wrapping like the integer dtype); a
        # negative exponent gives 0 except for bases 1 and -1 (as integer division would)
        x, e = vals
        b.store(one, acc)
        b.store(x, base)
        b.store(e, exp)
        with kb.loop(0, ty.width - 1, name="bit"):
            cur = b.load(exp, typ=ty)
            odd = b.icmp_signed("!=", b.and_(cur, one), zero)
            a = b.load(acc, typ=ty)
            b.store(b.select(odd, b.mul(a, b.load(base, typ=ty)), a), acc)
            sq = b.load(base, typ=ty)
            b.store(b.mul(sq, sq), base)
            b.store(b.ashr(cur, one), exp)
        neg = b.icmp_signed("<", e, zero)
        unit = b.or_(b.icmp_signed("==", x, one), b.icmp_signed("==", x, ir.Constant(ty, -1)))
        odd_e = b.icmp_signed("!=", b.and_(e, one), zero)
        neg_val = b.select(unit, b.select(b.and_(b.icmp_signed("==", x, ir.Constant(ty, -1)),
                                                 odd_e), ir.Constant(ty, -1), one), zero)
        return b.select(neg, neg_val, b.load(acc, typ=ty))

    emit_map(kb, [s for s, _ in in_specs], [ty, ty], out, ty, ipow)
    return kb.finish(), kb.name, [(out, np.dtype(dt))]


def _matmul(op: str, attrs: dict[str, Any], in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ())
    check_inputs(op, in_specs, (2,))
    dt = check_dtype(op, "A", in_specs[0], _NUMERIC)
    check(in_specs[1][1].name == dt, op, f"B must have the dtype of A ({dt}), not "
                                         f"{in_specs[1][1].name}")
    a, bs = in_specs[0][0], in_specs[1][0]
    check(len(a) >= 1 and len(bs) >= 1, op, "operands must have rank >= 1")
    a2: Shape = (1,) + a if len(a) == 1 else a
    b2: Shape = bs + (1,) if len(bs) == 1 else bs
    check(a2[-1] == b2[-2], op, f"inner dimensions of {a} and {bs} differ")
    batch = broadcast_shape(op, [a2[:-2], b2[:-2]]) if len(a2) > 2 or len(b2) > 2 else ()
    m, k_dim, n = a2[-2], a2[-1], b2[-1]
    full = batch + (m, n)
    out = full
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(bs) == 1:
        out = out[:-1]
    a_bstr = broadcast_strides(a2[:-2], batch) if batch else ()
    b_bstr = broadcast_strides(b2[:-2], batch) if batch else ()
    o_bstr = contiguous_strides(batch)
    flt = dt == "float32"
    ty = DTYPES[dt]
    acc_ty = F32 if flt else I32
    kb = KernelBuilder(f"tsr_matmul_{dt}", 2, 1)
    b = kb.b
    xa, xb, y = kb.ins[0], kb.ins[1], kb.outs[0]
    row = kb.alloca(acc_ty, max(n, 1))
    if size(full):
        with kb.nest(list(batch), name="bt") as bi:
            abase = kb.index([(i, s * m * k_dim) for i, s in zip(bi, a_bstr, strict=True)])
            bbase = kb.index([(i, s * k_dim * n) for i, s in zip(bi, b_bstr, strict=True)])
            obase = kb.index([(i, s * m * n) for i, s in zip(bi, o_bstr, strict=True)])
            with kb.loop(0, m, name="m") as mi:
                with kb.loop(0, n, name="z") as j:
                    kb.store(kb.const(acc_ty, 0), row, acc_ty, j)
                with kb.loop(0, k_dim, name="k") as k:
                    av = kb.load(xa, ty, kb.index([(abase, 1), (mi, k_dim), (k, 1)]))
                    av = av if flt else b.sext(av, I32) if dt == "int8" else av
                    brow = kb.index([(bbase, 1), (k, n)])
                    with kb.loop(0, n, name="j") as j:
                        bv = kb.load(xb, ty, b.add(brow, j, flags=("nsw",)))
                        acc = kb.load(row, acc_ty, j)
                        if flt:
                            acc = b.fadd(acc, b.fmul(av, bv))
                        else:
                            bv = b.sext(bv, I32) if dt == "int8" else bv
                            acc = b.add(acc, b.mul(av, bv))
                        kb.store(acc, row, acc_ty, j)
                dst = kb.index([(obase, 1), (mi, n)])
                with kb.loop(0, n, name="s") as j:
                    v = kb.load(row, acc_ty, j)
                    v = b.trunc(v, I8) if dt == "int8" else v
                    kb.store(v, y, ty, b.add(dst, j, flags=("nsw",)))
    return kb.finish(), kb.name, [(out, np.dtype(dt))]


GENERATORS = {
    "Pad": _pad,
    "LRN": _lrn,
    "BatchNorm": _batchnorm,
    "Cast": _cast,
    "Mean": _mean,
    "Neg": _unary,
    "Sqrt": _unary,
    "LeakyRelu": _unary,
    "Identity": _unary,
    "Pow": _pow,
    "MatMul": _matmul,
}
