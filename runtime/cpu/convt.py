"""The ConvTranspose CPU kernel: transposed 2-D convolution of NCHW float32 tensors (ONNX
ConvTranspose with explicit pads; the frontend resolves auto_pad and output_shape).

Input x [N, C, H, W], weight w [C, M/group, kH, kW], optional bias [M]; output
[N, M, OH, OW] with ``OH = sH * (H - 1) + output_padding_h + (kH - 1) * dH + 1 - pad_top -
pad_bottom`` (same for W). Input pixel (iy, ix) adds ``x * w`` at output
``(iy * sH + ky * dH - pad_top, ix * sW + kx * dW - pad_left)``; positions outside the output
are dropped. The kernel scatters input rows into output rows (the column range of each kernel
tap is precomputed), accumulating in float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tessera.runtime.cpu.builder import (
    F32,
    I64,
    KernelBuilder,
    Spec,
    check,
    check_attrs,
    check_dtype,
    check_inputs,
    int_attr,
    ints_attr,
)

__all__ = ["GENERATORS", "out_size"]


def out_size(n: int, k: int, s: int, d: int, pb: int, pe: int, op: int) -> int:
    return s * (n - 1) + op + (k - 1) * d + 1 - pb - pe


def _conv_transpose(op: str, attrs: dict[str, Any],
                    in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ("group", "strides", "pads", "dilations", "output_padding"))
    check_inputs(op, in_specs, (2, 3))
    for k, spec in enumerate(in_specs):
        check_dtype(op, ("X", "W", "B")[k], spec, ("float32",))
    xs, ws = in_specs[0][0], in_specs[1][0]
    check(len(xs) == 4 and len(ws) == 4, op, f"X and W must be 4-D, not {xs} and {ws}")
    n, c, h, w = xs
    wc, mg, kh, kw = ws
    group = int_attr(op, attrs, "group", 1)
    check(group >= 1 and c % group == 0 and wc == c, op,
          f"W {ws} does not fit X {xs} with group {group}")
    m = mg * group
    if len(in_specs) == 3:
        check(in_specs[2][0] == (m,), op, f"B must have shape ({m},), not {in_specs[2][0]}")
    sh, sw = ints_attr(op, attrs, "strides", 2, (1, 1))
    dh, dw = ints_attr(op, attrs, "dilations", 2, (1, 1))
    pt, pl, pb, pr = ints_attr(op, attrs, "pads", 4, (0, 0, 0, 0))
    oph, opw = ints_attr(op, attrs, "output_padding", 2, (0, 0))
    check(min(sh, sw, dh, dw) >= 1, op, "strides and dilations must be >= 1")
    check(min(pt, pl, pb, pr, oph, opw) >= 0, op, "pads and output_padding must be >= 0")
    oh = out_size(h, kh, sh, dh, pt, pb, oph)
    ow = out_size(w, kw, sw, dw, pl, pr, opw)
    check(oh > 0 and ow > 0, op, f"output would be empty ({oh}x{ow})")
    # per kernel column: the input columns whose output column lies inside [0, ow)
    lo, hi = [], []
    for t in range(kw):
        off = t * dw - pl  # ox = ix * sw + off
        first = max(0, -(off // sw))
        last = (ow - 1 - off) // sw if ow - 1 - off >= 0 else -1
        lo.append(min(first, w))
        hi.append(max(min(last + 1, w), min(first, w)))
    cg = c // group
    kb = KernelBuilder("tsr_conv_transpose", len(in_specs), 1)
    b = kb.b
    x, wt, y = kb.ins[0], kb.ins[1], kb.outs[0]
    bias = kb.ins[2] if len(in_specs) == 3 else None
    t_lo, t_hi = kb.table(lo), kb.table(hi)
    with kb.loop(0, n, name="n") as ni, kb.loop(0, m, name="m") as mi:
        bv = kb.load(bias, F32, mi) if bias is not None else kb.fconst(0.0)
        obase = kb.index([(ni, m * oh * ow), (mi, oh * ow)])
        with kb.loop(0, oh * ow, name="init") as i:
            kb.store(bv, y, F32, b.add(obase, i, flags=("nsw",)))
        g = b.sdiv(mi, kb.i64(mg))
        mo = b.srem(mi, kb.i64(mg))
        with kb.loop(0, cg, name="c") as ci, kb.loop(0, h, name="iy") as iy, \
                kb.loop(0, kh, name="ky") as ky:
            oy = kb.index([(iy, sh), (ky, dh)], base=-pt)
            inside = b.icmp_unsigned("<", oy, kb.i64(oh))
            with kb.if_then(inside):
                ch = kb.index([(g, cg), (ci, 1)])
                src = kb.ptr(x, F32, kb.index([(ni, c * h * w), (ch, h * w), (iy, w)]))
                dst = kb.ptr(y, F32, kb.index([(obase, 1), (oy, ow)]))
                wrow = kb.index([(ch, mg * kh * kw), (mo, kh * kw), (ky, kw)])
                with kb.loop(0, kw, name="kx") as kx:
                    wv = kb.load(wt, F32, b.add(wrow, kx, flags=("nsw",)))
                    off = kb.index([(kx, dw)], base=-pl)
                    with kb.loop(kb.load(t_lo, I64, kx), kb.load(t_hi, I64, kx), name="ix") as ix:
                        ox = b.add(kb.index([(ix, sw)]), off, flags=("nsw",))
                        acc = b.fadd(kb.load(dst, F32, ox), b.fmul(kb.load(src, F32, ix), wv))
                        kb.store(acc, dst, F32, ox)
    return kb.finish(), kb.name, [((n, m, oh, ow), np.dtype("float32"))]


GENERATORS = {"ConvTranspose": _conv_transpose}
