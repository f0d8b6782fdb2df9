"""Model zoo: checker, onnxruntime, and frontend + float reference against onnxruntime."""

import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tessera.compiler import reference, zoo
from tessera.compiler.frontend import import_onnx


@pytest.mark.parametrize("name", sorted(zoo.ZOO_SMALL))
def test_small_zoo_matches_onnxruntime(name):
    m = zoo.ZOO_SMALL[name]()
    onnx.checker.check_model(m, full_check=True)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    g = import_onnx(m)
    x = np.random.default_rng(3).standard_normal(g.tensors["input"].shape).astype(np.float32)
    want = sess.run(None, {"input": x})[0]
    got = reference.run(g, {"input": x})["output"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_resnet18_imports_quickly_and_runs_once():
    m = zoo.resnet18(seed=1)
    onnx.checker.check_model(m)
    t = time.perf_counter()
    g = import_onnx(m)
    assert time.perf_counter() - t < 5.0
    assert g.tensors["output"].shape == (1, 1000)
    assert g.ops().count("conv2d") == 20
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"input": x})[0]
    got = reference.run(g, {"input": x})["output"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_mobilenet_v1_imports_with_expected_shapes():
    m = zoo.mobilenet_v1(input_size=224, width=1.0)
    onnx.checker.check_model(m)
    g = import_onnx(m)
    assert g.tensors["output"].shape == (1, 1000)
    depthwise = [n for n in g.nodes if n.op == "conv2d" and n.attrs["groups"] > 1]
    assert len(depthwise) == 13
    small = import_onnx(zoo.mobilenet_v1(input_size=96, width=0.25, num_classes=11))
    assert small.tensors["output"].shape == (1, 11)


def test_light_models_listed():
    names = [p.name for p in zoo.light_models()]
    assert "light_resnet50.onnx" in names and len(names) >= 5
