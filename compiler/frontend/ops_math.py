"""ONNX converters: elementwise arithmetic, activations, comparisons, logic, casts, reductions.

Every converter emits through :meth:`Ctx.emit`, which folds the node when its inputs are all
constants (that is how shape arithmetic — Mul/Div/Mod/Floor/Equal/Where on shapes — folds).
"""

from __future__ import annotations

import numpy as np
import onnx

from tessera.compiler.frontend.common import axes_arg, norm_axes, opt_input, same_dtype_inputs
from tessera.compiler.frontend.context import ONNX_DTYPES, Ctx, Unsupported, onnx_dtype_name
from tessera.compiler.frontend.registry import converter

__all__: list[str] = []

_BINARY = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div", "Pow": "pow", "Mod": "mod",
           "PRelu": "prelu", "Equal": "equal", "Less": "less", "Greater": "greater",
           "LessOrEqual": "less_equal", "GreaterOrEqual": "greater_equal", "And": "and",
           "Or": "or", "Xor": "xor"}


@converter(*_BINARY)
def _binary(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    if len(n.input) != 2:
        raise Unsupported(f"{n.op_type} needs two inputs, not {len(n.input)}")
    op = _BINARY[n.op_type]
    ins = list(n.input)
    if op == "pow":  # the result has the base's dtype
        base, exp = ctx.info(ins[0]).dtype, ctx.info(ins[1]).dtype
        if base != "float32" and exp == "float32":  # integer base, float exponent
            fb = ctx.emit("cast", [ins[0]], ctx.tmp(ins[0]), to="float32")
            p = ctx.emit("pow", [fb, ins[1]], ctx.tmp(n.output[0]))
            ctx.emit("cast", [p], n.output[0], to=base)
            return
        if exp != base:
            if ctx.is_const(ins[1]):
                ins[1] = ctx.add_const(ctx.tmp(ins[1]), ctx.consts[ins[1]].astype(base))
            else:
                ins[1] = ctx.emit("cast", [ins[1]], ctx.tmp(ins[1]), to=base)
    else:
        ins = same_dtype_inputs(ctx, ins, n.op_type)
    attrs = {"fmod": int(a.get("fmod", 0))} if op == "mod" else {}
    ctx.emit(op, ins, n.output[0], **attrs)


@converter("Sum", "Max", "Min", "Mean")
def _variadic(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    ins = same_dtype_inputs(ctx, [i for i in n.input if i], n.op_type)
    op = {"Sum": "add", "Max": "max", "Min": "min", "Mean": "add"}[n.op_type]
    if len(ins) == 1 and n.op_type != "Mean":
        ctx.emit("identity", ins, n.output[0])
        return
    acc = ins[0]
    for k, other in enumerate(ins[1:]):
        last = k == len(ins) - 2 and n.op_type != "Mean"
        acc = ctx.emit(op, [acc, other], n.output[0] if last else ctx.tmp(n.output[0]))
    if n.op_type == "Mean":
        if ctx.info(acc).dtype != "float32":
            raise Unsupported("Mean of integers is not supported")
        ctx.emit("mul", [acc, ctx.scalar(1.0 / len(ins))], n.output[0])


# ONNX unary op -> (IR op, {attribute: default})
_UNARY = {
    "Relu": ("relu", {}), "Sigmoid": ("sigmoid", {}), "Tanh": ("tanh", {}), "Exp": ("exp", {}),
    "Sqrt": ("sqrt", {}), "Neg": ("neg", {}), "Abs": ("abs", {}), "Log": ("log", {}),
    "Reciprocal": ("reciprocal", {}), "Floor": ("floor", {}), "Ceil": ("ceil", {}),
    "Round": ("round", {}), "Erf": ("erf", {}), "Sign": ("sign", {}), "Sin": ("sin", {}),
    "Cos": ("cos", {}), "Softplus": ("softplus", {}), "Softsign": ("softsign", {}),
    "HardSigmoid": ("hard_sigmoid", {"alpha": 0.2, "beta": 0.5}),
    "HardSwish": ("hard_swish", {}), "Mish": ("mish", {}), "Swish": ("silu", {"alpha": 1.0}),
    "Elu": ("elu", {"alpha": 1.0}),
    "Selu": ("selu", {"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875}),
    "Celu": ("celu", {"alpha": 1.0}), "ThresholdedRelu": ("thresholded_relu", {"alpha": 1.0}),
    "LeakyRelu": ("leaky_relu", {"alpha": 0.01}), "Not": ("not", {}), "IsNaN": ("isnan", {}),
    "IsInf": ("isinf", {"detect_negative": 1, "detect_positive": 1}),
}
_FLOAT_ONLY = {"sigmoid", "tanh", "exp", "sqrt", "log", "reciprocal", "erf", "sin", "cos",
               "softplus", "softsign", "hard_sigmoid", "hard_swish", "mish", "silu", "elu",
               "selu", "celu", "thresholded_relu", "leaky_relu", "isnan", "isinf", "gelu"}


@converter(*_UNARY)
def _unary(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    op, defaults = _UNARY[n.op_type]
    attrs = {k: type(v)(a.get(k, v)) for k, v in defaults.items()}
    if op in _FLOAT_ONLY and ctx.info(n.input[0]).dtype != "float32" \
            and not ctx.is_const(n.input[0]):
        raise Unsupported(f"{n.op_type} of {ctx.info(n.input[0]).dtype} is not supported "
                          f"(float only)")
    ctx.emit(op, [n.input[0]], n.output[0], **attrs)


@converter("Gelu")
def _gelu(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    approx = a.get("approximate", "none")
    approx = approx.decode() if isinstance(approx, bytes) else approx
    if approx not in ("none", "tanh"):
        raise Unsupported(f"approximate must be 'none' or 'tanh', not {approx!r}")
    ctx.emit("gelu", [n.input[0]], n.output[0], approximate=approx)


@converter("Clip")
def _clip(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    lo, hi = float(a.get("min", -np.inf)), float(a.get("max", np.inf))
    if opt_input(n, 1):
        lo = float(ctx.const(n.input[1], "Clip min").reshape(-1)[0])
    if opt_input(n, 2):
        hi = float(ctx.const(n.input[2], "Clip max").reshape(-1)[0])
    if ctx.info(n.input[0]).dtype != "float32" and not ctx.is_const(n.input[0]):
        info = np.iinfo(ctx.info(n.input[0]).dtype)
        lo, hi = max(lo, float(info.min)), min(hi, float(info.max))
    ctx.emit("clip", [n.input[0]], n.output[0], min=lo, max=hi)


@converter("Where")
def _where(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    c = n.input[0]
    if ctx.info(c).dtype != "bool":
        raise Unsupported(f"Where condition must be bool, not {ctx.info(c).dtype}")
    x, y = same_dtype_inputs(ctx, [n.input[1], n.input[2]], "Where")
    ctx.emit("where", [c, x, y], n.output[0])


def _cast_to(ctx: Ctx, n: onnx.NodeProto, to: str) -> None:
    x = n.input[0]
    if ctx.info(x).dtype == to:
        ctx.emit("identity", [x], n.output[0])
    else:
        ctx.emit("cast", [x], n.output[0], to=to)


@converter("Cast")
def _cast(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    to = ONNX_DTYPES.get(int(a["to"]))
    if to is None:
        raise Unsupported(f"cast to {onnx_dtype_name(a['to'])} is not supported")
    _cast_to(ctx, n, to)


@converter("CastLike")
def _cast_like(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    _cast_to(ctx, n, ctx.info(n.input[1]).dtype)


# ONNX reduction -> the IR's reduce fn ("mean" is the mean op)
_REDUCE = {"ReduceSum": "sum", "ReduceMean": "mean", "ReduceMax": "max", "ReduceMin": "min",
           "ReduceProd": "prod", "ReduceL1": "l1", "ReduceL2": "l2",
           "ReduceSumSquare": "sum_square", "ReduceLogSum": "log_sum",
           "ReduceLogSumExp": "log_sum_exp"}


@converter(*_REDUCE)
def _reduce(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    x = n.input[0]
    r = ctx.rank(x)
    axes = axes_arg(ctx, n, a, n.op_type)
    keep = bool(a.get("keepdims", 1))
    if axes is None:
        if int(a.get("noop_with_empty_axes", 0)):
            ctx.emit("identity", [x], n.output[0])
            return
        axes = list(range(r))
    axes = norm_axes(axes, r, "axes")
    fn = _REDUCE[n.op_type]
    if fn == "mean":
        if not axes:
            ctx.emit("identity", [x], n.output[0])
        elif ctx.info(x).dtype != "float32" and not ctx.is_const(x):
            raise Unsupported(f"ReduceMean of {ctx.info(x).dtype} is not supported")
        else:
            ctx.emit("mean", [x], n.output[0], axes=tuple(axes), keepdims=keep)
        return
    ctx.emit("reduce", [x], n.output[0], fn=fn, axes=tuple(axes), keepdims=keep)


@converter("ArgMax", "ArgMin")
def _argmax(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    r = ctx.rank(n.input[0])
    axis = norm_axes([int(a.get("axis", 0))], r, "axis")[0]
    ctx.emit("argmax", [n.input[0]], n.output[0], fn="max" if n.op_type == "ArgMax" else "min",
             axis=axis, keepdims=bool(a.get("keepdims", 1)),
             select_last_index=bool(a.get("select_last_index", 0)))
