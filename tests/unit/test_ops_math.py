"""Elementwise math, activations, comparisons, logic, casts and reductions against onnxruntime:
the numpy reference and the compiled float path (LLVM kernels) on small seeded graphs."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx_check import check, make_model

R = np.random.default_rng(7)


def f32(*shape, scale=1.0):
    return (R.standard_normal(shape) * scale).astype(np.float32)


X = f32(2, 3, 4, 5, scale=2.0)


def _one(op, inputs, opset=18, n_out=1, inits=None, **attrs):
    outs = [f"y{k}" for k in range(n_out)]
    node = helper.make_node(op, list(inputs), outs, **attrs)
    return make_model([node], inputs, outs, inits, opset=opset)


UNARY = [
    ("Abs", {}), ("Neg", {}), ("Floor", {}), ("Ceil", {}), ("Round", {}), ("Sign", {}),
    ("Erf", {}), ("Sin", {}), ("Cos", {}), ("Softplus", {}), ("Softsign", {}),
    ("HardSigmoid", {}), ("HardSigmoid", dict(alpha=0.3, beta=0.4)), ("HardSwish", {}),
    ("Mish", {}), ("Elu", dict(alpha=0.7)), ("Selu", {}), ("Selu", dict(alpha=1.5, gamma=1.2)),
    ("Celu", dict(alpha=2.0)), ("ThresholdedRelu", dict(alpha=0.5)), ("LeakyRelu", {}),
    ("Relu", {}), ("Sigmoid", {}), ("Tanh", {}), ("Exp", {}),
]


@pytest.mark.parametrize("op, attrs", UNARY, ids=[f"{o}{len(a)}" for o, a in UNARY])
def test_unary(op, attrs):
    check(_one(op, {"x": X}, **attrs), {"x": X})


@pytest.mark.parametrize("op", ["Log", "Sqrt", "Reciprocal"])
def test_unary_positive(op):
    x = np.abs(X) + np.float32(0.1)
    check(_one(op, {"x": x}), {"x": x})


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_opset20(approximate):
    check(_one("Gelu", {"x": X}, opset=20, approximate=approximate), {"x": X})


def test_swish_opset24():
    check(_one("Swish", {"x": X}, opset=24, alpha=0.75), {"x": X}, compiled=False)


def test_isnan_isinf():
    # feeds must be finite: make NaN and +-inf inside the graph (0/0, x/0)
    x = X.copy()
    z = np.ones_like(x)
    x.reshape(-1)[:2], z.reshape(-1)[:6] = [0.0, 0.0], 0.0
    nodes = [helper.make_node("Div", ["x", "z"], ["d"]),
             helper.make_node("IsNaN", ["d"], ["nan"])]
    outs = ["nan"]
    for k, (pos, neg) in enumerate(((1, 1), (1, 0), (0, 1))):
        nodes.append(helper.make_node("IsInf", ["d"], [f"inf{k}"], detect_positive=pos,
                                      detect_negative=neg))
        outs.append(f"inf{k}")
    check(make_model(nodes, {"x": x, "z": z}, outs), {"x": x, "z": z})


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "PRelu"])
def test_binary_broadcast(op):
    a = np.abs(X) + np.float32(0.5) if op == "Pow" else X
    b = f32(4, 1)
    check(_one(op, {"a": a, "b": b}), {"a": a, "b": b})


def test_pow_with_integer_exponent_and_zero_d_constants():
    # x ** 2 / 6 + 3 with 0-d int64 exponent and 0-d float constants (PyTorch style)
    nodes = [helper.make_node("Pow", ["x", "two"], ["p"]),
             helper.make_node("Div", ["p", "six"], ["d"]),
             helper.make_node("Add", ["d", "three"], ["y"])]
    inits = {"two": np.array(2, np.int64), "six": np.array(6.0, np.float32),
             "three": np.array(3.0, np.float32)}
    check(make_model(nodes, {"x": X}, ["y"], inits, opset=13), {"x": X})


@pytest.mark.parametrize("fmod", [0, 1])
def test_mod_integers(fmod):
    a = R.integers(-50, 50, (3, 7)).astype(np.int32)
    b = (R.integers(1, 9, (7,)) * R.choice([-1, 1], 7)).astype(np.int32)
    check(_one("Mod", {"a": a, "b": b}, fmod=fmod), {"a": a, "b": b})


def test_fmod_floats():
    b = np.abs(f32(5)) + np.float32(0.5)
    check(_one("Mod", {"a": X, "b": b}, fmod=1), {"a": X, "b": b})


def test_prelu_per_channel_slope():
    slope = f32(3, 1, 1)
    m = make_model([helper.make_node("PRelu", ["x", "s"], ["y"])], {"x": X}, ["y"], {"s": slope})
    check(m, {"x": X})


@pytest.mark.parametrize("op", ["Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"])
def test_comparisons_and_where(op):
    b = np.round(f32(1, 5))
    a = np.round(X)
    nodes = [helper.make_node(op, ["a", "b"], ["c"]),
             helper.make_node("Where", ["c", "a", "zero"], ["y"]),
             helper.make_node("Not", ["c"], ["n"])]
    m = make_model(nodes, {"a": a, "b": b}, ["y", "n"], {"zero": np.float32(0.0)})
    check(m, {"a": a, "b": b})


@pytest.mark.parametrize("op", ["And", "Or", "Xor"])
def test_logic(op):
    a, b = X > 0, f32(5) > 0.3
    check(_one(op, {"a": a, "b": b}), {"a": a, "b": b})


@pytest.mark.parametrize("to", [TensorProto.BOOL, TensorProto.INT64, TensorProto.INT32,
                                TensorProto.INT8, TensorProto.UINT8, TensorProto.FLOAT])
def test_cast(to):
    x = np.round(X * 20)
    x.reshape(-1)[:3] = 0.0
    nodes = [helper.make_node("Cast", ["x"], ["c"], to=to),
             helper.make_node("Cast", ["c"], ["y"], to=TensorProto.FLOAT)]
    check(make_model(nodes, {"x": x}, ["c", "y"]), {"x": x})


def test_castlike_and_bool_arithmetic():
    nodes = [helper.make_node("Greater", ["x", "zero"], ["g"]),
             helper.make_node("CastLike", ["g", "x"], ["gf"]),
             helper.make_node("Mul", ["x", "gf"], ["y"])]
    check(make_model(nodes, {"x": X}, ["y"], {"zero": np.float32(0)}), {"x": X})


def test_variadic_sum_mean_max():
    a, b, c = X, f32(5), f32(4, 1)
    nodes = [helper.make_node("Sum", ["a", "b", "c"], ["s"]),
             helper.make_node("Mean", ["a", "b", "c"], ["m"]),
             helper.make_node("Max", ["a", "b", "c"], ["x"]),
             helper.make_node("Min", ["a"], ["n"])]
    check(make_model(nodes, {"a": a, "b": b, "c": c}, ["s", "m", "x", "n"]),
          {"a": a, "b": b, "c": c})


def test_clip_forms():
    nodes = [helper.make_node("Clip", ["x", "lo", "hi"], ["a"]),
             helper.make_node("Clip", ["x", "", "hi"], ["b"]),
             helper.make_node("Clip", ["x"], ["c"])]
    inits = {"lo": np.float32(-0.5), "hi": np.float32(1.25)}
    check(make_model(nodes, {"x": X}, ["a", "b", "c"], inits), {"x": X})


REDUCE = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
          "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp"]


@pytest.mark.parametrize("op", REDUCE)
@pytest.mark.parametrize("axes, keepdims", [((1,), 1), ((0, 2), 0), ((-1,), 1), (None, 0)])
def test_reductions_axes_as_input(op, axes, keepdims):
    x = X * np.float32(0.5) if op == "ReduceProd" else X
    inits = {} if axes is None else {"axes": np.array(axes, np.int64)}
    ins = ["x"] + ([] if axes is None else ["axes"])
    m = make_model([helper.make_node(op, ins, ["y"], keepdims=keepdims)], {"x": x}, ["y"],
                   inits, opset=18)
    check(m, {"x": x}, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax", "ReduceL2"])
def test_reductions_axes_as_attribute_opset13(op):
    m = make_model([helper.make_node(op, ["x"], ["y"], axes=[1, 3], keepdims=0)], {"x": X},
                   ["y"], opset=13)
    check(m, {"x": X})


def test_reduce_log_sum_and_noop_with_empty_axes():
    x = np.abs(X) + np.float32(0.1)
    nodes = [helper.make_node("ReduceLogSum", ["x", "ax"], ["a"]),
             helper.make_node("ReduceSum", ["x"], ["b"], noop_with_empty_axes=1),
             helper.make_node("ReduceMax", ["x", "none"], ["c"], noop_with_empty_axes=1)]
    inits = {"ax": np.array([2], np.int64), "none": np.zeros(0, np.int64)}
    check(make_model(nodes, {"x": x}, ["a", "b", "c"], inits, opset=18), {"x": x})


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("axis, keepdims, last", [(1, 1, 0), (-1, 0, 0), (2, 1, 1)])
def test_argmax(op, axis, keepdims, last):
    x = np.round(X)  # ties, so select_last_index matters
    m = _one(op, {"x": x}, axis=axis, keepdims=keepdims, select_last_index=last)
    check(m, {"x": x})
