"""Data movement and shape sub-graphs against onnxruntime: Split, Expand, Tile, Gather, Pad modes,
Depth/SpaceToDepth, Focus-style slicing, detector-head shape arithmetic folded at import, and
0-d constants end to end (compile, run, save, load)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_check import check, make_model, run_ort

import tessera
from tessera.compiler.frontend import import_onnx

R = np.random.default_rng(5)


def f32(*shape):
    return R.standard_normal(shape).astype(np.float32)


X = f32(2, 6, 4, 5)


@pytest.mark.parametrize("opset, form", [(11, "attr"), (13, "input"), (13, "equal"),
                                         (18, "num_outputs")])
def test_split(opset, form):
    if form == "attr":
        node, inits = helper.make_node("Split", ["x"], ["a", "b", "c"], axis=1,
                                       split=[1, 2, 3]), {}
    elif form == "input":
        node = helper.make_node("Split", ["x", "s"], ["a", "b", "c"], axis=-1)
        inits = {"s": np.array([2, 2, 1], np.int64)}
    elif form == "equal":
        node, inits = helper.make_node("Split", ["x"], ["a", "b", "c"], axis=1), {}
    else:  # uneven: the last chunk is smaller
        node, inits = helper.make_node("Split", ["x"], ["a", "b", "c"], axis=3,
                                       num_outputs=3), {}
    check(make_model([node], {"x": X}, ["a", "b", "c"], inits, opset=opset), {"x": X})


def test_expand_tile_gather():
    nodes = [helper.make_node("Expand", ["v", "shape"], ["e"]),
             helper.make_node("Tile", ["x", "reps"], ["t"]),
             helper.make_node("Gather", ["x", "idx"], ["g"], axis=1),
             helper.make_node("Gather", ["x", "one"], ["g0"], axis=-1)]
    inits = {"shape": np.array([2, 3, 4, 5], np.int64), "reps": np.array([1, 2, 1, 3], np.int64),
             "idx": np.array([[5, 0], [-1, 2]], np.int64), "one": np.array(1, np.int64)}
    v = f32(3, 1, 5)
    check(make_model(nodes, {"x": X, "v": v}, ["e", "t", "g", "g0"], inits), {"x": X, "v": v})


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad_modes(mode):
    inits = {"pads": np.array([0, 1, 2, 0, 0, 2, 1, 3], np.int64),
             "v": np.array(0.5, np.float32)}
    ins = ["x", "pads"] + (["v"] if mode == "constant" else [])
    m = make_model([helper.make_node("Pad", ins, ["y"], mode=mode)], {"x": X}, ["y"], inits,
                   opset=19)
    check(m, {"x": X})


def test_pad_axes_input_and_cropping():
    inits = {"pads": np.array([1, -1, 2, 0], np.int64), "axes": np.array([1, 3], np.int64)}
    m = make_model([helper.make_node("Pad", ["x", "pads", "", "axes"], ["y"])], {"x": X}, ["y"],
                   inits, opset=18)
    check(m, {"x": X})


@pytest.mark.parametrize("op, mode", [("DepthToSpace", "DCR"), ("DepthToSpace", "CRD"),
                                      ("SpaceToDepth", None)])
def test_depth_space(op, mode):
    x = f32(1, 8, 4, 6)
    attrs = {"blocksize": 2} | ({"mode": mode} if mode else {})
    check(make_model([helper.make_node(op, ["x"], ["y"], **attrs)], {"x": x}, ["y"]), {"x": x})


def test_focus_slices_and_concat():
    """YOLOv5/YOLOX Focus: four strided slices of the image concatenated on channels."""
    x = f32(1, 3, 8, 8)
    nodes, outs = [], []
    for k in range(4):
        nodes.append(helper.make_node("Slice", ["x", f"s{k}", "e", "ax", "st"], [f"p{k}"]))
        outs.append(f"p{k}")
    nodes.append(helper.make_node("Concat", outs, ["y"], axis=1))
    inits = {"e": np.array([2 ** 62, 2 ** 62], np.int64), "ax": np.array([2, 3], np.int64),
             "st": np.array([2, 2], np.int64)}
    inits |= {f"s{k}": np.array(v, np.int64) for k, v in enumerate([(0, 0), (1, 0), (0, 1),
                                                                    (1, 1)])}
    check(make_model(nodes, {"x": x}, ["y"], inits, opset=13), {"x": x})


def test_reverse_slice_and_negative_axes():
    nodes = [helper.make_node("Slice", ["x", "s", "e", "a", "st"], ["y"])]
    inits = {"s": np.array([-1, 1], np.int64), "e": np.array([-(2 ** 63), 5], np.int64),
             "a": np.array([-1, 1], np.int64), "st": np.array([-1, 2], np.int64)}
    check(make_model(nodes, {"x": X}, ["y"], inits, opset=13), {"x": X})


def test_detector_head_shape_subgraph_folds():
    """A YOLOv8-style head: Shape/Gather/Unsqueeze/Concat/Reshape, ConstantOfShape/Range/Expand,
    Mod/Floor/Div on shapes; everything but the data path folds at import."""
    x = f32(1, 6, 4, 5)
    i64 = lambda v: np.array(v, np.int64)  # noqa: E731
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Gather", ["s", "one"], ["c"], axis=0),
        helper.make_node("Div", ["c", "two"], ["c2"]),
        helper.make_node("Mod", ["c", "four"], ["cm"]),
        helper.make_node("Add", ["c2", "cm"], ["c3"]),
        helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
        helper.make_node("Unsqueeze", ["c3", "ax0"], ["c4"]),
        helper.make_node("Concat", ["n1", "c4", "m1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["r"]),
        helper.make_node("Range", ["zero", "c3", "one"], ["rng"]),
        helper.make_node("Cast", ["rng"], ["rngf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["rngf", "ax1"], ["rcol"]),
        helper.make_node("Shape", ["r"], ["rs"]),
        helper.make_node("ConstantOfShape", ["rs"], ["ones"],
                         value=numpy_helper.from_array(np.array([1.0], np.float32))),
        helper.make_node("Mul", ["ones", "rcol"], ["grid"]),
        helper.make_node("Add", ["r", "grid"], ["y"]),
    ]
    inits = {"zero": i64(0), "one": i64(1), "two": i64(2), "four": i64(4), "ax0": i64([0]),
             "ax1": i64([1]), "m1": i64([-1])}
    m = make_model(nodes, {"x": x}, ["y"], inits, opset=13)
    g = import_onnx(m)
    assert g.ops() == ["reshape", "add"]
    check(m, {"x": x})


def test_zero_d_constants_end_to_end(tmp_path):
    """PyTorch/Paddle exports are full of 0-d constants (x + 3, / 6): they must run on the
    accelerator path and the float path, and survive save/load."""
    w = (f32(4, 3, 3, 3) * 0.3).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Add", ["r", "three"], ["a"]),
             helper.make_node("Div", ["a", "six"], ["y"])]
    inits = {"w": w, "three": np.array(3.0, np.float32), "six": np.array(6.0, np.float32)}
    x = f32(1, 3, 8, 8)
    m = make_model(nodes, {"x": x}, ["y"], inits, opset=13)
    (want,) = run_ort(m, {"x": x})
    for precision in ("int8", "float"):
        cm = tessera.compile(m, config="tiny", precision=precision)
        (got,) = cm.run({"x": x})
        assert got.shape == want.shape
        tol = 1e-5 if precision == "float" else 0.05 * float(np.abs(want).max())
        np.testing.assert_allclose(got, want, atol=tol, rtol=1e-5 if precision == "float" else 0)
        path = tmp_path / f"m_{precision}.tsr"
        cm.save(path)
        np.testing.assert_array_equal(tessera.load(path).run({"x": x})[0], got)


def test_constant_graph_output_is_materialised():
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Relu", ["x"], ["y"])]
    m = make_model(nodes, {"x": X}, ["y", "s"])
    check(m, {"x": X})
