"""ONNX frontend: input forms, folding of shape arithmetic, errors, light_* coverage."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tessera.compiler import reference, zoo
from tessera.compiler.frontend import import_onnx
from tessera.errors import CompileError

# Every light_* model imports (LRN, Dropout, Sum, opset-9 attribute forms included).
LIGHT_EXPECTED_FAILURES: dict[str, str] = {}


def _model(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "m", inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_accepts_path_bytes_and_proto(tmp_path):
    m = zoo.mlp()
    p = tmp_path / "m.onnx"
    onnx.save(m, p)
    graphs = [import_onnx(m), import_onnx(m.SerializeToString()), import_onnx(p),
              import_onnx(str(p))]
    assert len({g.dump() for g in graphs}) == 1


def test_shape_arithmetic_is_folded():
    # Reshape(x, Concat(Gather(Shape(x), 0), [-1])) plus ConstantOfShape/Unsqueeze/Cast chains
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
        helper.make_node("Concat", ["n1", "m1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        helper.make_node("ConstantOfShape", ["cs"], ["ones"],
                         value=numpy_helper.from_array(np.array([2.0], np.float32))),
        helper.make_node("Cast", ["ones"], ["onesf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["flat", "onesf"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([0], np.int64), "ax0"),
             numpy_helper.from_array(np.array([-1], np.int64), "m1"),
             numpy_helper.from_array(np.array([1, 48], np.int64), "cs")]
    m = _model(nodes, [_vi("x", [1, 3, 4, 4])], [_vi("y", None)], inits)
    g = import_onnx(m)
    assert g.ops() == ["reshape", "mul"]
    x = np.random.default_rng(0).standard_normal((1, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(reference.run(g, {"x": x})["y"], 2 * x.reshape(1, 48))


def test_symbolic_batch_needs_input_shapes():
    m = zoo.mlp()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    with pytest.raises(CompileError, match="'input' has non-static shape"):
        import_onnx(m)
    g = import_onnx(m, input_shapes={"input": (4, 64)})
    assert g.tensors["output"].shape == (4, 10)
    with pytest.raises(CompileError, match="unknown input"):
        import_onnx(m, input_shapes={"input": (4, 64), "bogus": (1,)})


def test_opset11_forms_and_gemm_variants_match_onnxruntime():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 5)).astype(np.float32)
    nodes = [
        helper.make_node("Clip", ["x", "lo", "hi"], ["c"]),
        helper.make_node("Gemm", ["c", "w", "b"], ["g"], alpha=0.5, beta=2.0, transB=0),
        helper.make_node("Pad", ["g", "pads", "pv"], ["p"]),
        helper.make_node("Slice", ["p", "st", "en", "axs"], ["s"]),
        helper.make_node("Softmax", ["s"], ["y"], axis=1),
    ]
    inits = [numpy_helper.from_array(v, n) for n, v in [
        ("lo", np.array(-0.5, np.float32)), ("hi", np.array(0.7, np.float32)), ("w", w),
        ("b", rng.standard_normal(5).astype(np.float32)),
        ("pads", np.array([0, 1, 0, 2], np.int64)), ("pv", np.array(0.25, np.float32)),
        ("st", np.array([1], np.int64)), ("en", np.array([8], np.int64)),
        ("axs", np.array([1], np.int64))]]
    m = _model(nodes, [_vi("x", [3, 6])], [_vi("y", None)], inits, opset=11)
    x = rng.standard_normal((3, 6)).astype(np.float32)
    want = ort.InferenceSession(m.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = reference.run(import_onnx(m), {"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("path", zoo.light_models(), ids=lambda p: p.stem)
def test_light_models_import(path):
    if path.stem in LIGHT_EXPECTED_FAILURES:
        with pytest.raises(CompileError, match=LIGHT_EXPECTED_FAILURES[path.stem]):
            import_onnx(path)
        return
    g = import_onnx(path)
    assert g.tensors[g.outputs[0]].shape[:2] == (1, 1000)
    assert g.ops().count("conv2d") >= 5
