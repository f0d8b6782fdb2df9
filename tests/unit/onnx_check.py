"""Differential checking of small ONNX graphs: onnxruntime vs Tessera's numpy reference vs the
compiled float path (LLVM CPU kernels run through the executor on the fsim device)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

import tessera
from tessera.compiler import reference
from tessera.compiler.frontend import import_onnx

_ELEM = {np.dtype(np.float32): onnx.TensorProto.FLOAT, np.dtype(np.int64): onnx.TensorProto.INT64,
         np.dtype(np.int32): onnx.TensorProto.INT32, np.dtype(np.bool_): onnx.TensorProto.BOOL,
         np.dtype(np.int8): onnx.TensorProto.INT8, np.dtype(np.uint8): onnx.TensorProto.UINT8}


def make_model(nodes: Sequence[onnx.NodeProto], inputs: Mapping[str, np.ndarray],
               outputs: Sequence[str], inits: Mapping[str, np.ndarray] | None = None,
               opset: int = 17) -> onnx.ModelProto:
    g = helper.make_graph(
        list(nodes), "t",
        [helper.make_tensor_value_info(k, _ELEM[v.dtype], v.shape) for k, v in inputs.items()],
        [helper.make_empty_tensor_value_info(o) for o in outputs],
        initializer=[numpy_helper.from_array(np.asarray(v), k)
                     for k, v in (inits or {}).items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8 if opset <= 18 else 10
    return m


def run_ort(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, dict(feeds))


def check(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], rtol: float = 1e-5,
          atol: float = 1e-5, compiled: bool = True) -> list[np.ndarray]:
    """Assert that the reference and (if ``compiled``) the float-compiled model match
    onnxruntime; returns onnxruntime's outputs."""
    want = run_ort(model, feeds)
    graph = import_onnx(model)
    ref = reference.run(graph, feeds)
    got = [ref[o] for o in graph.outputs]
    _compare("reference", got, want, rtol, atol)
    if compiled:
        cm = tessera.compile(model, precision="float")
        _compare("compiled float", cm.run(dict(feeds)), want, rtol, atol)
    return want


def _compare(what: str, got: Sequence[np.ndarray], want: Sequence[np.ndarray], rtol: float,
             atol: float) -> None:
    assert len(got) == len(want), f"{what}: {len(got)} outputs, onnxruntime has {len(want)}"
    for k, (g, w) in enumerate(zip(got, want)):
        w = np.asarray(w)
        assert g.shape == w.shape, f"{what} output {k}: shape {g.shape} != {w.shape}"
        assert g.dtype == w.dtype, f"{what} output {k}: dtype {g.dtype} != {w.dtype}"
        if w.dtype.kind in "biu":
            np.testing.assert_array_equal(g, w, err_msg=f"{what} output {k}")
        else:
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=f"{what} output {k}")
