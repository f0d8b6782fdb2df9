"""Neural-network CPU kernels on NCHW tensors: pooling, softmax, grouped/depthwise convolution.

Semantics are ONNX's (opset 19-22). Integer variants:

- int8 MaxPool / GlobalMaxPool are exact (MaxPool also on uint8);
- int8 AveragePool / GlobalAveragePool sum in int32 and divide by the window count rounding to
  nearest with ties away from zero (``2.5 -> 3``, ``-2.5 -> -3``);
- int8 Conv multiplies int8 x int8 and accumulates in int32 (wrapping mod 2**32) with an
  optional int32 bias; the output is int32.
"""

from __future__ import annotations

from collections.abc import Callable
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
    Spec,
    check,
    check_attrs,
    check_dtype,
    check_inputs,
    int_attr,
    ints_attr,
    norm_axis,
    size,
    spatial_params,
    window_taps,
)

FLT_LOWEST = float(np.finfo(np.float32).min)
MAX_SCRATCH = 1 << 16  # elements of a per-row stack buffer
MAX_FUSED_TAPS = 64  # convs with more taps per output accumulate tap by tap (code size)

_POOL_ATTRS = ("kernel_shape", "strides", "pads", "dilations", "ceil_mode", "auto_pad")


def _nchw(op: str, spec: Spec, what: str = "input") -> tuple[int, int, int, int]:
    shape = spec[0]
    check(len(shape) == 4, op, f"{what} must be 4-D NCHW, not shape {shape}")
    check(size(shape) > 0, op, f"{what} must not be empty, got shape {shape}")
    return shape  # type: ignore[return-value]


def _interior(n_in: int, n_out: int, k: int, s: int, d: int, pb: int) -> tuple[int, int]:
    """Output range [a, b) whose windows lie entirely inside the input."""
    a = min(-(-pb // s), n_out)
    last = n_in - 1 + pb - (k - 1) * d  # o*s <= last
    b = min(last // s + 1, n_out) if last >= 0 else 0
    return (a, b) if a < b else (0, 0)


def _pool_window(op: str, attrs: dict[str, Any], hw: tuple[int, int], kernel):
    """A 2-D pooling window's output size, strides, dilations and begin/end pads (ceil_mode
    allowed); an empty output is an error."""
    p = spatial_params(op, attrs, hw, kernel, allow_ceil=True)
    oh, ow = p["out"]
    check(oh > 0 and ow > 0, op, f"output would be empty ({oh}x{ow})")
    return oh, ow, p["strides"], p["dilations"], p["pad_begin"], p["pad_end"]


def _pool(op: str, attrs: dict[str, Any], in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    is_max = op == "MaxPool"
    check_attrs(op, attrs, _POOL_ATTRS + (("storage_order",) if is_max else
                                          ("count_include_pad",)))
    check_inputs(op, in_specs, (1,))
    dt = check_dtype(op, "input", in_specs[0], ("float32", "int8") + (("uint8",) if is_max
                                                                       else ()))
    n, c, h, w = _nchw(op, in_specs[0])
    kernel = ints_attr(op, attrs, "kernel_shape", 2)
    check(int_attr(op, attrs, "storage_order", 0) == 0 or not is_max, op,
          "storage_order must be 0 (the Indices output is not supported)")
    include_pad = int_attr(op, attrs, "count_include_pad", 0)
    check(include_pad in (0, 1), op, f"count_include_pad must be 0 or 1, not {include_pad}")
    oh, ow, (sh, sw), (dh, dw), (pt, pl), (pb, pr) = _pool_window(op, attrs, (h, w), kernel)
    hlo, hhi, hpad = window_taps(h, oh, kernel[0], sh, dh, pt, pb)
    wlo, whi, wpad = window_taps(w, ow, kernel[1], sw, dw, pl, pr)
    ty = DTYPES[dt]
    int_avg = dt == "int8" and not is_max
    check(not int_avg or ow <= MAX_SCRATCH, op, f"output width {ow} exceeds {MAX_SCRATCH}")

    kb = KernelBuilder(f"tsr_{op.lower()}_{dt}", 1, 1)
    b = kb.b
    x, y = kb.ins[0], kb.outs[0]
    acc_ty = I32 if int_avg else ty
    scratch = kb.alloca(I32, ow) if int_avg else None
    t_hlo, t_hhi = kb.table(hlo), kb.table(hhi)
    t_wlo, t_whi = kb.table(wlo), kb.table(whi)
    if is_max:
        ident = kb.fconst(FLT_LOWEST) if dt == "float32" else ir.Constant(
            I8, 0 if dt == "uint8" else -128)
    else:
        ident = kb.const(acc_ty, 0)
    a_lo, a_hi = _interior(w, ow, kernel[1], sw, dw, pl)

    def combine(acc: ir.Value, v: ir.Value) -> ir.Value:
        if is_max:
            if dt == "uint8":
                return b.select(b.icmp_unsigned(">", acc, v), acc, v)
            return kb.fmax(acc, v) if dt == "float32" else kb.smax(acc, v)
        if int_avg:
            return b.add(acc, b.sext(v, I32))
        return b.fadd(acc, v)

    with kb.loop(0, n * c, name="nc") as nc, kb.loop(0, oh, name="oh") as yo:
        if int_avg:
            row = scratch
        else:
            row = kb.ptr(y, ty, kb.index([(nc, oh * ow), (yo, ow)]))
        with kb.loop(0, ow, name="init") as xo:
            kb.store(ident, row, acc_ty, xo)
        th_lo = kb.load(t_hlo, I64, yo)
        th_hi = kb.load(t_hhi, I64, yo)
        with kb.loop(th_lo, th_hi, name="th") as th:
            ih = kb.index([(yo, sh), (th, dh)], base=-pt)
            src = kb.ptr(x, ty, kb.index([(nc, h * w), (ih, w)]))
            for lo_, hi_, const_taps in ((0, a_lo, False), (a_lo, a_hi, True),
                                         (a_hi, ow, False)):
                if lo_ >= hi_:
                    continue
                with kb.loop(lo_, hi_, name="ow") as xo:
                    if const_taps:
                        tw_lo, tw_hi = 0, kernel[1]
                    else:
                        tw_lo, tw_hi = kb.load(t_wlo, I64, xo), kb.load(t_whi, I64, xo)
                    acc = kb.load(row, acc_ty, xo)
                    slot = kb.alloca(acc_ty, 1)
                    b.store(acc, slot)
                    with kb.loop(tw_lo, tw_hi, name="tw") as tw:
                        iw = kb.index([(xo, sw), (tw, dw)], base=-pl)
                        b.store(combine(b.load(slot, typ=acc_ty), kb.load(src, ty, iw)), slot)
                    kb.store(b.load(slot, typ=acc_ty), row, acc_ty, xo)
        if not is_max:
            if include_pad:
                hc, wc = hpad, wpad
            else:
                hc = [hi - lo for lo, hi in zip(hlo, hhi, strict=True)]
                wc = [hi - lo for lo, hi in zip(wlo, whi, strict=True)]
            t_hc, t_wc = kb.table([max(v, 1) for v in hc], I32), kb.table(
                [max(v, 1) for v in wc], I32)
            hcount = kb.load(t_hc, I32, yo)
            out_row = kb.ptr(y, ty, kb.index([(nc, oh * ow), (yo, ow)]))
            with kb.loop(0, ow, name="fin") as xo:
                count = b.mul(hcount, kb.load(t_wc, I32, xo))
                s = kb.load(row, acc_ty, xo)
                if int_avg:
                    kb.store(b.trunc(kb.round_div_away(s, count), I8), out_row, I8, xo)
                else:
                    kb.store(b.fdiv(s, b.sitofp(count, F32)), out_row, F32, xo)
    return kb.finish(), kb.name, [((n, c, oh, ow), np.dtype(dt))]


def _pool_indices(op: str, attrs: dict[str, Any],
                  in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    """MaxPool's Indices output (int64), as onnxruntime computes it: per window the first
    position (row-major over the window) holding a value greater than every earlier one,
    starting from the lowest finite value; the index is flat over the whole NCHW input
    (``storage_order`` 0: ``h * W + w``, 1: ``h + w * H``, plus ``(n * C + c) * H * W``).
    A window without a greater value (all lowest/-inf/NaN) gets row and column -1."""
    check_attrs(op, attrs, _POOL_ATTRS + ("storage_order",))
    check_inputs(op, in_specs, (1,))
    dt = check_dtype(op, "input", in_specs[0], ("float32", "int8", "uint8"))
    n, c, h, w = _nchw(op, in_specs[0])
    kernel = ints_attr(op, attrs, "kernel_shape", 2)
    order = int_attr(op, attrs, "storage_order", 0)
    check(order in (0, 1), op, f"storage_order must be 0 or 1, not {order}")
    oh, ow, (sh, sw), (dh, dw), (pt, pl), (pb, pr) = _pool_window(op, attrs, (h, w), kernel)
    hlo, hhi, _ = window_taps(h, oh, kernel[0], sh, dh, pt, pb)
    wlo, whi, _ = window_taps(w, ow, kernel[1], sw, dw, pl, pr)
    ty = DTYPES[dt]
    kb = KernelBuilder(f"tsr_{op.lower()}_{dt}", 1, 1)
    b = kb.b
    x, y = kb.ins[0], kb.outs[0]
    t_hlo, t_hhi = kb.table(hlo), kb.table(hhi)
    t_wlo, t_whi = kb.table(wlo), kb.table(whi)
    lowest = kb.fconst(FLT_LOWEST) if dt == "float32" else ir.Constant(
        I8, 0 if dt == "uint8" else -128)
    best, hi_, wi_ = kb.alloca(ty, 1), kb.alloca(I64, 1), kb.alloca(I64, 1)

    def greater(v: ir.Value, m: ir.Value) -> ir.Value:
        if dt == "float32":
            return b.fcmp_ordered(">", v, m)
        return (b.icmp_unsigned if dt == "uint8" else b.icmp_signed)(">", v, m)

    with kb.loop(0, n * c, name="nc") as nc, kb.loop(0, oh, name="oh") as yo, \
            kb.loop(0, ow, name="ow") as xo:
        b.store(lowest, best)
        b.store(kb.i64(-1), hi_)
        b.store(kb.i64(-1), wi_)
        with kb.loop(kb.load(t_hlo, I64, yo), kb.load(t_hhi, I64, yo), name="th") as th:
            ih = kb.index([(yo, sh), (th, dh)], base=-pt)
            with kb.loop(kb.load(t_wlo, I64, xo), kb.load(t_whi, I64, xo), name="tw") as tw:
                iw = kb.index([(xo, sw), (tw, dw)], base=-pl)
                v = kb.load(x, ty, kb.index([(nc, h * w), (ih, w), (iw, 1)]))
                up = greater(v, b.load(best, typ=ty))
                b.store(b.select(up, v, b.load(best, typ=ty)), best)
                b.store(b.select(up, ih, b.load(hi_, typ=I64)), hi_)
                b.store(b.select(up, iw, b.load(wi_, typ=I64)), wi_)
        row, col = b.load(hi_, typ=I64), b.load(wi_, typ=I64)
        flat = (kb.index([(row, w), (col, 1)]) if order == 0
                else kb.index([(row, 1), (col, h)]))
        kb.store(b.add(flat, kb.index([(nc, h * w)])), y, I64,
                 kb.index([(nc, oh * ow), (yo, ow), (xo, 1)]))
    return kb.finish(), kb.name, [((n, c, oh, ow), np.dtype("int64"))]


def _global_pool(op: str, attrs: dict[str, Any],
                 in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ())
    check_inputs(op, in_specs, (1,))
    dt = check_dtype(op, "input", in_specs[0], ("float32", "int8"))
    n, c, h, w = _nchw(op, in_specs[0])
    is_max = op == "GlobalMaxPool"
    hw = h * w
    ty = DTYPES[dt]
    kb = KernelBuilder(f"tsr_{op.lower()}_{dt}", 1, 1)
    b = kb.b
    x, y = kb.ins[0], kb.outs[0]
    acc_ty = I32 if (dt == "int8" and not is_max) else ty
    slot = kb.alloca(acc_ty, 1)
    with kb.loop(0, n * c, name="nc") as nc:
        if is_max:
            b.store(kb.fconst(FLT_LOWEST) if dt == "float32" else ir.Constant(I8, -128), slot)
        else:
            b.store(kb.const(acc_ty, 0), slot)
        base = kb.index([(nc, hw)])
        with kb.loop(0, hw, name="k") as k:
            v = kb.load(x, ty, b.add(base, k, flags=("nsw",)))
            acc = b.load(slot, typ=acc_ty)
            if is_max:
                new = kb.fmax_reduce(acc, v) if dt == "float32" else kb.smax(acc, v)
            elif dt == "float32":
                new = b.fadd(acc, v, flags=FAST)
            else:
                new = b.add(acc, b.sext(v, I32))
            b.store(new, slot)
        acc = b.load(slot, typ=acc_ty)
        if is_max:
            res = acc
        elif dt == "float32":
            res = b.fdiv(acc, kb.fconst(hw))
        else:
            res = b.trunc(kb.round_div_away(acc, ir.Constant(I32, hw)), I8)
        kb.store(res, y, ty, nc)
    return kb.finish(), kb.name, [((n, c, 1, 1), np.dtype(dt))]


SOFTMAX_TILE = 256


def _softmax(op: str, attrs: dict[str, Any], in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    """ONNX Softmax (opset >= 13): along one axis, max-subtracted for numerical stability."""
    check_attrs(op, attrs, ("axis",))
    check_inputs(op, in_specs, (1,))
    check_dtype(op, "input", in_specs[0], ("float32",))
    shape = in_specs[0][0]
    check(len(shape) >= 1, op, "input must have rank >= 1")
    axis = norm_axis(op, int_attr(op, attrs, "axis", -1), len(shape))
    outer, length, inner = size(shape[:axis]), shape[axis], size(shape[axis + 1:])
    kb = KernelBuilder("tsr_softmax", 1, 1)
    b, x, y = kb.b, kb.ins[0], kb.outs[0]
    if size(shape) == 0:
        return kb.finish(), kb.name, [(shape, np.dtype("float32"))]
    if inner == 1:
        slot_m, slot_s = kb.alloca(F32, 1), kb.alloca(F32, 1)
        with kb.loop(0, outer, name="row") as r:
            base = kb.index([(r, length)])
            b.store(kb.fconst(-np.inf), slot_m)
            with kb.loop(0, length, name="m") as k:
                v = kb.load(x, F32, b.add(base, k, flags=("nsw",)))
                b.store(kb.fmax_reduce(b.load(slot_m, typ=F32), v), slot_m)
            m = b.load(slot_m, typ=F32)
            b.store(kb.fconst(0.0), slot_s)
            with kb.loop(0, length, name="e") as k:
                idx = b.add(base, k, flags=("nsw",))
                e = kb.exp(b.fsub(kb.load(x, F32, idx), m))
                kb.store(e, y, F32, idx)
                b.store(b.fadd(b.load(slot_s, typ=F32), e, flags=FAST), slot_s)
            s = b.load(slot_s, typ=F32)
            with kb.loop(0, length, name="d") as k:
                idx = b.add(base, k, flags=("nsw",))
                kb.store(b.fdiv(kb.load(y, F32, idx), s), y, F32, idx)
        return kb.finish(), kb.name, [(shape, np.dtype("float32"))]
    # Strided axis: work on tiles of the inner dimension so every inner loop is contiguous.
    tile = min(inner, SOFTMAX_TILE)
    mbuf, sbuf = kb.alloca(F32, tile), kb.alloca(F32, tile)
    n_tiles = -(-inner // tile)
    with kb.loop(0, outer, name="o") as o, kb.loop(0, n_tiles, name="t") as t:
        j0 = kb.index([(t, tile)])
        cnt = kb.smin(b.sub(kb.i64(inner), j0), kb.i64(tile))
        base = kb.index([(o, length * inner)])
        base = b.add(base, j0, flags=("nsw",))
        with kb.loop(0, cnt, name="mi") as j:
            kb.store(kb.fconst(-np.inf), mbuf, F32, j)
            kb.store(kb.fconst(0.0), sbuf, F32, j)
        with kb.loop(0, length, name="ma") as a:
            row = b.add(base, kb.index([(a, inner)]), flags=("nsw",))
            with kb.loop(0, cnt, name="mj") as j:
                v = kb.load(x, F32, b.add(row, j, flags=("nsw",)))
                kb.store(kb.fmax(kb.load(mbuf, F32, j), v), mbuf, F32, j)
        with kb.loop(0, length, name="ea") as a:
            row = b.add(base, kb.index([(a, inner)]), flags=("nsw",))
            with kb.loop(0, cnt, name="ej") as j:
                idx = b.add(row, j, flags=("nsw",))
                e = kb.exp(b.fsub(kb.load(x, F32, idx), kb.load(mbuf, F32, j)))
                kb.store(e, y, F32, idx)
                kb.store(b.fadd(kb.load(sbuf, F32, j), e), sbuf, F32, j)
        with kb.loop(0, length, name="da") as a:
            row = b.add(base, kb.index([(a, inner)]), flags=("nsw",))
            with kb.loop(0, cnt, name="dj") as j:
                idx = b.add(row, j, flags=("nsw",))
                kb.store(b.fdiv(kb.load(y, F32, idx), kb.load(sbuf, F32, j)), y, F32, idx)
    return kb.finish(), kb.name, [(shape, np.dtype("float32"))]


def _conv(op: str, attrs: dict[str, Any], in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    """Grouped / depthwise 2-D convolution, ONNX Conv. int8 x int8 -> int32 (+ int32 bias)."""
    check_attrs(op, attrs, ("group", "kernel_shape", "strides", "pads", "dilations",
                            "auto_pad"))
    check_inputs(op, in_specs, (2, 3))
    dt = check_dtype(op, "X", in_specs[0], ("float32", "int8"))
    check(in_specs[1][1].name == dt, op,
          f"W must have the dtype of X ({dt}), not {in_specs[1][1].name}")
    n, c, h, w = _nchw(op, in_specs[0], "X")
    wshape = in_specs[1][0]
    check(len(wshape) == 4, op, f"W must be 4-D (M, C/group, kH, kW), not shape {wshape}")
    m, cg, kh, kw = wshape
    group = int_attr(op, attrs, "group", 1)
    check(group >= 1 and c % group == 0, op, f"group {group} must divide C={c}")
    check(cg == c // group, op, f"W has {cg} input channels per group; X has C/group="
                                f"{c // group}")
    check(m >= 1 and m % group == 0, op, f"group {group} must divide M={m}")
    if "kernel_shape" in attrs:
        ks = ints_attr(op, attrs, "kernel_shape", 2)
        check(ks == (kh, kw), op, f"kernel_shape {ks} does not match W's {(kh, kw)}")
    acc_dt = "float32" if dt == "float32" else "int32"
    if len(in_specs) == 3:
        check_dtype(op, "B", in_specs[2], (acc_dt,))
        check(in_specs[2][0] == (m,), op, f"B must have shape ({m},), not {in_specs[2][0]}")
    p = spatial_params(op, attrs, (h, w), (kh, kw), allow_ceil=False)
    oh, ow = p["out"]
    check(oh > 0 and ow > 0, op, f"output would be empty ({oh}x{ow})")
    (sh, sw), (dh, dw), (pt, pl) = p["strides"], p["dilations"], p["pad_begin"]
    # For each kernel column, the output columns whose input column is inside the image.
    ow_lo, ow_hi = [], []
    for t in range(kw):
        off = t * dw - pl
        lo = max(0, -(off // sw))  # ceil(-off / sw)
        hi = min(ow, (w - 1 - off) // sw + 1) if w - 1 - off >= 0 else 0
        ow_lo.append(min(lo, ow))
        ow_hi.append(max(hi, min(lo, ow)))
    ty, acc_ty = DTYPES[dt], DTYPES[acc_dt]
    kb = KernelBuilder(f"tsr_conv_{dt}", len(in_specs), 1)
    b = kb.b
    x, wt, y = kb.ins[0], kb.ins[1], kb.outs[0]
    bias = kb.ins[2] if len(in_specs) == 3 else None
    t_lo, t_hi = kb.table(ow_lo), kb.table(ow_hi)
    m_per_g = m // group
    taps = [(ic, th, tw) for ic in range(cg) for th in range(kh) for tw in range(kw)]
    # Rows / columns whose every tap is inside the image get one fused pass per output element
    # (all taps summed in a register, constant loop bounds); the rest accumulate tap by tap.
    # Both sum bias then the taps in (ic, kh, kw) order, so they round alike.
    rows_in = _interior(h, oh, kh, sh, dh, pt) if len(taps) <= MAX_FUSED_TAPS else (0, 0)
    cols_in = _interior(w, ow, kw, sw, dw, pl)
    if cols_in == (0, 0):
        rows_in = (0, 0)

    def mac(acc: ir.Value, v: ir.Value, wv: ir.Value) -> ir.Value:
        if dt == "int8":
            return b.add(acc, b.mul(b.sext(v, I32), b.sext(wv, I32)))
        return b.fadd(acc, b.fmul(v, wv))

    def tap_by_tap(ni: ir.Value, mi: ir.Value, g: ir.Value, bias_v: ir.Value, lo: int,
                   hi: int) -> None:
        with kb.loop(lo, hi, name="oh") as yo:
            row = kb.ptr(y, acc_ty, kb.index([(ni, m * oh * ow), (mi, oh * ow), (yo, ow)]))
            with kb.loop(0, ow, name="init") as xo:
                kb.store(bias_v, row, acc_ty, xo)
            with kb.loop(0, cg, name="ic") as ic, kb.loop(0, kh, name="kh") as th:
                ih = kb.index([(yo, sh), (th, dh)], base=-pt)
                inside = b.icmp_unsigned("<", ih, kb.i64(h))
                with kb.if_then(inside):
                    ch = kb.index([(g, cg), (ic, 1)])
                    src = kb.ptr(x, ty, kb.index([(ni, c * h * w), (ch, h * w), (ih, w)]))
                    wrow = kb.index([(mi, cg * kh * kw), (ic, kh * kw), (th, kw)])
                    with kb.loop(0, kw, name="kw") as tw:
                        wv = kb.load(wt, ty, b.add(wrow, tw, flags=("nsw",)))
                        off = kb.index([(tw, dw)], base=-pl)
                        lo_x, hi_x = kb.load(t_lo, I64, tw), kb.load(t_hi, I64, tw)
                        with kb.loop(lo_x, hi_x, name="ow") as xo:
                            iw = b.add(kb.index([(xo, sw)]), off, flags=("nsw",))
                            acc = mac(kb.load(row, acc_ty, xo), kb.load(src, ty, iw), wv)
                            kb.store(acc, row, acc_ty, xo)

    def fused(ni: ir.Value, mi: ir.Value, g: ir.Value, bias_v: ir.Value) -> None:
        wvs = [kb.load(wt, ty, kb.index([(mi, cg * kh * kw)], base=(ic * kh + th) * kw + tw))
               for ic, th, tw in taps]
        with kb.loop(rows_in[0], rows_in[1], name="ohf") as yo:
            row = kb.ptr(y, acc_ty, kb.index([(ni, m * oh * ow), (mi, oh * ow), (yo, ow)]))
            img = kb.ptr(x, ty, kb.index([(ni, c * h * w), (g, cg * h * w), (yo, sh * w)]))

            def point(xo: ir.Value | int, valid: Callable[[int], bool]) -> None:
                acc = bias_v
                for (ic, th, tw), wv in zip(taps, wvs, strict=True):
                    if valid(tw):
                        at = kb.index([(xo, sw)], base=ic * h * w + (th * dh - pt) * w
                                      + tw * dw - pl)
                        acc = mac(acc, kb.load(img, ty, at), wv)
                kb.store(acc, row, acc_ty, xo)
            with kb.loop(cols_in[0], cols_in[1], name="owf") as xo:
                point(xo, lambda tw: True)
            for xo in [*range(cols_in[0]), *range(cols_in[1], ow)]:  # the few border columns
                point(xo, lambda tw, xo=xo: 0 <= xo * sw + tw * dw - pl < w)

    with kb.loop(0, n, name="n") as ni, kb.loop(0, m, name="m") as mi:
        g = b.sdiv(mi, kb.i64(m_per_g))
        bias_v = kb.load(bias, acc_ty, mi) if bias is not None else kb.const(acc_ty, 0)
        if rows_in == (0, 0):
            tap_by_tap(ni, mi, g, bias_v, 0, oh)
        else:
            tap_by_tap(ni, mi, g, bias_v, 0, rows_in[0])
            fused(ni, mi, g, bias_v)
            tap_by_tap(ni, mi, g, bias_v, rows_in[1], oh)
    return kb.finish(), kb.name, [((n, m, oh, ow), np.dtype(acc_dt))]


GENERATORS = {
    "MaxPool": _pool,
    "MaxPoolIndices": _pool_indices,
    "AveragePool": _pool,
    "GlobalAveragePool": _global_pool,
    "GlobalMaxPool": _global_pool,
    "Softmax": _softmax,
    "Conv": _conv,
}
