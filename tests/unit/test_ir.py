"""IR: shape inference, printer, verifier."""

import dataclasses

import numpy as np
import pytest

from tessera.compiler import reference
from tessera.compiler.ir import Graph, GraphBuilder, Node, TensorInfo
from tessera.errors import CompileError


def _conv_graph():
    b = GraphBuilder("t")
    x = b.input("x", (2, 6, 9, 9))
    w = b.const("w", np.ones((4, 3, 3, 3), np.float32))
    y = b.node("conv2d", [x, w], strides=(2, 2), pads=(1, 1, 1, 1), groups=2)
    z = b.node("maxpool", [y], kernel=(3, 3), strides=(2, 2), pads=(1, 1, 1, 1), ceil_mode=True)
    f = b.node("flatten", [z])
    return b.build([f])


def test_shape_inference_conv_pool_flatten():
    g = _conv_graph()
    assert g.tensors["conv2d0"].shape == (2, 4, 5, 5)
    assert g.tensors["maxpool1"].shape == (2, 4, 3, 3)
    assert g.tensors["flatten2"] == TensorInfo((2, 36), "float32")


def test_dump_is_readable():
    text = _conv_graph().dump()
    assert "conv2d(x, w) strides=(2,2)" in text and "groups=2" in text
    assert "float32[2,4,5,5]" in text and text.startswith("graph t {")


def test_verify_reports_every_problem():
    nodes = [Node("relu", ("nope",), ("a",), {}, "r1"), Node("relu", ("x",), ("x",), {}, "r2")]
    g = Graph(("x",), ("a", "missing"), nodes, {}, {"x": TensorInfo((1,))})
    with pytest.raises(CompileError) as e:
        g.verify()
    msg = str(e.value)
    assert "'r1'" in msg and "nope" in msg and "redefines" in msg and "missing" in msg


def test_bad_shapes_raise_compile_error_naming_node():
    b = GraphBuilder()
    x = b.input("x", (1, 5, 8, 8))
    w = b.const("w", np.ones((4, 3, 3, 3), np.float32))
    b.node("conv2d", [x, w], name="bad_conv")
    with pytest.raises(CompileError, match="bad_conv"):
        b.build(["conv2d0"])


def test_broadcast_and_reference_float_semantics():
    b = GraphBuilder()
    x = b.input("x", (2, 3, 4))
    c = b.const("c", np.arange(4, dtype=np.float32))
    y = b.node("add", [x, c], act="relu")
    s = b.node("softmax", [y], axis=1)
    g = b.build([s])
    xv = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    out = reference.run(g, {"x": xv})[s]
    e = np.exp(np.maximum(xv + np.arange(4), 0))
    np.testing.assert_allclose(out, e / e.sum(1, keepdims=True), rtol=1e-6)


def test_nodes_are_immutable_and_replace_returns_new_graph():
    g = _conv_graph()
    n = g.nodes[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        n.op = "relu"
    g2 = g.replace(nodes=g.nodes[:1], outputs=[n.outputs[0]])
    assert len(g.nodes) == 3 and len(g2.nodes) == 1


def test_reference_input_errors():
    g = _conv_graph()
    with pytest.raises(CompileError, match="missing input 'x'"):
        reference.run(g, {})
    with pytest.raises(CompileError, match="shape"):
        reference.run(g, {"x": np.zeros((1, 6, 9, 9), np.float32)})
