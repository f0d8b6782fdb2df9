"""fuse_elementwise: activation chains as exported by PyTorch, Paddle and TF become one op
(SiLU, Mish, HardSigmoid, HardSwish, GELU), results unchanged against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from onnx_check import check, make_model

from tessera.compiler.frontend import import_onnx
from tessera.compiler.passes import GRAPH_PASSES, run_pipeline

X = (np.random.default_rng(2).standard_normal((1, 3, 4, 5)) * 3).astype(np.float32)
S = {"three": np.float32(3), "six": np.float32(6), "sixth": np.float32(1 / 6),
     "zero": np.float32(0), "half": np.float32(0.5), "one": np.float32(1),
     "sqrt2": np.float32(np.sqrt(2)), "rsqrt2": np.float32(np.sqrt(0.5))}


def _n(op, ins, out, **attrs):
    return helper.make_node(op, ins, [out], **attrs)


def _clip(src, out, opset):
    if opset >= 11:
        return _n("Clip", [src, "zero", "six"], out)
    return _n("Clip", [src], out, min=0.0, max=6.0)


PATTERNS = {
    "silu": [_n("Sigmoid", ["x"], "s"), _n("Mul", ["x", "s"], "y")],
    "silu_swapped": [_n("Sigmoid", ["x"], "s"), _n("Mul", ["s", "x"], "y")],
    "mish": [_n("Softplus", ["x"], "sp"), _n("Tanh", ["sp"], "t"), _n("Mul", ["x", "t"], "y")],
    "hard_swish_onnx": [_n("HardSigmoid", ["x"], "h", alpha=1 / 6, beta=0.5),
                        _n("Mul", ["x", "h"], "y")],
    "hard_swish_paddle": [_n("Add", ["x", "three"], "a"), _clip("a", "c", 13),
                          _n("Mul", ["x", "c"], "m"), _n("Div", ["m", "six"], "y")],
    "hard_swish_torch": [_n("Add", ["x", "three"], "a"), _clip("a", "c", 13),
                         _n("Div", ["c", "six"], "d"), _n("Mul", ["x", "d"], "y")],
    "hard_sigmoid": [_n("Relu", ["x"], "r"), _n("Add", ["r", "three"], "a"), _clip("a", "c", 13),
                     _n("Mul", ["c", "sixth"], "y")],
    "gelu_torch": [_n("Div", ["x", "sqrt2"], "d"), _n("Erf", ["d"], "e"),
                   _n("Add", ["e", "one"], "a"), _n("Mul", ["x", "a"], "m"),
                   _n("Mul", ["m", "half"], "y")],
    "gelu_half_first": [_n("Mul", ["x", "rsqrt2"], "d"), _n("Erf", ["d"], "e"),
                        _n("Add", ["one", "e"], "a"), _n("Mul", ["x", "half"], "h"),
                        _n("Mul", ["h", "a"], "y")],
    "gelu_tf": [_n("Div", ["x", "sqrt2"], "d"), _n("Erf", ["d"], "e"),
                _n("Add", ["e", "one"], "a"), _n("Mul", ["half", "a"], "h"),
                _n("Mul", ["x", "h"], "y")],
}
FUSED = {"silu": "silu", "mish": "mish", "hard": "hard_swish", "gelu": "gelu"}


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_chain_is_fused_and_matches_onnxruntime(name):
    m = make_model(PATTERNS[name], {"x": X}, ["y"], S, opset=13)
    g = run_pipeline(import_onnx(m), GRAPH_PASSES)
    want = "hard_sigmoid" if name == "hard_sigmoid" else FUSED[name.split("_")[0]]
    assert want in g.ops(), g.dump()
    assert len(g.ops()) == (2 if name == "hard_sigmoid" else 1), g.ops()
    check(m, {"x": X}, rtol=1e-5, atol=1e-5)


def test_shared_intermediate_is_not_fused():
    nodes = [_n("Sigmoid", ["x"], "s"), _n("Mul", ["x", "s"], "y"), _n("Relu", ["s"], "z")]
    m = make_model(nodes, {"x": X}, ["y", "z"], opset=13)
    g = run_pipeline(import_onnx(m), GRAPH_PASSES)
    assert "silu" not in g.ops() and "sigmoid" in g.ops()
    check(m, {"x": X})


def test_hard_sigmoid_after_conv_stays_foldable():
    w = np.random.default_rng(0).standard_normal((3, 3, 1, 1)).astype(np.float32)
    nodes = [_n("Conv", ["x", "w"], "c"), _n("Add", ["c", "three"], "a"), _clip("a", "k", 13),
             _n("Div", ["k", "six"], "y")]
    m = make_model(nodes, {"x": X}, ["y"], {**S, "w": w}, opset=13)
    g = run_pipeline(import_onnx(m), GRAPH_PASSES)
    assert "hard_sigmoid" not in g.ops()  # the +3 is in the conv's bias, the clip its act
    assert g.nodes[0].op == "conv2d" and g.nodes[0].attrs["act"] == "clip"
    check(m, {"x": X}, rtol=1e-5, atol=1e-5)
