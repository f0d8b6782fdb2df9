"""ONNX converters: convolution, pooling, GEMM/MatMul, softmax, normalisation, resize, top-k.

1-D convolution, transposed convolution and pooling run as their 2-D IR ops on an ``H = 1``
view (reshapes around them); normalisations other than BatchNormalization and
LayerNormalization are composed from IR ops.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from tessera.compiler.frontend.common import norm_axes, opt_input, spatial_pads
from tessera.compiler.frontend.context import Ctx, Unsupported, decode
from tessera.compiler.frontend.registry import converter

__all__: list[str] = []


# -- convolution and pooling ---------------------------------------------------------------------

def _spatial_rank(ctx: Ctx, x: str, what: str) -> int:
    r = ctx.rank(x)
    if r not in (3, 4):
        raise Unsupported(f"only 1-D and 2-D {what} is supported (input rank 3 or 4), input "
                          f"has shape {ctx.shape(x)}")
    return r - 2


def _as_2d(ctx: Ctx, x: str) -> str:
    """An (N, C, 1, L) view of an (N, C, L) tensor (constants are reshaped at import)."""
    s = ctx.shape(x)
    if ctx.is_const(x):
        return ctx.add_const(ctx.tmp(x), ctx.consts[x].reshape(s[:2] + (1,) + s[2:]))
    return ctx.emit("reshape", [x], ctx.tmp(x), shape=s[:2] + (1,) + s[2:])


def _lift(values: Sequence[int], fill: int) -> tuple[int, ...]:
    """1-D spatial attribute values as 2-D (H first, with ``fill``)."""
    return (fill,) + tuple(values) if len(values) == 1 else tuple(values)


def _conv_geometry(a: dict, in_size: Sequence[int], kernel: Sequence[int]
                   ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, int, int, int]]:
    nd = len(in_size)
    strides = [int(v) for v in a.get("strides", [1] * nd)]
    dil = [int(v) for v in a.get("dilations", [1] * nd)]
    begin, end = spatial_pads(a, in_size, kernel, strides, dil)
    if nd == 1:
        return (1, strides[0]), (1, dil[0]), (0, begin[0], 0, end[0])
    return tuple(strides), tuple(dil), (begin[0], begin[1], end[0], end[1])


@converter("Conv")
def _conv(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    x, w = n.input[0], n.input[1]
    nd = _spatial_rank(ctx, x, "convolution")
    wshape = ctx.shape(w)
    kernel = [int(v) for v in a.get("kernel_shape", wshape[2:])]
    if list(wshape[2:]) != kernel:
        raise Unsupported(f"kernel_shape {kernel} does not match the weight {wshape}")
    strides, dil, pads = _conv_geometry(a, ctx.shape(x)[2:], kernel)
    b = opt_input(n, 2)
    attrs = dict(strides=strides, pads=pads, dilations=dil, groups=int(a.get("group", 1)))
    if nd == 2:
        ctx.emit("conv2d", [x, w, b], n.output[0], **attrs)
        return
    y = ctx.emit("conv2d", [_as_2d(ctx, x), _as_2d(ctx, w), b], ctx.tmp(n.output[0]), **attrs)
    s = ctx.shape(y)
    ctx.emit("reshape", [y], n.output[0], shape=s[:2] + s[3:])


def _transpose_pads(a: dict, in_size: Sequence[int], kernel: Sequence[int],
                    strides: Sequence[int], dil: Sequence[int], out_pad: Sequence[int]
                    ) -> tuple[list[int], list[int]]:
    """(begin, end) pads of ConvTranspose from pads, auto_pad or output_shape (ONNX's rules: the
    odd pixel of a total padding goes at the end for SAME_UPPER, else at the start)."""
    nd = len(in_size)
    full = [s * (i - 1) + op + (k - 1) * d + 1
            for i, k, s, d, op in zip(in_size, kernel, strides, dil, out_pad)]
    auto = decode(a.get("auto_pad", "NOTSET"))
    if "output_shape" in a:
        want = [int(v) for v in a["output_shape"]]
        if len(want) == nd + 2:
            want = want[2:]
        if len(want) != nd:
            raise Unsupported(f"output_shape {a['output_shape']} must give {nd} spatial sizes")
        total = [f - o for f, o in zip(full, want)]
    elif auto in ("SAME_UPPER", "SAME_LOWER"):
        total = [f - i * s for f, i, s in zip(full, in_size, strides)]
    elif auto in ("NOTSET", "", "VALID"):
        if auto == "VALID" or "pads" not in a:
            return [0] * nd, [0] * nd
        p = [int(v) for v in a["pads"]]
        if len(p) != 2 * nd or any(v < 0 for v in p):
            raise Unsupported(f"pads {p} must be {2 * nd} non-negative values")
        return p[:nd], p[nd:]
    else:
        raise Unsupported(f"auto_pad must be NOTSET, SAME_UPPER, SAME_LOWER or VALID, not "
                          f"{auto!r}")
    if any(t < 0 for t in total):
        raise AssertionError("callers extend output_padding first")
    if auto == "SAME_UPPER":
        begin = [t // 2 for t in total]
    else:  # SAME_LOWER, or output_shape without auto_pad: the odd pixel at the start
        begin = [t - t // 2 for t in total]
    return begin, [t - b for t, b in zip(total, begin)]


def _conv_transpose3d(ctx: Ctx, n: onnx.NodeProto, attrs: dict, begin: list[int],
                      end: list[int]) -> None:
    """3-D transposed convolution as two 2-D ones: first over (H, W) for every depth slice and
    depth tap at once (the weight's depth taps become extra output channels), then over depth,
    scattering each tap's slices to ``d * stride + tap * dilation - pad`` with a one-hot
    weight (exact: each output sums the same products, in tap order)."""
    x, w = n.input[0], n.input[1]
    wt = ctx.const(w, "weight")
    bt, c, d, h, wd = ctx.shape(x)
    _, mg, kd, kh, kw = wt.shape
    g = attrs["groups"]
    (sd, sh, sw), (dd, dh, dw) = attrs["strides"], attrs["dilations"]
    opd, oph, opw = attrs["output_padding"]
    # slices [N*D, C, H, W]; weight (C, M/g, KD, KH, KW) -> (C, KD*M/g, KH, KW) so that the
    # grouped output channels come out ordered (group, depth tap, channel)
    v = ctx.emit("transpose", [x], ctx.tmp(x), perm=(0, 2, 1, 3, 4))
    v = ctx.emit("reshape", [v], ctx.tmp(x), shape=(bt * d, c, h, wd))
    w2 = ctx.add_const(ctx.tmp(w), np.ascontiguousarray(
        wt.transpose(0, 2, 1, 3, 4)).reshape(c, kd * mg, kh, kw))
    z = ctx.emit("conv_transpose2d", [v, w2, ""], ctx.tmp(n.output[0]), strides=(sh, sw),
                 dilations=(dh, dw), output_padding=(oph, opw), groups=g,
                 pads=(begin[1], begin[2], end[1], end[2]))
    oh, ow = ctx.shape(z)[2:]
    plane = g * mg * oh * ow
    z = ctx.emit("reshape", [z], ctx.tmp(n.output[0]), shape=(bt, d, g, kd, mg * oh * ow))
    z = ctx.emit("transpose", [z], ctx.tmp(n.output[0]), perm=(0, 3, 1, 2, 4))
    z = ctx.emit("reshape", [z], ctx.tmp(n.output[0]), shape=(bt, kd, d, plane))
    onehot = np.zeros((kd, 1, kd, 1), np.float32)
    onehot[np.arange(kd), 0, np.arange(kd), 0] = 1.0
    y = ctx.emit("conv_transpose2d", [z, ctx.add_const(ctx.tmp(w), onehot), ""],
                 ctx.tmp(n.output[0]), strides=(sd, 1), dilations=(dd, 1),
                 output_padding=(opd, 0), groups=1, pads=(begin[0], 0, end[0], 0))
    od = ctx.shape(y)[2]
    y = ctx.emit("reshape", [y], ctx.tmp(n.output[0]), shape=(bt, od, g * mg, oh, ow))
    b = opt_input(n, 2)
    out = ctx.tmp(n.output[0]) if b else n.output[0]
    y = ctx.emit("transpose", [y], out, perm=(0, 2, 1, 3, 4))
    if b:
        bias = ctx.emit("reshape", [b], ctx.tmp(b), shape=(1, g * mg, 1, 1, 1))
        ctx.emit("add", [y, bias], n.output[0])


@converter("ConvTranspose")
def _conv_transpose(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    x, w = n.input[0], n.input[1]
    nd = 3 if ctx.rank(x) == 5 else _spatial_rank(ctx, x, "transposed convolution")
    wshape = ctx.shape(w)
    kernel = [int(v) for v in a.get("kernel_shape", wshape[2:])]
    if list(wshape[2:]) != kernel:
        raise Unsupported(f"kernel_shape {kernel} does not match the weight {wshape}")
    strides = [int(v) for v in a.get("strides", [1] * nd)]
    dil = [int(v) for v in a.get("dilations", [1] * nd)]
    out_pad = [int(v) for v in a.get("output_padding", [0] * nd)]
    xs = ctx.shape(x)
    if "output_shape" in a:
        # an output_shape beyond the full result is reached with zero rows/columns at the end
        # (output padding), as onnxruntime does
        want = [int(v) for v in a["output_shape"]][-nd:]
        full = [s * (i - 1) + op + (k - 1) * d + 1
                for i, k, s, d, op in zip(xs[2:], kernel, strides, dil, out_pad)]
        out_pad = [op + max(0, w - f) for op, w, f in zip(out_pad, want, full)]
    begin, end = _transpose_pads(a, xs[2:], kernel, strides, dil, out_pad)
    if nd == 3:
        _conv_transpose3d(ctx, n, dict(strides=strides, dilations=dil, output_padding=out_pad,
                                       groups=int(a.get("group", 1))), begin, end)
        return
    if nd == 1:
        attrs = dict(strides=(1, strides[0]), dilations=(1, dil[0]),
                     output_padding=(0, out_pad[0]), pads=(0, begin[0], 0, end[0]))
    else:
        attrs = dict(strides=tuple(strides), dilations=tuple(dil), output_padding=tuple(out_pad),
                     pads=(begin[0], begin[1], end[0], end[1]))
    attrs["groups"] = int(a.get("group", 1))
    b = opt_input(n, 2)
    if nd == 2:
        ctx.emit("conv_transpose2d", [x, w, b], n.output[0], **attrs)
        return
    y = ctx.emit("conv_transpose2d", [_as_2d(ctx, x), _as_2d(ctx, w), b],
                 ctx.tmp(n.output[0]), **attrs)
    s = ctx.shape(y)
    ctx.emit("reshape", [y], n.output[0], shape=s[:2] + s[3:])


def _pool3d(ctx: Ctx, n: onnx.NodeProto, a: dict, op: str, kernel: list[int]) -> None:
    """3-D pooling as a 2-D pooling over (H, W) then a 1-D pooling over D: max and average
    pooling are separable (an average's count is the product of its per-axis counts)."""
    x = n.input[0]
    bt, c, d, h, w = ctx.shape(x)
    strides = [int(v) for v in a.get("strides", [1, 1, 1])]
    dil = [int(v) for v in a.get("dilations", [1, 1, 1])]
    begin, end = spatial_pads(a, (d, h, w), kernel, strides, dil)
    common = dict(ceil_mode=bool(a.get("ceil_mode", 0)))
    if op == "avgpool":
        common["count_include_pad"] = bool(a.get("count_include_pad", 0))
    v = ctx.emit("reshape", [x], ctx.tmp(x), shape=(bt, c * d, h, w))
    v = ctx.emit(op, [v], ctx.tmp(x), kernel=tuple(kernel[1:]), strides=tuple(strides[1:]),
                 dilations=tuple(dil[1:]), pads=(begin[1], begin[2], end[1], end[2]), **common)
    oh, ow = ctx.shape(v)[2:]
    v = ctx.emit("reshape", [v], ctx.tmp(x), shape=(bt, c, d, oh * ow))
    v = ctx.emit(op, [v], ctx.tmp(x), kernel=(kernel[0], 1), strides=(strides[0], 1),
                 dilations=(dil[0], 1), pads=(begin[0], 0, end[0], 0), **common)
    ctx.emit("reshape", [v], n.output[0], shape=(bt, c, ctx.shape(v)[2], oh, ow))


@converter("MaxPool", "AveragePool")
def _pool(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    x = n.input[0]
    indices = n.output[1] if len(n.output) > 1 and n.output[1] else ""
    kernel = [int(v) for v in a["kernel_shape"]]
    op = "maxpool" if n.op_type == "MaxPool" else "avgpool"
    if ctx.rank(x) == 5 and len(kernel) == 3:
        if indices:
            raise Unsupported("the Indices output is supported for 2-D pooling, not 3-D")
        _pool3d(ctx, n, a, op, kernel)
        return
    nd = _spatial_rank(ctx, x, "pooling")
    if len(kernel) != nd:
        raise Unsupported(f"kernel_shape {kernel} must have {nd} values")
    strides, dil, pads = _conv_geometry(a, ctx.shape(x)[2:], kernel)
    attrs = dict(kernel=_lift(kernel, 1), strides=strides, pads=pads, dilations=dil,
                 ceil_mode=bool(a.get("ceil_mode", 0)))
    if n.op_type == "AveragePool":
        attrs["count_include_pad"] = bool(a.get("count_include_pad", 0))
    if indices:
        if nd != 2:
            raise Unsupported(f"the Indices output is supported for 2-D pooling, not {nd}-D")
        ctx.emit("maxpool_indices", [x], indices, storage_order=int(a.get("storage_order", 0)),
                 **attrs)
    if nd == 2:
        ctx.emit(op, [x], n.output[0], **attrs)
        return
    y = ctx.emit(op, [_as_2d(ctx, x)], ctx.tmp(n.output[0]), **attrs)
    s = ctx.shape(y)
    ctx.emit("reshape", [y], n.output[0], shape=s[:2] + s[3:])


@converter("GlobalAveragePool", "GlobalMaxPool")
def _global_pool(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    op = "global_avgpool" if n.op_type == "GlobalAveragePool" else "global_maxpool"
    ctx.emit(op, [n.input[0]], n.output[0])


@converter("LRN")
def _lrn(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    if ctx.rank(n.input[0]) != 4:
        raise Unsupported(f"LRN needs a 4-D NCHW input, not {ctx.shape(n.input[0])}")
    ctx.emit("lrn", [n.input[0]], n.output[0], size=int(a["size"]),
             alpha=float(a.get("alpha", 1e-4)), beta=float(a.get("beta", 0.75)),
             bias=float(a.get("bias", 1.0)))


# -- GEMM --------------------------------------------------------------------------------------

@converter("Gemm")
def _gemm(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    ta, tb = int(a.get("transA", 0)), int(a.get("transB", 0))
    x = n.input[0]
    if ctx.rank(x) != 2 or ctx.rank(n.input[1]) != 2:
        raise Unsupported(f"Gemm needs 2-D operands, not {ctx.shape(x)} and "
                          f"{ctx.shape(n.input[1])}")
    if ta:
        x = ctx.emit("transpose", [x], ctx.tmp(x), perm=(1, 0))
    bconst = ctx.maybe_const(n.input[1])
    c = opt_input(n, 2)
    out = n.output[0]

    def add_c(y: str) -> None:
        if not c:
            ctx.emit("identity", [y], out)
            return
        cc = c if beta == 1.0 else ctx.emit("mul", [c, ctx.scalar(beta)], ctx.tmp(c))
        ctx.emit("add", [y, cc], out)

    if bconst is None:
        bb = n.input[1]
        if tb:
            bb = ctx.emit("transpose", [bb], ctx.tmp(bb), perm=(1, 0))
        y = ctx.emit("matmul", [x, bb], ctx.tmp(out))
        if alpha != 1.0:
            y = ctx.emit("mul", [y, ctx.scalar(alpha)], ctx.tmp(out))
        add_c(y)
        return
    w = np.ascontiguousarray(bconst if tb else bconst.T, dtype=np.float32)  # at most 1 copy
    if alpha != 1.0:
        w = w * np.float32(alpha)
    m = w.shape[0]
    wname = ctx.add_const(ctx.tmp(n.input[1]), w)
    cv = ctx.maybe_const(c)
    if cv is not None and cv.size in (1, m) and (cv.ndim <= 1 or cv.shape[-1] == cv.size):
        bias = ctx.add_const(ctx.tmp(c), np.broadcast_to(
            cv.reshape(-1).astype(np.float32) * np.float32(beta), (m,)).copy())
        ctx.emit("dense", [x, wname, bias], out)
        return
    add_c(ctx.emit("dense", [x, wname], ctx.tmp(out)))


@converter("MatMul")
def _matmul(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    x, w = n.input[0], n.input[1]
    b = ctx.maybe_const(w)
    xs = ctx.shape(x)
    if b is not None and b.ndim == 2 and len(xs) >= 2 and not ctx.is_const(x):
        wt = ctx.add_const(ctx.tmp(w), np.ascontiguousarray(b.T))
        if len(xs) == 2:
            ctx.emit("dense", [x, wt], n.output[0])
            return
        # a batch of rows times a constant matrix: one dense layer over the flattened rows
        flat = ctx.emit("reshape", [x], ctx.tmp(x), shape=(int(np.prod(xs[:-1])), xs[-1]))
        y = ctx.emit("dense", [flat, wt], ctx.tmp(n.output[0]))
        ctx.emit("reshape", [y], n.output[0], shape=xs[:-1] + (b.shape[1],))
        return
    ctx.emit("matmul", [x, w], n.output[0])


# -- softmax ------------------------------------------------------------------------------------

@converter("Softmax", "LogSoftmax")
def _softmax(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    shape = ctx.shape(n.input[0])
    r = len(shape)
    op = "softmax" if n.op_type == "Softmax" else "log_softmax"
    axis = norm_axes([int(a.get("axis", -1 if ctx.opset >= 13 else 1))], r, "axis")[0]
    if ctx.opset >= 13 or axis == r - 1:
        ctx.emit(op, [n.input[0]], n.output[0], axis=axis)
        return
    flat = (int(np.prod(shape[:axis])), int(np.prod(shape[axis:])))  # opset < 13: 2-D coerced
    t = ctx.emit("reshape", [n.input[0]], ctx.tmp(n.output[0]), shape=flat)
    t = ctx.emit(op, [t], ctx.tmp(n.output[0]), axis=1)
    ctx.emit("reshape", [t], n.output[0], shape=shape)


@converter("Hardmax")
def _hardmax(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    x = n.input[0]
    shape = ctx.shape(x)
    r = len(shape)
    axis = norm_axes([int(a.get("axis", -1 if ctx.opset >= 13 else 1))], r, "axis")[0]
    src, work = x, shape
    if ctx.opset < 13 and axis != r - 1:  # opset < 13: 2-D coerced
        work = (int(np.prod(shape[:axis])), int(np.prod(shape[axis:])))
        src = ctx.emit("reshape", [x], ctx.tmp(x), shape=work)
        axis = 1
    # one-hot of the first maximum: argmax == iota along the axis
    idx = ctx.emit("argmax", [src], ctx.tmp(x), axis=axis, keepdims=True)
    view = [1] * len(work)
    view[axis] = work[axis]
    iota = ctx.add_const(ctx.tmp("iota"), np.arange(work[axis], dtype=np.int64).reshape(view))
    hot = ctx.emit("cast", [ctx.emit("equal", [idx, iota], ctx.tmp(x))], ctx.tmp(x),
                   to=ctx.info(x).dtype)
    if work != shape:
        ctx.emit("reshape", [hot], n.output[0], shape=shape)
    else:
        ctx.emit("identity", [hot], n.output[0])


# -- normalisation --------------------------------------------------------------------------------

@converter("BatchNormalization")
def _batchnorm(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    eps = float(a.get("epsilon", 1e-5))
    if not int(a.get("training_mode", 0)) and not any(o for o in n.output[1:]):
        ctx.emit("batchnorm", list(n.input[:5]), n.output[0], epsilon=eps)
        return
    if not int(a.get("training_mode", 0)) or ctx.opset < 14:
        raise Unsupported("BatchNormalization's running mean/var outputs need training_mode=1 "
                          "(opset 14+)")
    # training mode: normalise with the batch statistics (population variance) and update the
    # running ones, from IR ops
    x, scale, bias, mean_in, var_in = n.input[:5]
    r = ctx.rank(x)
    axes = (0,) + tuple(range(2, r))
    mean, d, inv = _moments(ctx, x, axes, eps, n.output[0])
    y = ctx.emit("mul", [d, inv], ctx.tmp(n.output[0]))
    _channel_affine(ctx, y, scale, bias, n.output[0], r)
    momentum = float(a.get("momentum", 0.9))
    c = ctx.shape(x)[1]
    var = ctx.emit("mean", [ctx.emit("mul", [d, d], ctx.tmp(x))], ctx.tmp(x), axes=axes,
                   keepdims=False)
    for out, cur, run in ((opt_output(n, 1), mean, mean_in), (opt_output(n, 2), var, var_in)):
        if not out:
            continue
        cur = ctx.emit("reshape", [cur], ctx.tmp(out), shape=(c,))
        old = ctx.emit("mul", [run, ctx.scalar(momentum)], ctx.tmp(out))
        ctx.emit("add", [old, ctx.emit("mul", [cur, ctx.scalar(1 - momentum)], ctx.tmp(out))],
                 out)


def opt_output(n: onnx.NodeProto, k: int) -> str:
    return n.output[k] if k < len(n.output) else ""


def _affine_const(ctx: Ctx, name: str, tail: tuple[int, ...], fill: float, what: str) -> str:
    """``name`` broadcast to the normalised shape when constant (``fill`` when absent)."""
    if not name:
        return ctx.add_const(ctx.tmp(what), np.full(tail, fill, np.float32))
    v = ctx.maybe_const(name)
    if v is None:
        return name
    try:
        full = np.broadcast_to(v.astype(np.float32), tail)
    except ValueError:
        raise Unsupported(f"{what} of shape {v.shape} does not broadcast to {tail}") from None
    return ctx.add_const(ctx.tmp(name), np.ascontiguousarray(full))


def _moments(ctx: Ctx, x: str, axes: tuple[int, ...], eps: float, base: str
             ) -> tuple[str, str, str]:
    """(mean, x - mean, 1 / sqrt(var + eps)) over ``axes`` (keepdims) from IR ops."""
    mean = ctx.emit("mean", [x], ctx.tmp(base), axes=axes, keepdims=True)
    d = ctx.emit("sub", [x, mean], ctx.tmp(base))
    var = ctx.emit("mean", [ctx.emit("mul", [d, d], ctx.tmp(base))], ctx.tmp(base), axes=axes,
                   keepdims=True)
    std = ctx.emit("sqrt", [ctx.emit("add", [var, ctx.scalar(eps)], ctx.tmp(base))],
                   ctx.tmp(base))
    return mean, d, ctx.emit("reciprocal", [std], ctx.tmp(base))


@converter("LayerNormalization")
def _layernorm(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    x = n.input[0]
    shape = ctx.shape(x)
    axis = norm_axes([int(a.get("axis", -1))], len(shape), "axis")[0]
    eps = float(a.get("epsilon", 1e-5))
    if int(a.get("stash_type", 1)) != 1:
        raise Unsupported("stash_type other than 1 (float32) is not supported")
    tail = shape[axis:]
    scale = _affine_const(ctx, n.input[1], tail, 1.0, "scale")
    bias = _affine_const(ctx, opt_input(n, 2), tail, 0.0, "bias")
    ctx.emit("layernorm", [x, scale, bias], n.output[0], axis=axis, epsilon=eps)
    extra = [o for o in n.output[1:3] if o]
    if extra:  # Mean / InvStdDev outputs, from IR ops
        mean, _, inv = _moments(ctx, x, tuple(range(axis, len(shape))), eps, n.output[0])
        for o, v in zip(n.output[1:3], (mean, inv)):
            if o:
                ctx.emit("identity", [v], o)


def _normalise(ctx: Ctx, x: str, axis: int, eps: float, out: str) -> str:
    """layernorm over [axis, rank) without affine."""
    tail = ctx.shape(x)[axis:]
    ones = ctx.add_const(ctx.tmp("ones"), np.ones(tail, np.float32))
    zeros = ctx.add_const(ctx.tmp("zeros"), np.zeros(tail, np.float32))
    return ctx.emit("layernorm", [x, ones, zeros], out, axis=axis, epsilon=eps)


def _channel_affine(ctx: Ctx, y: str, scale: str, bias: str, out: str, rank: int) -> None:
    """y * scale + bias with per-channel (axis 1) vectors."""
    view = (-1,) + (1,) * (rank - 2)
    s = ctx.emit("reshape", [scale], ctx.tmp(scale), shape=(ctx.info(scale).size,) +
                 (1,) * (rank - 2)) if not ctx.is_const(scale) else ctx.add_const(
        ctx.tmp(scale), ctx.consts[scale].astype(np.float32).reshape(view))
    b = ctx.emit("reshape", [bias], ctx.tmp(bias), shape=(ctx.info(bias).size,) +
                 (1,) * (rank - 2)) if not ctx.is_const(bias) else ctx.add_const(
        ctx.tmp(bias), ctx.consts[bias].astype(np.float32).reshape(view))
    ctx.emit("add", [ctx.emit("mul", [y, s], ctx.tmp(out)), b], out)


@converter("InstanceNormalization")
def _instance_norm(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    x = n.input[0]
    r = ctx.rank(x)
    if r < 3:
        raise Unsupported(f"InstanceNormalization needs rank >= 3, not {ctx.shape(x)}")
    y = _normalise(ctx, x, 2, float(a.get("epsilon", 1e-5)), ctx.tmp(n.output[0]))
    _channel_affine(ctx, y, n.input[1], n.input[2], n.output[0], r)


@converter("GroupNormalization")
def _group_norm(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    x = n.input[0]
    shape = ctx.shape(x)
    if len(shape) < 3:
        raise Unsupported(f"GroupNormalization needs rank >= 3, not {shape}")
    groups = int(a["num_groups"])
    c = shape[1]
    if groups < 1 or c % groups:
        raise Unsupported(f"num_groups {groups} must divide the {c} channels")
    if int(a.get("stash_type", 1)) != 1:
        raise Unsupported("stash_type other than 1 (float32) is not supported")
    v = ctx.emit("reshape", [x], ctx.tmp(x),
                 shape=(shape[0], groups, int(np.prod(shape[1:])) // groups))
    v = _normalise(ctx, v, 2, float(a.get("epsilon", 1e-5)), ctx.tmp(n.output[0]))
    y = ctx.emit("reshape", [v], ctx.tmp(n.output[0]), shape=shape)
    scale, bias = n.input[1], n.input[2]
    if ctx.info(scale).size == groups and groups != c:  # opset 18: one value per group
        per = c // groups
        for name in (scale, bias):
            ctx.const(name, "GroupNormalization-18 scale/bias")
        scale = ctx.add_const(ctx.tmp(scale), np.repeat(ctx.consts[scale].reshape(-1), per))
        bias = ctx.add_const(ctx.tmp(bias), np.repeat(ctx.consts[bias].reshape(-1), per))
    _channel_affine(ctx, y, scale, bias, n.output[0], len(shape))


@converter("MeanVarianceNormalization")
def _mvn(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    x = n.input[0]
    r = ctx.rank(x)
    axes = tuple(norm_axes(a.get("axes", [0, 2, 3]), r, "axes"))
    # ONNX's function: (x - E[x]) / (sqrt(E[x^2] - E[x]^2) + 1e-9)
    mean = ctx.emit("mean", [x], ctx.tmp(x), axes=axes, keepdims=True)
    ex2 = ctx.emit("mean", [ctx.emit("mul", [x, x], ctx.tmp(x))], ctx.tmp(x), axes=axes,
                   keepdims=True)
    var = ctx.emit("sub", [ex2, ctx.emit("mul", [mean, mean], ctx.tmp(x))], ctx.tmp(x))
    std = ctx.emit("add", [ctx.emit("sqrt", [var], ctx.tmp(x)), ctx.scalar(1e-9)], ctx.tmp(x))
    ctx.emit("div", [ctx.emit("sub", [x, mean], ctx.tmp(x)), std], n.output[0])


@converter("LpNormalization")
def _lp_norm(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    x = n.input[0]
    axis = norm_axes([int(a.get("axis", -1))], ctx.rank(x), "axis")[0]
    p = int(a.get("p", 2))
    if p not in (1, 2):
        raise Unsupported(f"p must be 1 or 2, not {p}")
    norm = ctx.emit("reduce", [x], ctx.tmp(x), fn="l2" if p == 2 else "l1", axes=(axis,),
                    keepdims=True)
    # a zero vector stays zero (onnxruntime): divide by 1 where the norm is 0
    zero = ctx.emit("equal", [norm, ctx.scalar(0.0)], ctx.tmp(x))
    safe = ctx.emit("where", [zero, ctx.scalar(1.0), norm], ctx.tmp(x))
    ctx.emit("div", [x, safe], n.output[0])


# -- resize ---------------------------------------------------------------------------------------

def _floats(ctx: Ctx, name: str, what: str) -> list[float] | None:
    """A constant float input, or None when absent or empty."""
    if not name:
        return None
    v = ctx.const(name, what)
    return [float(x) for x in v.reshape(-1)] if v.size else None


def _emit_resize(ctx: Ctx, n: onnx.NodeProto, x: str, mode: str, coord: str, nearest: str,
                 scales: list[float], out: list[int], roi: list[float], a: dict) -> None:
    if mode not in ("nearest", "linear", "cubic"):
        raise Unsupported(f"mode must be nearest, linear or cubic, not {mode!r}")
    if mode != "nearest" and ctx.info(x).dtype != "float32":
        raise Unsupported(f"{mode} resize of {ctx.info(x).dtype} is not supported")
    if any(d < 1 for d in out):
        raise Unsupported(f"the output shape {out} has an empty dimension")
    ctx.emit("resize", [x], n.output[0], mode=mode, coord=coord, nearest_mode=nearest,
             scales=tuple(scales), out_shape=tuple(out), roi=tuple(roi),
             cubic_coeff_a=float(a.get("cubic_coeff_a", -0.75)),
             exclude_outside=bool(a.get("exclude_outside", 0)),
             extrapolation_value=float(a.get("extrapolation_value", 0.0)),
             antialias=bool(a.get("antialias", 0)))


def _legacy_nearest(scales: Sequence[float]) -> str:
    """onnxruntime's nearest rounding for Upsample and Resize-10: floor when upsampling, ceil
    when downsampling."""
    if all(s >= 1 for s in scales):
        return "floor"
    if all(s <= 1 for s in scales):
        return "ceil"
    raise Unsupported(f"scales {list(scales)} both up- and downsample (legacy nearest mode)")


@converter("Upsample")
def _upsample(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    x = n.input[0]
    shape = ctx.shape(x)
    scales = [float(s) for s in a["scales"]] if "scales" in a else \
        _floats(ctx, opt_input(n, 1), "Upsample scales")
    if scales is None or len(scales) != len(shape):
        raise Unsupported(f"Upsample needs {len(shape)} scales, not {scales}")
    mode = decode(a.get("mode", "nearest"))
    mode = {"bilinear": "linear", "trilinear": "linear"}.get(mode, mode)
    out = [int(np.float32(s) * np.float32(d)) for s, d in zip(scales, shape)]
    nearest = _legacy_nearest(scales) if mode == "nearest" else "round_prefer_floor"
    _emit_resize(ctx, n, x, mode, "asymmetric", nearest, scales, out, [], a)


@converter("Resize")
def _resize(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    x = n.input[0]
    shape = ctx.shape(x)
    r = len(shape)
    mode = decode(a.get("mode", "nearest"))
    if ctx.opset < 11:  # Resize-10: X, scales; Upsample's coordinates
        scales = _floats(ctx, opt_input(n, 1), "Resize scales")
        if scales is None or len(scales) != r:
            raise Unsupported(f"Resize needs {r} scales, not {scales}")
        out = [int(np.float32(s) * np.float32(d)) for s, d in zip(scales, shape)]
        nearest = _legacy_nearest(scales) if mode == "nearest" else "round_prefer_floor"
        _emit_resize(ctx, n, x, mode, "asymmetric", nearest, scales, out, [], a)
        return
    coord = decode(a.get("coordinate_transformation_mode", "half_pixel"))
    nearest = decode(a.get("nearest_mode", "round_prefer_floor"))
    axes = norm_axes(a["axes"], r, "axes") if "axes" in a else list(range(r))
    roi_in = _floats(ctx, opt_input(n, 1), "Resize roi") if coord == "tf_crop_and_resize" \
        else None
    scales_in = _floats(ctx, opt_input(n, 2), "Resize scales")
    sizes_in = None
    if opt_input(n, 3):
        v = ctx.const(n.input[3], "Resize sizes")
        sizes_in = [int(s) for s in v.reshape(-1)] if v.size else None
    if (scales_in is None) == (sizes_in is None):
        raise Unsupported("Resize needs exactly one of scales and sizes")
    given = scales_in if scales_in is not None else sizes_in
    if len(given) != len(axes):
        raise Unsupported(f"{len(given)} scales/sizes for {len(axes)} axes")
    roi = [0.0] * r + [1.0] * r
    if coord == "tf_crop_and_resize":
        if roi_in is None or len(roi_in) != 2 * len(axes):
            raise Unsupported(f"tf_crop_and_resize needs a roi of {2 * len(axes)} values")
        for k, ax in enumerate(axes):
            roi[ax], roi[ax + r] = roi_in[k], roi_in[k + len(axes)]
    scales = [1.0] * r
    out = list(shape)
    if scales_in is not None:
        for k, ax in enumerate(axes):
            s = np.float32(scales_in[k])
            if s <= 0:
                raise Unsupported(f"scales must be positive, not {scales_in}")
            scales[ax] = float(s)  # the roi does not change the output size (onnxruntime)
            out[ax] = int(np.floor(np.float32(shape[ax]) * s))
    else:
        policy = decode(a.get("keep_aspect_ratio_policy", "stretch"))
        f = np.float32
        ratios = [f(sizes_in[k]) / f(shape[ax]) for k, ax in enumerate(axes)]
        if policy in ("not_larger", "not_smaller"):
            common = min(ratios) if policy == "not_larger" else max(ratios)
            ratios = [common] * len(axes)
            sizes_in = [int(np.floor(f(shape[ax]) * common + f(0.5))) for ax in axes]
        elif policy != "stretch":
            raise Unsupported(f"keep_aspect_ratio_policy {policy!r} is not supported")
        for k, ax in enumerate(axes):
            scales[ax], out[ax] = float(ratios[k]), int(sizes_in[k])
    _emit_resize(ctx, n, x, mode, coord, nearest, scales, out, roi, a)


# -- top-k ----------------------------------------------------------------------------------------

@converter("TopK")
def _topk(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    x = n.input[0]
    if "k" in a:
        k = int(a["k"])
    else:
        kv = ctx.const(n.input[1], "TopK K").reshape(-1)
        if kv.size != 1:
            raise Unsupported(f"K must hold one value, not {kv.size}")
        k = int(kv[0])
    axis = norm_axes([int(a.get("axis", -1))], ctx.rank(x), "axis")[0]
    outs = [n.output[0] or ctx.tmp(x), (n.output[1] if len(n.output) > 1 else "")
            or ctx.tmp(x)]
    ctx.emit("topk", [x], outs, k=k, axis=axis, largest=bool(a.get("largest", 1)),
             sorted=bool(a.get("sorted", 1)))

