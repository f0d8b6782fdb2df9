"""The op table of the IR: every op's attribute defaults and its shape/dtype inference.

An inference function takes the node, its input :class:`~tessera.compiler.ir.tensor.TensorInfo`
list (None for an absent optional input) and the graph, and returns the output infos; it raises
:class:`~tessera.errors.CompileError` naming the node for inputs that do not fit the op.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from tessera.compiler.ir.tensor import DTYPES, TensorInfo, blocked_shape
from tessera.errors import CompileError

if TYPE_CHECKING:
    from tessera.compiler.ir.graph import Graph, Node

__all__ = ["OpSpec", "OPS", "conv_out_size", "pool_out_size", "broadcast_shape", "InferFn",
           "define", "op_error", "need_inputs", "infer_same", "infer_broadcast"]

# infer(node, input infos (None when absent), graph) -> output infos
InferFn = Callable[..., list[TensorInfo]]


@dataclass(frozen=True)
class OpSpec:
    """An op of the IR: attribute defaults and shape/dtype inference."""

    name: str
    infer: InferFn
    defaults: Mapping[str, Any] = field(default_factory=dict)
    doc: str = ""


OPS: dict[str, OpSpec] = {}


def _op(name: str, doc: str = "", **defaults: Any) -> Callable[[InferFn], InferFn]:
    def deco(fn: InferFn) -> InferFn:
        OPS[name] = OpSpec(name, fn, defaults, doc)
        return fn
    return deco


def _err(node: Node, msg: str) -> CompileError:
    return CompileError(f"node {node.name!r} ({node.op}): {msg}")


def _need(node: Node, ins: list[TensorInfo | None], *idx: int) -> None:
    for i in idx:
        if i >= len(ins) or ins[i] is None:
            raise _err(node, f"input {i} is required")


def conv_out_size(size: int, k: int, stride: int, pad0: int, pad1: int, dil: int = 1,
                  ceil: bool = False) -> int:
    eff = dil * (k - 1) + 1
    span = size + pad0 + pad1 - eff
    out = (-(-span // stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + pad0:
        out -= 1  # the last window must start inside the input or its leading pad
    return out


pool_out_size = conv_out_size


def broadcast_shape(node: Node, *shapes: tuple[int, ...]) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise _err(node, f"shapes {' and '.join(map(str, shapes))} do not broadcast") from None


_FLOAT_EPI = dict(act="none", act_min=0.0, act_max=6.0)


@_op("conv2d", "y = act(conv(x, w, groups) + b [+ residual]); x NCHW, w OIHW, pads (t,l,b,r)",
     strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1, **_FLOAT_EPI)
def _conv2d(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0, 1)
    x, w = ins[0], ins[1]
    if len(x.shape) != 4 or len(w.shape) != 4:
        raise _err(node, f"conv2d needs 4-D input and weight, got {x.shape} and {w.shape}")
    n, c, h, wd = x.shape
    o, ci, kh, kw = w.shape
    grp = int(node.attrs["groups"])
    if grp < 1 or c % grp or o % grp or ci * grp != c:
        raise _err(node, f"input channels {c}, weight {w.shape} and groups {grp} disagree")
    (sh, sw), (dh, dw) = node.attrs["strides"], node.attrs["dilations"]
    pt, pl, pb, pr = node.attrs["pads"]
    oh = conv_out_size(h, kh, sh, pt, pb, dh)
    ow = conv_out_size(wd, kw, sw, pl, pr, dw)
    if oh < 1 or ow < 1:
        raise _err(node, f"kernel {kh}x{kw} does not fit input {h}x{wd} with the given pads")
    if len(ins) > 2 and ins[2] is not None and ins[2].shape != (o,):
        raise _err(node, f"bias must have shape ({o},), not {ins[2].shape}")
    out = (n, o, oh, ow)
    if len(ins) > 3 and ins[3] is not None and ins[3].shape != out:
        raise _err(node, f"residual must have shape {out}, not {ins[3].shape}")
    return [TensorInfo(out, x.dtype)]


@_op("dense", "y = act(x @ w.T + b [+ residual]); x [N,K], w [M,K]", **_FLOAT_EPI)
def _dense(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0, 1)
    x, w = ins[0], ins[1]
    if len(x.shape) != 2 or len(w.shape) != 2 or x.shape[1] != w.shape[1]:
        raise _err(node, f"dense needs x [N,K] and w [M,K], got {x.shape} and {w.shape}")
    if len(ins) > 2 and ins[2] is not None and ins[2].shape != (w.shape[0],):
        raise _err(node, f"bias must have shape ({w.shape[0]},), not {ins[2].shape}")
    out = (x.shape[0], w.shape[0])
    if len(ins) > 3 and ins[3] is not None and ins[3].shape != out:
        raise _err(node, f"residual must have shape {out}, not {ins[3].shape}")
    return [TensorInfo(out, x.dtype)]


@_op("matmul", "numpy matmul semantics (batched, broadcast)")
def _matmul(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0, 1)
    a, b = ins[0].shape, ins[1].shape
    if len(a) < 1 or len(b) < 1:
        raise _err(node, "matmul operands must have rank >= 1")
    a2 = (1,) + a if len(a) == 1 else a
    b2 = b + (1,) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise _err(node, f"inner dimensions of {a} and {b} differ")
    batch = broadcast_shape(node, a2[:-2], b2[:-2])
    out = batch + (a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return [TensorInfo(out, ins[0].dtype)]


def _binary(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0, 1)
    return [TensorInfo(broadcast_shape(node, ins[0].shape, ins[1].shape), ins[0].dtype)]


for _name in ("add", "sub", "mul", "div"):
    _op(_name, f"elementwise {_name} with numpy broadcasting, then act",
        **_FLOAT_EPI)(_binary)
for _name in ("max", "min", "pow"):
    _op(_name, f"elementwise {_name} with numpy broadcasting")(_binary)


def _unary(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0)
    return [TensorInfo(ins[0].shape, ins[0].dtype)]


_op("relu", "max(x, 0)")(_unary)
_op("clip", "min(max(x, min), max)", min=-np.inf, max=np.inf)(_unary)
_op("sigmoid", "1 / (1 + exp(-x))")(_unary)
_op("tanh", "tanh(x)")(_unary)
_op("exp", "exp(x)")(_unary)
_op("sqrt", "sqrt(x)")(_unary)
_op("neg", "-x")(_unary)
_op("leaky_relu", "x if x >= 0 else alpha * x", alpha=0.01)(_unary)
_op("identity", "y = x")(_unary)
_op("softmax", "softmax along one axis", axis=-1)(_unary)
_op("lrn", "local response normalisation across channels (ONNX LRN)",
    size=5, alpha=1e-4, beta=0.75, bias=1.0)(_unary)


@_op("batchnorm", "inference batch norm: (x - mean) / sqrt(var + eps) * scale + bias on axis 1",
     epsilon=1e-5)
def _batchnorm(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0, 1, 2, 3, 4)
    c = ins[0].shape[1] if len(ins[0].shape) > 1 else None
    for i in range(1, 5):
        if ins[i].shape != (c,):
            raise _err(node, f"parameter {i} must have shape ({c},), not {ins[i].shape}")
    return [TensorInfo(ins[0].shape, ins[0].dtype)]


def _pool(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0)
    x = ins[0]
    if len(x.shape) != 4:
        raise _err(node, f"pooling needs a 4-D NCHW input, got {x.shape}")
    kh, kw = node.attrs["kernel"]
    sh, sw = node.attrs["strides"]
    dh, dw = node.attrs.get("dilations", (1, 1))
    pt, pl, pb, pr = node.attrs["pads"]
    ceil = bool(node.attrs["ceil_mode"])
    oh = pool_out_size(x.shape[2], kh, sh, pt, pb, dh, ceil)
    ow = pool_out_size(x.shape[3], kw, sw, pl, pr, dw, ceil)
    if oh < 1 or ow < 1:
        raise _err(node, f"window {kh}x{kw} does not fit input {x.shape[2:]}")
    return [TensorInfo((x.shape[0], x.shape[1], oh, ow), x.dtype, x.scale)]


_op("maxpool", "max over (dilated) windows; pads count as -inf", kernel=(2, 2),
    strides=(2, 2), pads=(0, 0, 0, 0), ceil_mode=False, dilations=(1, 1))(_pool)
_op("avgpool", "mean over (dilated) windows", kernel=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0),
    ceil_mode=False, count_include_pad=False, dilations=(1, 1))(_pool)


def _global_pool(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0)
    x = ins[0]
    if len(x.shape) < 3:
        raise _err(node, f"global pooling needs rank >= 3, got {x.shape}")
    return [TensorInfo(x.shape[:2] + (1,) * (len(x.shape) - 2), x.dtype)]


_op("global_avgpool", "mean over all spatial axes (keeps them as size 1)")(_global_pool)
_op("global_maxpool", "max over all spatial axes (keeps them as size 1)")(_global_pool)


@_op("mean", "mean over axes", axes=(-1,), keepdims=True)
def _mean(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0)
    shape = ins[0].shape
    axes = {a % len(shape) for a in node.attrs["axes"]}
    out = tuple(1 if i in axes else d for i, d in enumerate(shape)
                if node.attrs["keepdims"] or i not in axes)
    return [TensorInfo(out, ins[0].dtype)]


@_op("flatten", "reshape to [prod(shape[:axis]), prod(shape[axis:])]", axis=1)
def _flatten(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0)
    s = ins[0].shape
    a = node.attrs["axis"] % (len(s) + 1) if node.attrs["axis"] < 0 else node.attrs["axis"]
    return [TensorInfo((int(np.prod(s[:a])), int(np.prod(s[a:]))), ins[0].dtype, ins[0].scale)]


@_op("reshape", "static reshape (shape fully known, no -1 or 0)", shape=())
def _reshape(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0)
    shape = tuple(int(d) for d in node.attrs["shape"])
    if any(d < 0 for d in shape) or int(np.prod(shape)) != ins[0].size:
        raise _err(node, f"cannot reshape {ins[0].shape} to {shape}")
    return [TensorInfo(shape, ins[0].dtype, ins[0].scale)]


@_op("transpose", "permute axes", perm=())
def _transpose(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0)
    s = ins[0].shape
    perm = tuple(node.attrs["perm"]) or tuple(reversed(range(len(s))))
    if sorted(perm) != list(range(len(s))):
        raise _err(node, f"perm {perm} is not a permutation of {len(s)} axes")
    return [TensorInfo(tuple(s[p] for p in perm), ins[0].dtype, ins[0].scale)]


@_op("concat", "concatenate along axis", axis=1)
def _concat(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    if not ins or any(i is None for i in ins):
        raise _err(node, "concat needs at least one input, all present")
    r = len(ins[0].shape)
    ax = node.attrs["axis"] % r
    for i in ins[1:]:
        if len(i.shape) != r or any(a != b for k, (a, b) in enumerate(zip(i.shape, ins[0].shape))
                                    if k != ax):
            raise _err(node, f"input shapes {[i.shape for i in ins]} differ off axis {ax}")
    shape = list(ins[0].shape)
    shape[ax] = sum(i.shape[ax] for i in ins)
    return [TensorInfo(tuple(shape), ins[0].dtype)]


@_op("slice", "static slice: per-axis starts/ends/steps (numpy semantics, clamped)",
     starts=(), ends=(), axes=(), steps=())
def _slice(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0)
    shape = list(ins[0].shape)
    a = node.attrs
    steps = a["steps"] or (1,) * len(a["starts"])
    for s, e, ax, st in zip(a["starts"], a["ends"], a["axes"], steps):
        shape[ax] = len(range(*slice(s, e, st).indices(shape[ax])))
    return [TensorInfo(tuple(shape), ins[0].dtype, ins[0].scale)]


@_op("pad", "pad (mode constant with value, reflect, edge or wrap); pads = begins of every "
     "axis then ends (ONNX order), negative pads crop", pads=(), value=0.0, mode="constant")
def _pad(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0)
    s = ins[0].shape
    p = node.attrs["pads"]
    if len(p) != 2 * len(s):
        raise _err(node, f"pads must have {2 * len(s)} entries, not {len(p)}")
    shape = tuple(d + p[i] + p[i + len(s)] for i, d in enumerate(s))
    if min(shape) < 0:
        raise _err(node, f"pads {p} make a negative dimension")
    return [TensorInfo(shape, ins[0].dtype, ins[0].scale)]


@_op("cast", "convert dtype", to="float32")
def _cast(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0)
    if node.attrs["to"] not in DTYPES:
        raise _err(node, f"to must be one of {DTYPES}, not {node.attrs['to']!r}")
    return [TensorInfo(ins[0].shape, node.attrs["to"])]


# -- quantised ops (integer semantics are in compiler.reference) ------------------------------

def _check_axis_params(node: Node, x: TensorInfo) -> float | None:
    """The per-tensor scale of a quantize/dequantize node (None when per axis), after checking
    that per-axis scale / zero point lists match the size of ``axis``."""
    s = np.asarray(node.attrs["scale"], np.float64).reshape(-1)
    z = np.asarray(node.attrs["zero_point"]).reshape(-1)
    n = max(s.size, z.size)
    if s.size == 0 or z.size == 0 or not np.issubdtype(z.dtype, np.integer):
        raise _err(node, "scale must be a non-empty list of numbers and zero_point of integers")
    if n > 1:
        r = len(x.shape)
        axis = int(node.attrs["axis"])
        if r == 0 or not -r <= axis < r:
            raise _err(node, f"axis {axis} is out of range for shape {x.shape}")
        c = x.shape[axis % r]
        if s.size not in (1, c) or z.size not in (1, c):
            raise _err(node, f"per-axis scale ({s.size}) and zero_point ({z.size}) must have "
                             f"{c} entries (the size of axis {axis})")
    return float(s[0]) if n == 1 else None


@_op("quantize", "float -> int8: clip(round_half_even(x / scale) + zero_point, lo, hi); scale "
     "and zero_point are numbers or lists along axis", scale=1.0, zero_point=0, axis=1,
     lo=-128, hi=127)
def _quantize(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0)
    return [TensorInfo(ins[0].shape, "int8", _check_axis_params(node, ins[0]))]


@_op("dequantize", "int -> float: (x - zero_point) * scale (numbers or lists along axis)",
     scale=1.0, zero_point=0, axis=1)
def _dequantize(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0)
    _check_axis_params(node, ins[0])
    return [TensorInfo(ins[0].shape, "float32")]


@_op("recenter", "int8 <-> uint8 carrier of a quantised tensor: x + 128 to uint8, x - 128 to int8",
     to="int8")
def _recenter(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0)
    to = node.attrs["to"]
    want = {"int8": "uint8", "uint8": "int8"}.get(to)
    if want is None or ins[0].dtype != want:
        raise _err(node, f"recenter converts uint8 to int8 or int8 to uint8, not {ins[0].dtype} "
                         f"to {to}")
    return [TensorInfo(ins[0].shape, to)]


def _qout(node: Node, shape: tuple[int, ...]) -> list[TensorInfo]:
    return [TensorInfo(shape, "int8", float(node.attrs["out_scale"]))]


_QEPI = dict(epilogue=None, out_scale=1.0)
# An accelerator layer reads and writes SPEC §2 blocked tensors once layouts are assigned
# (``layout="blocked"``); ``in_shape`` is then the logical NCHW / NC shape of its input.
_QLAYOUT = dict(layout="nchw", block=16, batch=1, in_shape=())



def _logical(node: Node, ins: list, infer: InferFn, g: Graph) -> list[TensorInfo]:
    """Inference of a (possibly blocked) accelerator layer: its logical output, or that
    output's blocked shape when ``layout == "blocked"``."""
    a = node.attrs
    if a["layout"] == "nchw":
        return infer(node, ins, g)
    if a["layout"] != "blocked":
        raise _err(node, f"layout must be 'nchw' or 'blocked', not {a['layout']!r}")
    _need(node, ins, 0)
    blk, bat = int(a["block"]), int(a["batch"])
    x = tuple(a["in_shape"])
    if len(x) not in (2, 4) or ins[0].shape != blocked_shape(x, blk, bat):
        raise _err(node, f"blocked input {ins[0].shape} does not pack in_shape {x}")
    plain = [TensorInfo(x, ins[0].dtype, ins[0].scale)] + list(ins[1:3])
    out = infer(node, plain, g)[0]
    if len(ins) > 3 and ins[3] is not None:
        if ins[3].shape != blocked_shape(out.shape, blk, bat):
            raise _err(node, f"blocked residual must have shape "
                             f"{blocked_shape(out.shape, blk, bat)}, not {ins[3].shape}")
    return [replace(out, shape=blocked_shape(out.shape, blk, bat))]


@_op("qconv2d", "int8 conv: acc = conv(x, w) + b (int32), then the requant epilogue",
     strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1, **_QEPI, **_QLAYOUT)
def _qconv2d(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    return _logical(node, ins, lambda n, i, gr: _qout(n, _conv2d(n, i, gr)[0].shape), g)


@_op("qdense", "int8 dense: acc = x @ w.T + b (int32), then the requant epilogue", **_QEPI,
     **_QLAYOUT)
def _qdense(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    return _logical(node, ins, lambda n, i, gr: _qout(n, _dense(n, i, gr)[0].shape), g)


@_op("qadd", "int8 add of two rescaled branches, then the requant epilogue", **_QEPI)
def _qadd(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0, 1)
    if ins[0].shape != ins[1].shape:
        raise _err(node, f"qadd needs equal shapes, got {ins[0].shape} and {ins[1].shape}")
    return _qout(node, ins[0].shape)


@_op("requant", "int8/int32 -> int8 through the requant epilogue", **_QEPI)
def _requant(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0)
    return _qout(node, ins[0].shape)


@_op("qavgpool", "int8 window sum (int32) then the requant epilogue (divisor folded in)",
     kernel=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0), ceil_mode=False,
     count_include_pad=False, **_QEPI)
def _qavgpool(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    return _qout(node, _pool(node, ins, g)[0].shape)


@_op("qglobal_avgpool", "int8 spatial sum (int32) then the requant epilogue", **_QEPI)
def _qglobal_avgpool(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    return _qout(node, _global_pool(node, ins, g)[0].shape)


# -- layout ops -------------------------------------------------------------------------------

@_op("pack", "NCHW -> (N/B, ceil(C/BLK), H, W, B, BLK), zero padded (SPEC §2); 2-D NC -> "
     "(N/B, ceil(C/BLK), B, BLK)", block=16, batch=1)
def _pack(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0)
    s = ins[0].shape
    if len(s) not in (2, 4):
        raise _err(node, f"pack needs a 2-D or 4-D tensor, got {s}")
    packed = blocked_shape(s, int(node.attrs["block"]), int(node.attrs["batch"]))
    return [TensorInfo(packed, ins[0].dtype, ins[0].scale)]


@_op("unpack", "inverse of pack, cropping to the logical shape", shape=())
def _unpack(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0)
    return [TensorInfo(tuple(node.attrs["shape"]), ins[0].dtype, ins[0].scale)]


# Public names of the helpers the op-family modules (ops_*.py) build their specs with.
define = _op
op_error = _err
need_inputs = _need
infer_same = _unary
infer_broadcast = _binary
