"""Import failures: every unsupported node in one error (downstream ones included), each with
node name, op, domain and reason; nodes that cannot be checked name what they depend on; opset
handling (24/25 accepted, later opsets accepted op by op)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_check import check, make_model

from tessera.compiler.frontend import import_onnx
from tessera.compiler.frontend.context import ImportProblems
from tessera.errors import CompileError

X = np.random.default_rng(1).standard_normal((1, 2, 4, 4)).astype(np.float32)


def _problems(m):
    with pytest.raises(ImportProblems) as e:
        import_onnx(m)
    return str(e.value), {p["node"]: p for p in e.value.problems}


def test_chain_of_unsupported_nodes_is_reported_in_one_error():
    # relu -> Einsum (unsupported) -> Relu -> Shrink -> a custom-domain op -> Add; and Det
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="ok_relu"),
        helper.make_node("Einsum", ["a"], ["b"], equation="nchw->nchw", name="einsum_1"),
        helper.make_node("Relu", ["b"], ["c"], name="relu_after"),
        helper.make_node("Shrink", ["c"], ["d"], name="shrink_2"),
        helper.make_node("MyOp", ["d"], ["e"], domain="com.example", name="custom_3"),
        helper.make_node("Add", ["e", "a"], ["f"], name="add_after"),
        helper.make_node("Det", ["a"], ["y"], name="det_4"),
    ]
    m = make_model(nodes, {"x": X}, ["f", "y"])
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    msg, probs = _problems(m)
    assert "model has 4 unsupported node(s)" in msg
    for name, op, domain in [("einsum_1", "Einsum", "ai.onnx"), ("shrink_2", "Shrink", "ai.onnx"),
                             ("det_4", "Det", "ai.onnx"),
                             ("custom_3", "MyOp", "com.example")]:
        assert f"node {name!r} (op {op}, domain {domain!r})" in msg
        assert probs[name]["reason"]
    # Shrink is downstream of the failed Einsum: ONNX shape inference typed its input
    assert "not supported" in probs["shrink_2"]["reason"]
    # the custom op's output type is unknown: what reads it cannot be checked, and says why
    assert probs["add_after"]["depends_on"] == ["custom_3"]
    assert "cannot be checked" in msg and "'add_after'" in msg
    assert "ok_relu" not in msg and "relu_after" not in msg


def test_a_shape_computed_by_an_unsupported_node_is_a_dependent_problem():
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Shrink", ["s"], ["s2"], name="bad_shape_math"),
             helper.make_node("Reshape", ["x", "s2"], ["y"], name="reshape_dyn")]
    msg, probs = _problems(make_model(nodes, {"x": X}, ["y"]))
    assert "1 unsupported node(s)" in msg and "bad_shape_math" in msg
    assert probs["reshape_dyn"]["depends_on"] == ["bad_shape_math"]


def test_needs_constant_names_the_graph_inputs_behind_a_runtime_shape():
    shape = np.array([1, 32], np.int64)
    nodes = [helper.make_node("Cast", ["shp"], ["s"], to=TensorProto.INT64),
             helper.make_node("Reshape", ["x", "s"], ["y"], name="r")]
    msg, probs = _problems(make_model(nodes, {"x": X, "shp": shape}, ["y"]))
    assert "must be a constant" in msg
    assert probs["r"]["needs_constant"] == ["shp"]


@pytest.mark.parametrize("opset", [24, 25])
def test_opsets_24_and_25_import(opset):
    m = make_model([helper.make_node("HardSwish", ["x"], ["h"]),
                    helper.make_node("Resize", ["h", "", "s"], ["y"], mode="nearest")],
                   {"x": X}, ["y"], {"s": np.array([1, 1, 2, 2], np.float32)}, opset=opset)
    g = import_onnx(m)
    assert g.ops() == ["hard_swish", "resize"]


def test_later_opsets_import_op_by_op():
    # Relu is unchanged since opset 14: an opset-26+ model of it imports; an op whose schema
    # changed after opset 25 would be reported as too new
    m = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": X}, ["y"], opset=26)
    assert import_onnx(m).ops() == ["relu"]


def test_opsets_below_7_import_node_by_node_and_bad_inputs_are_rejected_by_name():
    # Not is unchanged since opset 1: fine; Add-6 (legacy broadcast attribute) is not
    a = X > 0
    m = make_model([helper.make_node("Not", ["a"], ["y"])], {"a": a}, ["y"], opset=1)
    assert import_onnx(m).ops() == ["not"]
    m = make_model([helper.make_node("Add", ["x", "x"], ["y"], name="old_add")], {"x": X}, ["y"],
                   opset=6)
    msg, probs = _problems(m)
    assert "older than the opset-7 version" in probs["old_add"]["reason"]
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [2])],
                          [helper.make_empty_tensor_value_info("y")])
    with pytest.raises(CompileError, match="input 'x': element type FLOAT16 is not supported"):
        import_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def test_bad_attribute_values_are_reported_not_raised_raw():
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 1, 1, 3], name="bad_perm"),
             helper.make_node("Split", ["x", "sp"], ["a", "b"], axis=1, name="bad_split")]
    inits = {"sp": np.array([1, 5], np.int64)}
    msg, probs = _problems(make_model(nodes, {"x": X}, ["t", "a", "b"], inits))
    assert "'bad_perm'" in msg and "permutation" in probs["bad_perm"]["reason"]
    assert "'bad_split'" in msg and "does not cut axis 1" in probs["bad_split"]["reason"]


def test_dropout_inference_and_identity_outputs():
    nodes = [helper.make_node("Dropout", ["x", "ratio"], ["d", "mask"]),
             helper.make_node("Identity", ["d"], ["y"])]
    inits = {"ratio": numpy_helper.to_array(numpy_helper.from_array(np.array(0.3, np.float32)))}
    check(make_model(nodes, {"x": X}, ["y", "mask"], inits, opset=13), {"x": X})
