"""The ONNX operator converters: each turns one ONNX node into IR nodes (or constants)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from tessera.compiler.frontend.context import ONNX_DTYPES, Unsupported
from tessera.compiler.frontend.context import Ctx as _Ctx
from tessera.compiler.frontend.context import decode as _decode
from tessera.compiler.ir import TensorInfo

__all__ = ["CONVERTERS", "SUPPORTED_ONNX_OPS"]

Conv = Callable[[_Ctx, onnx.NodeProto, dict], None]
_CONVERTERS: dict[str, Conv] = {}


def _conv(*ops: str) -> Callable[[Conv], Conv]:
    def deco(fn: Conv) -> Conv:
        for op in ops:
            _CONVERTERS[op] = fn
        return fn
    return deco


def _spatial_pads(ctx: _Ctx, n: onnx.NodeProto, a: dict, in_hw: Sequence[int],
                  kernel: Sequence[int], strides: Sequence[int],
                  dil: Sequence[int]) -> tuple[int, int, int, int]:
    auto = _decode(a.get("auto_pad", "NOTSET"))
    if auto in ("NOTSET", ""):
        p = list(a.get("pads", [0, 0, 0, 0]))
        if len(p) != 4:
            raise Unsupported(f"pads {p} are not 2-D")
        return (p[0], p[1], p[2], p[3])
    if auto == "VALID":
        return (0, 0, 0, 0)
    pads = []
    for size, k, s, d in zip(in_hw, kernel, strides, dil):
        out = -(-size // s)
        total = max(0, (out - 1) * s + d * (k - 1) + 1 - size)
        small, big = total // 2, total - total // 2
        pads.append((small, big) if auto == "SAME_UPPER" else (big, small))
    return (pads[0][0], pads[1][0], pads[0][1], pads[1][1])


def _rank4(ctx: _Ctx, name: str, what: str) -> TensorInfo:
    ti = ctx.info(name)
    if len(ti.shape) != 4:
        raise Unsupported(f"only 2-D {what} on NCHW tensors is supported, input has shape "
                          f"{ti.shape}")
    return ti


@_conv("Conv")
def _c_conv(ctx: _Ctx, n: onnx.NodeProto, a: dict) -> None:
    x = _rank4(ctx, n.input[0], "convolution")
    w = ctx.info(n.input[1])
    k = list(a.get("kernel_shape", w.shape[2:]))
    strides = list(a.get("strides", [1, 1]))
    dil = list(a.get("dilations", [1, 1]))
    pads = _spatial_pads(ctx, n, a, x.shape[2:], k, strides, dil)
    b = n.input[2] if len(n.input) > 2 else ""
    ctx.emit("conv2d", [n.input[0], n.input[1], b], n.output[0], strides=tuple(strides),
             pads=pads, dilations=tuple(dil), groups=int(a.get("group", 1)))


@_conv("Gemm")
def _c_gemm(ctx: _Ctx, n: onnx.NodeProto, a: dict) -> None:
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    ta, tb = int(a.get("transA", 0)), int(a.get("transB", 0))
    x = n.input[0]
    if ta:
        x = ctx.emit("transpose", [x], ctx.tmp(x), perm=(1, 0))
    bconst = ctx.maybe_const(n.input[1])
    c = n.input[2] if len(n.input) > 2 else ""
    if bconst is None:
        bb = n.input[1]
        if tb:
            bb = ctx.emit("transpose", [bb], ctx.tmp(bb), perm=(1, 0))
        y = ctx.emit("matmul", [x, bb], ctx.tmp(n.output[0]))
        if alpha != 1.0:
            y = ctx.emit("mul", [y, ctx.add_const(ctx.tmp("alpha"), np.float32(alpha))],
                         ctx.tmp(n.output[0]))
        if c:
            cc = c if beta == 1.0 else ctx.emit(
                "mul", [c, ctx.add_const(ctx.tmp("beta"), np.float32(beta))], ctx.tmp(c))
            y = ctx.emit("add", [y, cc], ctx.tmp(n.output[0]))
        ctx.emit("identity", [y], n.output[0])
        return
    w = (bconst if tb else bconst.T).astype(np.float32) * np.float32(alpha)
    m = w.shape[0]
    wname = ctx.add_const(ctx.tmp(n.input[1]), w)
    bias = ""
    if c:
        cv = ctx.maybe_const(c)
        if cv is not None and cv.size in (1, m) and (cv.ndim <= 1 or cv.shape[-1] == cv.size):
            bias = ctx.add_const(ctx.tmp(c), np.broadcast_to(
                cv.reshape(-1).astype(np.float32) * np.float32(beta), (m,)).copy())
        else:
            y = ctx.emit("dense", [x, wname], ctx.tmp(n.output[0]))
            cc = c if beta == 1.0 else ctx.emit(
                "mul", [c, ctx.add_const(ctx.tmp("beta"), np.float32(beta))], ctx.tmp(c))
            ctx.emit("add", [y, cc], n.output[0])
            return
    ctx.emit("dense", [x, wname, bias], n.output[0])


@_conv("MatMul")
def _c_matmul(ctx: _Ctx, n: onnx.NodeProto, a: dict) -> None:
    b = ctx.maybe_const(n.input[1])
    if b is not None and b.ndim == 2 and len(ctx.info(n.input[0]).shape) == 2:
        w = ctx.add_const(ctx.tmp(n.input[1]), np.ascontiguousarray(b.T))
        ctx.emit("dense", [n.input[0], w], n.output[0])
    else:
        ctx.emit("matmul", [n.input[0], n.input[1]], n.output[0])


_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Max": "max", "Min": "min",
           "Pow": "pow"}


@_conv(*_BINARY, "Sum")
def _c_binary(ctx: _Ctx, n: onnx.NodeProto, a: dict) -> None:
    op = _BINARY.get(n.op_type, "add")
    ins = list(n.input)
    if len(ins) == 1:
        ctx.emit("identity", ins, n.output[0])
        return
    if n.op_type not in ("Sum", "Max", "Min") and len(ins) != 2:
        raise Unsupported(f"{n.op_type} needs two inputs")
    acc = ins[0]
    for k, other in enumerate(ins[1:]):
        out = n.output[0] if k == len(ins) - 2 else ctx.tmp(n.output[0])
        acc = ctx.emit(op, [acc, other], out)


_UNARY = {"Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Exp": "exp", "Sqrt": "sqrt",
          "Neg": "neg", "Identity": "identity", "Dropout": "identity"}


@_conv(*_UNARY)
def _c_unary(ctx: _Ctx, n: onnx.NodeProto, a: dict) -> None:
    if n.op_type == "Dropout" and len(n.output) > 1 and n.output[1]:
        # inference mode: nothing is dropped, the mask is all true
        ctx.add_const(n.output[1], np.ones(ctx.info(n.input[0]).shape, dtype=bool))
    ctx.emit(_UNARY[n.op_type], [n.input[0]], n.output[0])


@_conv("LeakyRelu")
def _c_leaky(ctx: _Ctx, n: onnx.NodeProto, a: dict) -> None:
    ctx.emit("leaky_relu", [n.input[0]], n.output[0], alpha=float(a.get("alpha", 0.01)))


@_conv("Clip")
def _c_clip(ctx: _Ctx, n: onnx.NodeProto, a: dict) -> None:
    lo, hi = a.get("min", -np.inf), a.get("max", np.inf)
    if len(n.input) > 1 and n.input[1]:
        lo = float(ctx.const(n.input[1], "Clip min"))
    if len(n.input) > 2 and n.input[2]:
        hi = float(ctx.const(n.input[2], "Clip max"))
    ctx.emit("clip", [n.input[0]], n.output[0], min=float(lo), max=float(hi))


@_conv("MaxPool", "AveragePool")
def _c_pool(ctx: _Ctx, n: onnx.NodeProto, a: dict) -> None:
    x = _rank4(ctx, n.input[0], "pooling")
    if len(n.output) > 1 and n.output[1]:
        raise Unsupported("the MaxPool Indices output is not supported")
    k = list(a["kernel_shape"])
    strides = list(a.get("strides", [1, 1]))
    if any(d != 1 for d in a.get("dilations", [1, 1])):
        raise Unsupported("dilated pooling is not supported")
    pads = _spatial_pads(ctx, n, a, x.shape[2:], k, strides, [1, 1])
    extra = {} if n.op_type == "MaxPool" else {
        "count_include_pad": bool(a.get("count_include_pad", 0))}
    ctx.emit("maxpool" if n.op_type == "MaxPool" else "avgpool", [n.input[0]], n.output[0],
             kernel=tuple(k), strides=tuple(strides), pads=pads,
             ceil_mode=bool(a.get("ceil_mode", 0)), **extra)


@_conv("GlobalAveragePool", "GlobalMaxPool")
def _c_gpool(ctx: _Ctx, n: onnx.NodeProto, a: dict) -> None:
    op = "global_avgpool" if n.op_type == "GlobalAveragePool" else "global_maxpool"
    ctx.emit(op, [n.input[0]], n.output[0])


@_conv("LRN")
def _c_lrn(ctx: _Ctx, n: onnx.NodeProto, a: dict) -> None:
    ctx.emit("lrn", [n.input[0]], n.output[0], size=int(a["size"]),
             alpha=float(a.get("alpha", 1e-4)), beta=float(a.get("beta", 0.75)),
             bias=float(a.get("bias", 1.0)))


@_conv("Softmax")
def _c_softmax(ctx: _Ctx, n: onnx.NodeProto, a: dict) -> None:
    shape = ctx.info(n.input[0]).shape
    r = len(shape)
    axis = int(a.get("axis", -1 if ctx.opset >= 13 else 1)) % r
    if ctx.opset >= 13 or axis == r - 1:
        ctx.emit("softmax", [n.input[0]], n.output[0], axis=axis)
        return
    flat = (int(np.prod(shape[:axis])), int(np.prod(shape[axis:])))  # opset < 13: 2-D coerced
    t = ctx.emit("reshape", [n.input[0]], ctx.tmp(n.output[0]), shape=flat)
    t = ctx.emit("softmax", [t], ctx.tmp(n.output[0]), axis=1)
    ctx.emit("reshape", [t], n.output[0], shape=shape)


@_conv("BatchNormalization")
def _c_bn(ctx: _Ctx, n: onnx.NodeProto, a: dict) -> None:
    if int(a.get("training_mode", 0)) or any(o for o in n.output[1:]):
        raise Unsupported("training-mode BatchNormalization is not supported")
    ctx.emit("batchnorm", list(n.input[:5]), n.output[0], epsilon=float(a.get("epsilon", 1e-5)))


@_conv("Flatten")
def _c_flatten(ctx: _Ctx, n: onnx.NodeProto, a: dict) -> None:
    r = len(ctx.info(n.input[0]).shape)
    ctx.emit("flatten", [n.input[0]], n.output[0], axis=int(a.get("axis", 1)) % (r + 1))


def _resolve_shape(src: tuple[int, ...], spec: Sequence[int], allowzero: bool) -> tuple[int, ...]:
    out = [int(d) for d in spec]
    for i, d in enumerate(out):
        if d == 0 and not allowzero:
            if i >= len(src):
                raise Unsupported(f"shape {list(spec)} copies dimension {i} that {src} lacks")
            out[i] = src[i]
    if out.count(-1) > 1:
        raise Unsupported(f"shape {list(spec)} has more than one -1")
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1]))
        total = int(np.prod(src))
        if known == 0 or total % known:
            raise Unsupported(f"cannot reshape {src} to {list(spec)}")
        out[out.index(-1)] = total // known
    return tuple(out)


@_conv("Reshape")
def _c_reshape(ctx: _Ctx, n: onnx.NodeProto, a: dict) -> None:
    spec = a["shape"] if "shape" in a else ctx.const(n.input[1], "Reshape shape").tolist()
    shape = _resolve_shape(ctx.info(n.input[0]).shape, spec, bool(a.get("allowzero", 0)))
    ctx.emit("reshape", [n.input[0]], n.output[0], shape=shape)


def _axes(ctx: _Ctx, n: onnx.NodeProto, a: dict, what: str) -> list[int] | None:
    if "axes" in a:
        return [int(x) for x in a["axes"]]
    if len(n.input) > 1 and n.input[1]:
        return [int(x) for x in ctx.const(n.input[1], f"{what} axes").reshape(-1)]
    return None


@_conv("Squeeze", "Unsqueeze")
def _c_squeeze(ctx: _Ctx, n: onnx.NodeProto, a: dict) -> None:
    shape = list(ctx.info(n.input[0]).shape)
    axes = _axes(ctx, n, a, n.op_type)
    if n.op_type == "Squeeze":
        r = len(shape)
        drop = {x % r for x in axes} if axes is not None else {i for i, d in enumerate(shape)
                                                               if d == 1}
        if any(shape[i] != 1 for i in drop):
            raise Unsupported(f"cannot squeeze non-1 axes {sorted(drop)} of {tuple(shape)}")
        new = [d for i, d in enumerate(shape) if i not in drop]
    else:
        if axes is None:
            raise Unsupported("Unsqueeze needs axes")
        r = len(shape) + len(axes)
        new = shape
        for ax in sorted(x % r for x in axes):
            new.insert(ax, 1)
    ctx.emit("reshape", [n.input[0]], n.output[0], shape=tuple(new))


@_conv("Transpose")
def _c_transpose(ctx: _Ctx, n: onnx.NodeProto, a: dict) -> None:
    r = len(ctx.info(n.input[0]).shape)
    perm = tuple(int(p) for p in a.get("perm", range(r - 1, -1, -1)))
    ctx.emit("transpose", [n.input[0]], n.output[0], perm=perm)


@_conv("Concat")
def _c_concat(ctx: _Ctx, n: onnx.NodeProto, a: dict) -> None:
    r = len(ctx.info(n.input[0]).shape)
    ins = [i for i in n.input if i and ctx.info(i).size > 0] or [n.input[0]]
    ctx.emit("concat", ins, n.output[0], axis=int(a["axis"]) % r)


@_conv("Slice")
def _c_slice(ctx: _Ctx, n: onnx.NodeProto, a: dict) -> None:
    shape = ctx.info(n.input[0]).shape
    if "starts" in a:
        starts, ends = list(a["starts"]), list(a["ends"])
        axes = list(a.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts = ctx.const(n.input[1], "Slice starts").tolist()
        ends = ctx.const(n.input[2], "Slice ends").tolist()
        axes = ctx.const(n.input[3]).tolist() if len(n.input) > 3 and n.input[3] \
            else list(range(len(starts)))
        steps = ctx.const(n.input[4]).tolist() if len(n.input) > 4 and n.input[4] \
            else [1] * len(starts)
    big = 1 << 62
    clamp = [(max(min(s, big), -big), max(min(e, big), -big)) for s, e in zip(starts, ends)]
    ctx.emit("slice", [n.input[0]], n.output[0], starts=tuple(int(s) for s, _ in clamp),
             ends=tuple(int(e) for _, e in clamp),
             axes=tuple(int(x) % len(shape) for x in axes), steps=tuple(int(s) for s in steps))


@_conv("Pad")
def _c_pad(ctx: _Ctx, n: onnx.NodeProto, a: dict) -> None:
    mode = _decode(a.get("mode", "constant"))
    if mode != "constant":
        raise Unsupported(f"Pad mode {mode!r} is not supported (only 'constant')")
    r = len(ctx.info(n.input[0]).shape)
    if "pads" in a:
        pads, value = list(a["pads"]), float(a.get("value", 0.0))
    else:
        pads = ctx.const(n.input[1], "Pad pads").tolist()
        value = float(ctx.const(n.input[2]).reshape(-1)[0]) if len(n.input) > 2 and n.input[2] \
            else 0.0
        if len(n.input) > 3 and n.input[3]:
            axes = [int(x) % r for x in ctx.const(n.input[3], "Pad axes")]
            full = [0] * (2 * r)
            for k, ax in enumerate(axes):
                full[ax], full[ax + r] = pads[k], pads[k + len(axes)]
            pads = full
    if any(p < 0 for p in pads):
        raise Unsupported("negative pads (cropping) are not supported")
    ctx.emit("pad", [n.input[0]], n.output[0], pads=tuple(int(p) for p in pads), value=value)


@_conv("ReduceMean")
def _c_reducemean(ctx: _Ctx, n: onnx.NodeProto, a: dict) -> None:
    r = len(ctx.info(n.input[0]).shape)
    axes = _axes(ctx, n, a, "ReduceMean")
    if axes is None:
        if int(a.get("noop_with_empty_axes", 0)):
            ctx.emit("identity", [n.input[0]], n.output[0])
            return
        axes = list(range(r))
    ctx.emit("mean", [n.input[0]], n.output[0], axes=tuple(x % r for x in axes),
             keepdims=bool(a.get("keepdims", 1)))


@_conv("Cast")
def _c_cast(ctx: _Ctx, n: onnx.NodeProto, a: dict) -> None:
    to = ONNX_DTYPES.get(int(a["to"]))
    if to is None:
        raise Unsupported(f"cast to {onnx.TensorProto.DataType.Name(int(a['to']))} is not "
                          f"supported")
    ctx.emit("cast", [n.input[0]], n.output[0], to=to)


# -- constant-only ops (shape arithmetic) -------------------------------------------------------

@_conv("Constant")
def _c_constant(ctx: _Ctx, n: onnx.NodeProto, a: dict) -> None:
    if "value" in a:
        v = numpy_helper.to_array(a["value"])
    elif "value_float" in a:
        v = np.array(a["value_float"], np.float32)
    elif "value_floats" in a:
        v = np.array(a["value_floats"], np.float32)
    elif "value_int" in a:
        v = np.array(a["value_int"], np.int64)
    elif "value_ints" in a:
        v = np.array(a["value_ints"], np.int64)
    else:
        raise Unsupported(f"Constant attribute {list(a)} is not supported")
    ctx.add_const(n.output[0], v)


@_conv("ConstantOfShape")
def _c_constant_of_shape(ctx: _Ctx, n: onnx.NodeProto, a: dict) -> None:
    shape = ctx.const(n.input[0], "ConstantOfShape shape").astype(np.int64).tolist()
    v = numpy_helper.to_array(a["value"]) if "value" in a else np.zeros(1, np.float32)
    ctx.add_const(n.output[0], np.full(shape, v.reshape(-1)[0], dtype=v.dtype))


@_conv("Shape")
def _c_shape(ctx: _Ctx, n: onnx.NodeProto, a: dict) -> None:
    s = np.array(ctx.info(n.input[0]).shape, np.int64)
    r = len(s)
    start = int(a.get("start", 0))
    end = int(a.get("end", r))
    ctx.add_const(n.output[0], s[slice(start, end)])


@_conv("Size")
def _c_size(ctx: _Ctx, n: onnx.NodeProto, a: dict) -> None:
    ctx.add_const(n.output[0], np.array(ctx.info(n.input[0]).size, np.int64))


@_conv("Gather")
def _c_gather(ctx: _Ctx, n: onnx.NodeProto, a: dict) -> None:
    data = ctx.const(n.input[0], "Gather data")
    idx = ctx.const(n.input[1], "Gather indices")
    ctx.add_const(n.output[0], np.take(data, idx, axis=int(a.get("axis", 0))))


@_conv("Range")
def _c_range(ctx: _Ctx, n: onnx.NodeProto, a: dict) -> None:
    s, e, d = (ctx.const(i, "Range operand") for i in n.input[:3])
    ctx.add_const(n.output[0], np.arange(s, e, d).astype(s.dtype))


@_conv("Equal", "Less", "Greater", "Where", "Not", "ReduceProd", "Floor", "Ceil")
def _c_const_only(ctx: _Ctx, n: onnx.NodeProto, a: dict) -> None:
    args = [ctx.const(i, f"{n.op_type} operand") for i in n.input]
    fn = {"Equal": np.equal, "Less": np.less, "Greater": np.greater, "Where": np.where,
          "Not": np.logical_not, "Floor": np.floor, "Ceil": np.ceil}.get(n.op_type)
    if n.op_type == "ReduceProd":
        ctx.add_const(n.output[0], np.prod(args[0], keepdims=bool(a.get("keepdims", 1))))
    else:
        ctx.add_const(n.output[0], fn(*args))


SUPPORTED_ONNX_OPS = tuple(sorted(_CONVERTERS))
CONVERTERS = _CONVERTERS
