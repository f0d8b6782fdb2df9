"""IR ops: elementwise math, activations, comparisons, logic, selection, reductions.

Semantics are ONNX's (the numpy reference in :mod:`tessera.compiler.refops.math` is the
executable form). Unary ops keep shape and dtype, comparisons and logic produce ``bool``, binary
ops broadcast like numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tessera.compiler.ir.ops import (
    broadcast_shape,
    define,
    infer_broadcast,
    infer_same,
    need_inputs,
    op_error,
)
from tessera.compiler.ir.tensor import TensorInfo

if TYPE_CHECKING:
    from tessera.compiler.ir.graph import Graph, Node

__all__ = ["UNARY_FLOAT", "COMPARISONS", "LOGIC", "REDUCTIONS"]

# Unary ops with their attribute defaults (float32 in, float32 out).
UNARY_FLOAT = {
    "abs": {}, "log": {}, "reciprocal": {}, "floor": {}, "ceil": {}, "round": {}, "erf": {},
    "sign": {}, "sin": {}, "cos": {}, "softplus": {}, "softsign": {},
    "hard_sigmoid": {"alpha": 0.2, "beta": 0.5},
    "hard_swish": {}, "silu": {"alpha": 1.0}, "mish": {},
    "gelu": {"approximate": "none"},
    "elu": {"alpha": 1.0},
    "selu": {"alpha": 1.6732632423543772, "gamma": 1.0507009873554805},
    "celu": {"alpha": 1.0},
    "thresholded_relu": {"alpha": 1.0},
}
_DOCS = {
    "abs": "|x|", "log": "ln x", "reciprocal": "1 / x", "floor": "floor(x)", "ceil": "ceil(x)",
    "round": "round half to even", "erf": "the error function", "sign": "-1, 0 or 1",
    "sin": "sin x", "cos": "cos x", "softplus": "ln(1 + exp(x))", "softsign": "x / (1 + |x|)",
    "hard_sigmoid": "max(0, min(1, alpha * x + beta))",
    "hard_swish": "x * max(0, min(1, x / 6 + 1 / 2))", "silu": "x * sigmoid(alpha * x) (Swish)",
    "mish": "x * tanh(softplus(x))",
    "gelu": "x * Phi(x) (approximate='none'), or its tanh approximation ('tanh')",
    "elu": "x if x > 0 else alpha * (exp(x) - 1)",
    "selu": "gamma * (x if x > 0 else alpha * (exp(x) - 1))",
    "celu": "max(0, x) + min(0, alpha * (exp(x / alpha) - 1))",
    "thresholded_relu": "x if x > alpha else 0",
}
for _name, _defaults in UNARY_FLOAT.items():
    define(_name, _DOCS[_name], **_defaults)(infer_same)

define("mod", "remainder; fmod=0: sign of the divisor (integers), fmod=1: C fmod", fmod=0)(
    infer_broadcast)
define("prelu", "x if x >= 0 else slope * x, slope broadcast to x")(infer_broadcast)

COMPARISONS = ("equal", "less", "greater", "less_equal", "greater_equal")
LOGIC = ("and", "or", "xor")


def _compare(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    need_inputs(node, ins, 0, 1)
    if ins[0].dtype != ins[1].dtype:
        raise op_error(node, f"operands must have one dtype, not {ins[0].dtype} and "
                             f"{ins[1].dtype}")
    return [TensorInfo(broadcast_shape(node, ins[0].shape, ins[1].shape), "bool")]


for _name in COMPARISONS:
    define(_name, f"elementwise {_name.replace('_', ' ')} comparison -> bool")(_compare)
for _name in LOGIC:
    define(_name, f"elementwise logical {_name} of bool tensors")(_compare)


@define("not", "logical not of a bool tensor")
def _not(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    need_inputs(node, ins, 0)
    if ins[0].dtype != "bool":
        raise op_error(node, f"input must be bool, not {ins[0].dtype}")
    return [TensorInfo(ins[0].shape, "bool")]


@define("isnan", "x is NaN -> bool")
def _isnan(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    need_inputs(node, ins, 0)
    return [TensorInfo(ins[0].shape, "bool")]


define("isinf", "x is +inf (detect_positive) or -inf (detect_negative) -> bool",
       detect_negative=1, detect_positive=1)(_isnan)


@define("where", "cond ? x : y with numpy broadcasting of all three")
def _where(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    need_inputs(node, ins, 0, 1, 2)
    c, x, y = ins
    if c.dtype != "bool":
        raise op_error(node, f"condition must be bool, not {c.dtype}")
    if x.dtype != y.dtype:
        raise op_error(node, f"branches must have one dtype, not {x.dtype} and {y.dtype}")
    return [TensorInfo(broadcast_shape(node, c.shape, x.shape, y.shape), x.dtype)]


# -- reductions ---------------------------------------------------------------------------------

# (means are the ``mean`` op of :mod:`.ops`)
REDUCTIONS = ("sum", "max", "min", "prod", "l1", "l2", "sum_square", "log_sum", "log_sum_exp")


def _reduced(node: Node, shape: tuple[int, ...], axes: tuple[int, ...],
             keepdims: bool) -> tuple[int, ...]:
    r = len(shape)
    if any(not -r <= a < max(r, 1) for a in axes):
        raise op_error(node, f"axes {axes} out of range for rank {r}")
    ax = {a % r for a in axes} if r else set()
    return tuple(1 if i in ax else d for i, d in enumerate(shape) if keepdims or i not in ax)


@define("reduce", "reduce over axes with fn in " + ", ".join(REDUCTIONS), fn="sum", axes=(),
        keepdims=True)
def _reduce(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    need_inputs(node, ins, 0)
    if node.attrs["fn"] not in REDUCTIONS:
        raise op_error(node, f"fn must be one of {REDUCTIONS}, not {node.attrs['fn']!r}")
    shape = _reduced(node, ins[0].shape, tuple(node.attrs["axes"]), bool(node.attrs["keepdims"]))
    return [TensorInfo(shape, ins[0].dtype)]


@define("argmax", "index (int64) of the max (fn='max') or min (fn='min') along axis; ties "
        "give the first index, or the last with select_last_index", fn="max", axis=0,
        keepdims=True, select_last_index=False)
def _argmax(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    need_inputs(node, ins, 0)
    if node.attrs["fn"] not in ("max", "min"):
        raise op_error(node, f"fn must be 'max' or 'min', not {node.attrs['fn']!r}")
    shape = _reduced(node, ins[0].shape, (int(node.attrs["axis"]),),
                     bool(node.attrs["keepdims"]))
    return [TensorInfo(shape, "int64")]
