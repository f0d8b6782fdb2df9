"""CPU lowering of the IR op families (math, nn, shape, rnn): each IR node becomes one or a few
kernels of :mod:`tessera.runtime.cpu.kernels` with the semantics of
:mod:`tessera.compiler.refops`.

:data:`PLANNERS` maps an IR op to ``planner(p) -> output slots``, where ``p`` is the node's plan
being built by :func:`tessera.compiler.lower.cpu.make_cpu_op` (its ``node``, ``input(k)``,
``shape(slot)``, ``dtype(slot)``, ``one(kernel, attrs, args)`` and ``kernel(...)``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tessera.compiler.ir.ops_math import COMPARISONS, LOGIC, UNARY_FLOAT
from tessera.runtime.cpu.resize import MAX_TAPS, axis_table

__all__ = ["PLANNERS"]

Planner = Callable[[Any], list[int]]
PLANNERS: dict[str, Planner] = {}

_KERNEL_OF = {
    "abs": "Abs", "log": "Log", "reciprocal": "Reciprocal", "floor": "Floor", "ceil": "Ceil",
    "round": "Round", "erf": "Erf", "sign": "Sign", "sin": "Sin", "cos": "Cos",
    "softplus": "Softplus", "softsign": "Softsign", "hard_sigmoid": "HardSigmoid",
    "hard_swish": "HardSwish", "silu": "Swish", "mish": "Mish", "gelu": "Gelu", "elu": "Elu",
    "selu": "Selu", "celu": "Celu", "thresholded_relu": "ThresholdedRelu",
    "equal": "Equal", "less": "Less", "greater": "Greater", "less_equal": "LessOrEqual",
    "greater_equal": "GreaterOrEqual", "and": "And", "or": "Or", "xor": "Xor", "not": "Not",
    "isnan": "IsNaN", "isinf": "IsInf", "where": "Where", "prelu": "PRelu", "mod": "Mod",
}
_EXACT_ON_INTS = ("floor", "ceil", "round")  # integers are their own floor/ceil/round


def _plain(p: Any) -> list[int]:
    """Kernel ``_KERNEL_OF[op]`` on every input, the node's attributes passed through."""
    n = p.node
    if n.op in _EXACT_ON_INTS and p.dtype(p.input(0)) != "float32":
        return [p.one("Identity", {}, [p.input(0)])]
    attrs = {k: v for k, v in n.attrs.items() if k in _ATTRS.get(n.op, ())}
    return [p.one(_KERNEL_OF[n.op], attrs, [p.input(k) for k in range(len(n.inputs))])]


_ATTRS = {name: tuple(defaults) for name, defaults in UNARY_FLOAT.items()}
_ATTRS.update(mod=("fmod",), isinf=("detect_negative", "detect_positive"))
for _op in (*UNARY_FLOAT, *COMPARISONS, *LOGIC, "not", "isnan", "isinf", "where", "prelu",
            "mod"):
    PLANNERS[_op] = _plain


def _reduce(p: Any) -> list[int]:
    a = p.node.attrs
    return [p.one("Reduce", {"fn": a["fn"], "axes": [int(v) for v in a["axes"]],
                             "keepdims": int(bool(a["keepdims"]))}, [p.input(0)])]


def _argmax(p: Any) -> list[int]:
    a = p.node.attrs
    op = "ArgMax" if a["fn"] == "max" else "ArgMin"
    return [p.one(op, {"axis": int(a["axis"]), "keepdims": int(bool(a["keepdims"])),
                       "select_last_index": int(bool(a["select_last_index"]))},
                  [p.input(0)])]


def _conv_transpose(p: Any) -> list[int]:
    a = p.node.attrs
    bias = p.input(2, False)
    attrs = {"group": int(a["groups"]), "strides": [int(v) for v in a["strides"]],
             "pads": [int(v) for v in a["pads"]], "dilations": [int(v) for v in a["dilations"]],
             "output_padding": [int(v) for v in a["output_padding"]]}
    return [p.one("ConvTranspose", attrs, [p.input(0), p.input(1)] +
                  ([bias] if bias is not None else []))]


def _resize(p: Any) -> list[int]:
    """One Resize kernel over every axis, or (when the taps per output element would exceed
    the kernel's limit: wide antialiasing filters) one kernel per resized axis in turn — resize
    is separable, so the result is the same up to float32 rounding."""
    a = p.node.attrs
    x = p.input(0)
    shape, out = list(p.shape(x)), [int(v) for v in a["out_shape"]]
    r = len(shape)
    scales = [float(v) for v in a["scales"]]
    roi = [float(v) for v in a["roi"]] or [0.0] * r + [1.0] * r

    def attrs_for(axes: set[int], in_shape: list[int]) -> dict[str, Any]:
        at = {"mode": a["mode"], "coord": a["coord"], "nearest_mode": a["nearest_mode"],
              "scales": [scales[d] if d in axes else 1.0 for d in range(r)],
              "out_shape": [out[d] if d in axes else in_shape[d] for d in range(r)],
              "cubic_coeff_a": float(a["cubic_coeff_a"]),
              "exclude_outside": int(bool(a["exclude_outside"])),
              "extrapolation_value": float(a["extrapolation_value"])}
        if a["coord"] == "tf_crop_and_resize":
            at["roi"] = [roi[d] if d in axes else 0.0 for d in range(r)] + \
                [roi[d + r] if d in axes else 1.0 for d in range(r)]
        if a["antialias"]:
            at["antialias"] = 1
        return at

    taps = 1
    moved = []
    for d in range(r):
        t = axis_table(a["mode"], a["coord"], a["nearest_mode"], shape[d], out[d], scales[d],
                       (roi[d], roi[d + r]), float(a["cubic_coeff_a"]),
                       bool(a["exclude_outside"]), bool(a["antialias"]))
        if not t.identity:
            moved.append(d)
            taps *= t.idx.shape[1]
    if taps <= MAX_TAPS or len(moved) < 2:
        return [p.one("Resize", attrs_for(set(range(r)), shape), [x])]
    cur = shape
    for d in moved:
        x = p.one("Resize", attrs_for({d}, cur), [x])
        cur = list(p.shape(x))
    return [x]


def _layernorm(p: Any) -> list[int]:
    a = p.node.attrs
    x = p.input(0)
    shape = p.shape(x)
    axis = int(a["axis"]) % len(shape)
    tail = list(shape[axis:])
    args = [x]
    for k in (1, 2):
        s = p.input(k, False)
        if s is None:
            raise p.err(f"input {k} (scale/bias) must be present on the CPU path")
        if tuple(p.shape(s)) != tuple(tail):
            s = p.one("Expand", {"shape": tail}, [s])
        args.append(s)
    return [p.one("LayerNorm", {"axis": axis, "epsilon": float(a["epsilon"])}, args)]


def _topk(p: Any) -> list[int]:
    a = p.node.attrs
    return p.kernel("TopK", {"k": int(a["k"]), "axis": int(a["axis"]),
                             "largest": int(bool(a["largest"])),
                             "sorted": int(bool(a["sorted"]))}, [p.input(0)])


def _maxpool_indices(p: Any) -> list[int]:
    a = p.node.attrs
    attrs = {"kernel_shape": [int(v) for v in a["kernel"]],
             "strides": [int(v) for v in a["strides"]], "pads": [int(v) for v in a["pads"]],
             "dilations": [int(v) for v in a["dilations"]], "ceil_mode": int(bool(a["ceil_mode"])),
             "storage_order": int(a["storage_order"])}
    return [p.one("MaxPoolIndices", attrs, [p.input(0)])]


def _recurrent(p: Any) -> list[int]:
    n, a = p.node, p.node.attrs
    names = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu"}
    attrs: dict[str, Any] = {"hidden_size": int(a["hidden_size"]), "direction": a["direction"],
                             "activations": [names[f] for f in a["activations"]],
                             "clip": float(a["clip"])}
    if n.op == "lstm":
        attrs["input_forget"] = int(bool(a["input_forget"]))
    if n.op == "gru":
        attrs["linear_before_reset"] = int(bool(a["linear_before_reset"]))
    return p.kernel(n.op.upper(), attrs, [p.input(k) for k in range(len(n.inputs))])


PLANNERS.update({
    "reduce": _reduce,
    "argmax": _argmax,
    "conv_transpose2d": _conv_transpose,
    "resize": _resize,
    "layernorm": _layernorm,
    "log_softmax": lambda p: [p.one("LogSoftmax", {"axis": int(p.node.attrs["axis"])},
                                    [p.input(0)])],
    "topk": _topk,
    "maxpool_indices": _maxpool_indices,
    "expand": lambda p: [p.one("Expand", {"shape": [int(d) for d in p.node.attrs["shape"]]},
                               [p.input(0)])],
    "tile": lambda p: [p.one("Tile", {"repeats": [int(r) for r in p.node.attrs["repeats"]]},
                             [p.input(0)])],
    "gather": lambda p: [p.one("Gather", {"axis": int(p.node.attrs["axis"]),
                                          "indices": [int(i) for i in p.node.attrs["indices"]],
                                          "indices_shape": [int(d) for d in
                                                            p.node.attrs["indices_shape"]]},
                               [p.input(0)])],
    "lstm": _recurrent,
    "gru": _recurrent,
    "rnn": _recurrent,
})
