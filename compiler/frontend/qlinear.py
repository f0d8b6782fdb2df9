"""Converters of pre-quantised ONNX: Q/DQ pairs, QOperator ops and the integer ops.

Everything is imported into one form, the QDQ form of the IR: ``quantize`` / ``dequantize``
nodes around float ops; the model's integer weights and biases fold into float constants that
are exact multiples of the model's scales (the quantiser recovers those scales, so the integers
it computes are the model's). The quantiser (:mod:`tessera.compiler.quant.quantize`) then makes
exactly the tensors the model quantises int8, with the model's own scales and zero points:

* QuantizeLinear / DequantizeLinear (per tensor and per axis; int8 and uint8);
* QLinearConv, QLinearMatMul, QGemm, and the com.microsoft QLinearAdd, QLinearMul,
  QLinearGlobalAveragePool, QLinearAveragePool, QLinearConcat, QLinearSigmoid,
  QLinearLeakyRelu, QLinearSoftmax: ``Q(op(DQ(a), DQ(b), ...))``, which is their definition;
* ConvInteger, MatMulInteger: the integer product of zero-point-shifted operands, computed in
  float32 (exact while every partial sum stays below 2**24) and cast to int32;
* DynamicQuantizeLinear (per-batch scale and zero point computed at run time). Where it only
  feeds ConvInteger / MatMulInteger (and its scale only the graph's Mul), as dynamic
  quantisation uses it: imported as the identity on the float values, with scale 1 and zero
  point 0; the ConvInteger / MatMulInteger it feeds become float layers over those values with
  the model's integer weights, scaled back by the graph's own Mul. The rounding of x to a
  per-batch uint8 grid is not reproduced: such a layer is quantised statically by calibration,
  like a float model's (its integers cannot equal onnxruntime's, whose scale depends on each
  input). Anywhere else (an output is a graph output, or read by another op): its definition,
  computed at run time by float CPU kernels, bit for bit onnxruntime's — ``lo = min(0, min x)``,
  ``hi = max(0, max x)``, ``scale = (hi - lo) / 255`` (1 when ``hi == lo``, as onnxruntime;
  ONNX's reference gives 1/255 there), ``zp = round(clip(-lo / scale, 0, 255))``,
  ``y = clip(round(x / scale) + zp, 0, 255)``, rounding half to even; the uint8 ``y`` and
  ``zp`` are real uint8 tensors (a ConvInteger / MatMulInteger reading them then is
  unsupported: its zero point is computed at run time).

uint8 tensors are carried as int8 (``u - 128``, zero point ``zp - 128``; the real values are
unchanged): uint8 constants are converted at import, a uint8 graph input or a uint8 tensor that
another op reads goes through a ``recenter`` node.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper

from tessera.compiler.frontend.context import Ctx, Unsupported
from tessera.compiler.frontend.registry import CONVERTERS, Converter, converter, domain_of

__all__ = ["QUANT_CONVERTERS", "QUANT_OPS"]

Conv = Converter
_MS = "com.microsoft"


def _conv(*ops: str, domains: tuple[str, ...] = ("", _MS)) -> Callable[[Conv], Conv]:
    """Register through the frontend's converter table, once per (canonical) domain."""
    def deco(fn: Conv) -> Conv:
        for d in dict.fromkeys(domain_of(d) for d in domains):
            converter(*ops, domain=d)(fn)
        return fn
    return deco


# -- helpers ------------------------------------------------------------------------------------

_QTYPES = {onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8"}


def _inp(n: onnx.NodeProto, k: int) -> str:
    return n.input[k] if k < len(n.input) else ""


def _scale(ctx: Ctx, name: str, what: str) -> np.ndarray:
    s = np.asarray(ctx.const(name, what), np.float64).reshape(-1)
    if s.size == 0 or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise Unsupported(f"{what} must be positive and finite, not {s[:4].tolist()}")
    return s.astype(np.float32).astype(np.float64)


def _zero_point(ctx: Ctx, name: str, what: str, dtype: str | None
                ) -> tuple[np.ndarray, str]:
    """(zero point in the int8 carrier, ONNX element type of the quantised tensor)."""
    if not name:  # zero point 0 of the ONNX type: -128 in the int8 carrier of a uint8 tensor
        kind = dtype or "uint8"
        return np.full(1, -128 if kind == "uint8" else 0, np.int64), kind
    z = ctx.const(name, what)
    kind = str(z.dtype)
    if kind not in ("int8", "uint8"):
        raise Unsupported(f"{what} has type {kind}; only int8 and uint8 quantisation is "
                          f"supported")
    z = z.astype(np.int64).reshape(-1)
    return (z - 128 if kind == "uint8" else z), kind


def _attr_or(v: np.ndarray, kind: type):
    return kind(v[0]) if v.size == 1 else [kind(x) for x in v]


def _axis(ctx: Ctx, x: str, a: dict, sizes: int) -> int:
    r = len(ctx.info(x).shape)
    axis = int(a.get("axis", 1))
    if sizes > 1:
        if r == 0:
            raise Unsupported("per-axis parameters need a tensor of rank >= 1")
        axis %= r
        if ctx.info(x).shape[axis] != sizes:
            raise Unsupported(f"per-axis parameters have {sizes} entries but axis {axis} of "
                              f"{list(ctx.info(x).shape)} has {ctx.info(x).shape[axis]}")
    return axis % max(r, 1)


def _i8(ctx: Ctx, name: str) -> str:
    """The int8 carrier of quantised tensor ``name`` (itself when it is int8)."""
    info = ctx.info(name)
    if info.dtype == "int8":
        return name
    if info.dtype != "uint8":
        raise Unsupported(f"tensor {name!r} must be int8 or uint8, not {info.dtype}")
    carrier = f"{name}:i8"
    if carrier in ctx.infos:
        return carrier
    return ctx.emit("recenter", [name], carrier, to="int8")


def _dq(ctx: Ctx, x: str, scale: np.ndarray, zp: np.ndarray, axis: int, out: str) -> str:
    """``(x - zp) * scale`` of int8-carried ``x`` (a float constant when ``x`` is one)."""
    return ctx.emit("dequantize", [x], out, scale=_attr_or(scale, float),
                    zero_point=_attr_or(zp, int), axis=axis)


def _dq_input(ctx: Ctx, n: onnx.NodeProto, k: int, a: dict | None = None) -> str:
    """Dequantise the QOperator input triple starting at input ``k`` (x, scale, zero point)."""
    x = _inp(n, k)
    s = _scale(ctx, _inp(n, k + 1), f"input {k + 1} (scale of {x!r})")
    z, _ = _zero_point(ctx, _inp(n, k + 2), f"input {k + 2} (zero point of {x!r})",
                       ctx.info(x).dtype)
    xi = _i8(ctx, x)
    axis = _axis(ctx, xi, a or {}, max(s.size, z.size))
    return _dq(ctx, xi, s, z, axis, ctx.tmp(f"{x}:dq"))


def _q(ctx: Ctx, x: str, scale: np.ndarray, zp: np.ndarray, dtype: str, axis: int,
       out: str) -> str:
    """Quantise float ``x`` into ONNX tensor ``out`` of element type ``dtype``."""
    carrier = out if dtype == "int8" else f"{out}:i8"
    ctx.emit("quantize", [x], carrier, scale=_attr_or(scale, float),
             zero_point=_attr_or(zp, int), axis=axis)
    if dtype == "uint8":
        ctx.emit("recenter", [carrier], out, to="uint8")
    return out


def _q_output(ctx: Ctx, n: onnx.NodeProto, y: str, ks: int, kz: int) -> None:
    s = _scale(ctx, _inp(n, ks), f"input {ks} (output scale)")
    z, dtype = _zero_point(ctx, _inp(n, kz), f"input {kz} (output zero point)", None)
    if s.size != 1 or z.size != 1:
        raise Unsupported("per-axis output quantisation is not supported")
    _q(ctx, y, s, z, dtype, 1, n.output[0])


def _float_op(ctx: Ctx, n: onnx.NodeProto, op_type: str, inputs: list[str], out: str,
              a: dict) -> None:
    """Run the float converter of ``op_type`` on ``inputs`` into ``out``."""
    attrs = {k: v for k, v in a.items() if k not in ("channels_last", "opset")}
    node = helper.make_node(op_type, inputs, [out], name=n.name, **attrs)
    CONVERTERS[("", op_type)](ctx, node, attrs)


# -- QuantizeLinear / DequantizeLinear ----------------------------------------------------------

def _check_plain(a: dict, op: str) -> None:
    if int(a.get("block_size", 0)):
        raise Unsupported(f"{op} with block_size (blocked quantisation) is not supported")
    if "output_dtype" in a and int(a["output_dtype"]) not in (0, *_QTYPES, 1):
        raise Unsupported(f"{op} output_dtype {a['output_dtype']} is not supported")


@_conv("QuantizeLinear", domains=("",))
def _c_quantize(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    _check_plain(a, "QuantizeLinear")
    x = n.input[0]
    if ctx.info(x).dtype != "float32":
        raise Unsupported(f"QuantizeLinear input must be float32, not {ctx.info(x).dtype}")
    s = _scale(ctx, _inp(n, 1), "y_scale")
    out_t = _QTYPES.get(int(a.get("output_dtype", 0)))
    z, dtype = _zero_point(ctx, _inp(n, 2), "y_zero_point", out_t)
    axis = _axis(ctx, x, a, max(s.size, z.size))
    _q(ctx, x, s, z, dtype, axis, n.output[0])


@_conv("DequantizeLinear", domains=("",))
def _c_dequantize(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    _check_plain(a, "DequantizeLinear")
    x = n.input[0]
    if _dynamic(ctx, x):  # scale 1, zero point 0: the float values themselves
        ctx.emit("identity", [x], n.output[0])
        return
    dt = ctx.info(x).dtype
    s = _scale(ctx, _inp(n, 1), "x_scale")
    if dt == "int32":
        if _inp(n, 2) and np.any(ctx.const(_inp(n, 2), "x_zero_point") != 0):
            raise Unsupported("an int32 DequantizeLinear must have zero point 0")
        z, xi = np.zeros(1, np.int64), x
    else:
        z, _ = _zero_point(ctx, _inp(n, 2), "x_zero_point", dt)
        xi = _i8(ctx, x)
    axis = _axis(ctx, xi, a, max(s.size, z.size))
    _dq(ctx, xi, s, z, axis, n.output[0])


# -- QOperator ops -----------------------------------------------------------------------------

def _dq_weight(ctx: Ctx, n: onnx.NodeProto, k: int, axis: int) -> tuple[str, np.ndarray]:
    """Dequantise the weight at input ``k`` (scale k+1, zero point k+2, per-axis along
    ``axis``); returns the float tensor and its scale."""
    w = _inp(n, k)
    s = _scale(ctx, _inp(n, k + 1), f"input {k + 1} (weight scale)")
    z, _ = _zero_point(ctx, _inp(n, k + 2), f"input {k + 2} (weight zero point)",
                       ctx.info(w).dtype)
    wi = _i8(ctx, w)
    size = max(s.size, z.size)
    if size > 1:
        axis = _axis(ctx, wi, {"axis": axis}, size)
    return _dq(ctx, wi, s, z, axis, ctx.tmp(f"{w}:dq")), s


def _dq_bias(ctx: Ctx, b: str, scale: np.ndarray, channels: int) -> str:
    if not b:
        return ""
    if ctx.info(b).dtype != "int32":
        raise Unsupported(f"bias {b!r} must be int32, not {ctx.info(b).dtype}")
    s = np.broadcast_to(scale, (channels,)) if scale.size == 1 else scale
    return _dq(ctx, b, s, np.zeros(1, np.int64), 0, ctx.tmp(f"{b}:dq"))


@_conv("QLinearConv", domains=("",))
def _c_qlinearconv(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    x = _dq_input(ctx, n, 0)
    sx = _scale(ctx, _inp(n, 1), "x_scale")
    w, sw = _dq_weight(ctx, n, 3, 0)
    o = ctx.info(w).shape[0]
    bias = _dq_bias(ctx, _inp(n, 8), (sx[0] * sw).astype(np.float32).astype(np.float64), o)
    y = ctx.tmp(f"{n.output[0]}:f")
    _float_op(ctx, n, "Conv", [x, w] + ([bias] if bias else []), y, a)
    _q_output(ctx, n, y, 6, 7)


@_conv("QLinearMatMul", domains=("",))
def _c_qlinearmatmul(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    x = _dq_input(ctx, n, 0)
    b = _dq_weight(ctx, n, 3, 1)[0] if _inp(n, 3) in ctx.consts else _dq_input(ctx, n, 3)
    y = ctx.tmp(f"{n.output[0]}:f")
    _float_op(ctx, n, "MatMul", [x, b], y, {})
    _q_output(ctx, n, y, 6, 7)


@_conv("QGemm", domains=(_MS,))
def _c_qgemm(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    x = _dq_input(ctx, n, 0)
    tb = int(a.get("transB", 0))
    w, sw = _dq_weight(ctx, n, 3, 0 if tb else 1)
    sx = _scale(ctx, _inp(n, 1), "a_scale")
    o = ctx.info(w).shape[0 if tb else 1]
    bias = _dq_bias(ctx, _inp(n, 6), (sx[0] * sw).astype(np.float32).astype(np.float64), o)
    y = ctx.tmp(f"{n.output[0]}:f") if _inp(n, 7) else n.output[0]
    attrs = {k: a[k] for k in ("alpha", "transA", "transB") if k in a}
    _float_op(ctx, n, "Gemm", [x, w] + ([bias] if bias else []), y, attrs)
    if _inp(n, 7):  # else the output is float
        _q_output(ctx, n, y, 7, 8)


def _binary(op_type: str) -> Conv:
    def conv(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
        x = _dq_input(ctx, n, 0)
        z = _dq_input(ctx, n, 3)
        y = ctx.tmp(f"{n.output[0]}:f")
        _float_op(ctx, n, op_type, [x, z], y, {})
        _q_output(ctx, n, y, 6, 7)
    return conv


_conv("QLinearAdd", domains=(_MS,))(_binary("Add"))
_conv("QLinearMul", domains=(_MS,))(_binary("Mul"))


def _unary(op_type: str) -> Conv:
    def conv(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
        if int(a.get("channels_last", 0)):
            raise Unsupported("channels_last is not supported")
        x = _dq_input(ctx, n, 0)
        y = ctx.tmp(f"{n.output[0]}:f")
        _float_op(ctx, n, op_type, [x], y, a)
        _q_output(ctx, n, y, 3, 4)
    return conv


for _op, _float in (("QLinearGlobalAveragePool", "GlobalAveragePool"),
                    ("QLinearAveragePool", "AveragePool"), ("QLinearSigmoid", "Sigmoid"),
                    ("QLinearLeakyRelu", "LeakyRelu"), ("QLinearSoftmax", "Softmax")):
    _conv(_op, domains=(_MS,))(_unary(_float))


@_conv("QLinearConcat", domains=(_MS,))
def _c_qlinearconcat(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    if (len(n.input) - 2) % 3 or len(n.input) < 5:
        raise Unsupported("QLinearConcat needs Y_scale, Y_zero_point and (X, scale, zero "
                          "point) triples")
    xs = [_dq_input(ctx, n, k) for k in range(2, len(n.input), 3)]
    y = ctx.tmp(f"{n.output[0]}:f")
    _float_op(ctx, n, "Concat", xs, y, {"axis": int(a["axis"])})
    _q_output(ctx, n, y, 0, 1)


# -- integer ops --------------------------------------------------------------------------------

_DYNAMIC_READERS = {"ConvInteger", "MatMulInteger", "DequantizeLinear"}


@_conv("DynamicQuantizeLinear", domains=("",))
def _c_dynamic_quantize(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    x = n.input[0]
    if ctx.info(x).dtype != "float32":
        raise Unsupported(f"DynamicQuantizeLinear input must be float32, not "
                          f"{ctx.info(x).dtype}")
    y, scale, zp = (list(n.output) + ["", "", ""])[:3]
    # the float identity is right only where ConvInteger/MatMulInteger (and the scale's Mul)
    # consume the outputs; anything else reads the uint8 codes: compute them
    allowed = {y: _DYNAMIC_READERS, zp: _DYNAMIC_READERS, scale: {"Mul", "DequantizeLinear"}}
    if any(o and (o in ctx.graph_outputs or set(ctx.readers.get(o, [])) - ok)
           for o, ok in allowed.items()):
        _dynamic_quantize_values(ctx, x, y, scale, zp)
        return
    ctx.emit("identity", [x], y)
    marks = _dynamic_marks(ctx)
    marks.add(y)
    if scale:
        ctx.add_const(scale, np.float32(1.0))
    if zp:
        ctx.add_const(zp, np.uint8(0))
        marks.add(zp)


def _dynamic_quantize_values(ctx: Ctx, x: str, y: str, scale: str, zp: str) -> None:
    """DynamicQuantizeLinear's definition on float ops (module docstring): ``y`` and ``zp``
    uint8, ``scale`` float32, all computed at run time."""
    axes = tuple(range(ctx.rank(x)))
    zero = ctx.scalar(0.0)

    def reduced(fn: str, bound: str) -> str:
        r = ctx.emit("reduce", [x], ctx.tmp(f"{x}:{fn}"), fn=fn, axes=axes, keepdims=False) \
            if axes else x
        return ctx.emit(fn, [r, zero], ctx.tmp(f"{x}:{bound}"))

    lo, hi = reduced("min", "lo"), reduced("max", "hi")
    span = ctx.emit("sub", [hi, lo], ctx.tmp(f"{x}:span"))
    ratio = ctx.emit("div", [span, ctx.scalar(255.0)], ctx.tmp(f"{x}:ratio"))
    flat = ctx.emit("equal", [span, zero], ctx.tmp(f"{x}:flat"))
    s = ctx.emit("where", [flat, ctx.scalar(1.0), ratio], scale or ctx.tmp(f"{x}:scale"))
    z0 = ctx.emit("sub", [zero, ctx.emit("div", [lo, s], ctx.tmp(f"{x}:lo_s"))],
                  ctx.tmp(f"{x}:zp0"))
    zf = ctx.emit("round", [ctx.emit("clip", [z0], ctx.tmp(f"{x}:zpc"), min=0.0, max=255.0)],
                  ctx.tmp(f"{x}:zpf"))
    if zp:
        ctx.emit("cast", [zf], zp, to="uint8")
    if y:
        q = ctx.emit("round", [ctx.emit("div", [x, s], ctx.tmp(f"{x}:xs"))],
                     ctx.tmp(f"{x}:q"))
        q = ctx.emit("clip", [ctx.emit("add", [q, zf], ctx.tmp(f"{x}:qz"))],
                     ctx.tmp(f"{x}:qc"), min=0.0, max=255.0)
        ctx.emit("cast", [q], y, to="uint8")


def _dynamic_marks(ctx: Ctx) -> set[str]:
    """The tensors of this import standing for DynamicQuantizeLinear outputs."""
    marks = getattr(ctx, "_dynamic_quantised", None)
    if marks is None:
        marks = set()
        ctx._dynamic_quantised = marks  # type: ignore[attr-defined]
    return marks


def _dynamic(ctx: Ctx, name: str) -> bool:
    return name in _dynamic_marks(ctx)


def _int_operand(ctx: Ctx, x: str, zp_name: str, what: str) -> str:
    """Float32 ``x - zero_point`` of an int8/uint8 operand (zero point constant, per tensor or
    per axis 0/1 as ConvInteger/MatMulInteger allow); a DynamicQuantizeLinear output is used as
    the float it stands for."""
    if _dynamic(ctx, x):
        if zp_name and not _dynamic(ctx, zp_name):
            raise Unsupported(f"{what} is dynamically quantised but its zero point "
                              f"{zp_name!r} is not that DynamicQuantizeLinear's")
        return x
    dt = ctx.info(x).dtype
    if zp_name and zp_name not in ctx.consts:
        raise Unsupported(f"{what} zero point {zp_name!r} is computed at run time: only a "
                          f"DynamicQuantizeLinear that feeds nothing but ConvInteger / "
                          f"MatMulInteger is supported there (its codes are then not computed)",
                          tensor=zp_name)
    z, _ = _zero_point(ctx, zp_name, f"{what} zero point", dt)
    xi = _i8(ctx, x)
    axis = 0 if z.size > 1 else 1
    if z.size > 1:
        axis = _axis(ctx, xi, {"axis": 0}, z.size)
    return _dq(ctx, xi, np.ones(1), z, axis, ctx.tmp(f"{x}:int"))


@_conv("ConvInteger", domains=("",))
def _c_convinteger(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    x = _int_operand(ctx, n.input[0], _inp(n, 2), "x")
    w = _int_operand(ctx, n.input[1], _inp(n, 3), "w")
    _integer_result(ctx, n, "Conv", [x, w], a, _dynamic(ctx, n.input[0]))


@_conv("MatMulInteger", domains=("",))
def _c_matmulinteger(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    x = _int_operand(ctx, n.input[0], _inp(n, 2), "A")
    w = _int_operand(ctx, n.input[1], _inp(n, 3), "B")
    _integer_result(ctx, n, "MatMul", [x, w], {}, _dynamic(ctx, n.input[0]))


def _integer_result(ctx: Ctx, n: onnx.NodeProto, op_type: str, ins: list[str], a: dict,
                    dynamic: bool) -> None:
    """The int32 result of ConvInteger / MatMulInteger; with a dynamically quantised input the
    float product itself (its consumer is the graph's Cast to float and scale Mul)."""
    if dynamic:
        _float_op(ctx, n, op_type, ins, n.output[0], a)
        return
    y = ctx.tmp(f"{n.output[0]}:f")
    _float_op(ctx, n, op_type, ins, y, a)
    ctx.emit("cast", [y], n.output[0], to="int32")


# The converters this module registered (a view for tests and reports; the importer reads
# the frontend's CONVERTERS table).
QUANT_CONVERTERS: dict[tuple[str, str], Conv] = {
    key: fn for key, fn in CONVERTERS.items() if fn.__module__ == __name__}
QUANT_OPS = tuple(sorted({op for _, op in QUANT_CONVERTERS}))

