"""tessera.onnx_backend: the ONNX backend interface, and ONNX's node conformance suite on the
curated CNN op families (tessera.compiler.conformance) against onnxruntime in the same run.

The default run takes every 6th selected case of each family; ``-m slow`` runs the whole
selection (``python bench/onnx_conformance.py`` prints the per-family table)."""

from __future__ import annotations

import numpy as np
import onnxruntime.backend as ort_backend
import pytest
from onnx import helper
from onnx_check import make_model

import tessera.onnx_backend as backend
from tessera.compiler.conformance import FAMILIES, run_cases, select_cases
from tessera.compiler.frontend.context import ImportProblems

REQUIRED = 0.95  # of the cases onnxruntime passes


@pytest.fixture(scope="module")
def selection():
    return select_cases()


def _compare(cases):
    ort = run_cases(ort_backend, cases)
    ours = run_cases(backend, cases)
    ort_ok = {o.name for o in ort if o.passed}
    both = {o.name for o in ours if o.passed} & ort_ok
    missed = sorted((o.name, o.detail) for o in ours if o.name in ort_ok and not o.passed)
    print(f"\nONNX node conformance on {len(cases)} cases: onnxruntime passes {len(ort_ok)}, "
          f"Tessera passes {sum(o.passed for o in ours)} ({len(both)} of onnxruntime's)")
    assert len(both) >= REQUIRED * len(ort_ok), "\n".join(f"{n}: {d}" for n, d in missed)
    return ours


def test_selection_covers_every_family(selection):
    assert {c.family for c in selection} == set(FAMILIES)
    assert len(selection) > 700
    assert all(c.name.startswith("test_") for c in selection)


def test_conformance_subset_vs_onnxruntime(selection):
    by_family: dict[str, list] = {}
    for c in selection:
        by_family.setdefault(c.family, []).append(c)
    subset = [c for fam in sorted(by_family) for c in by_family[fam][::6]]
    _compare(subset)


@pytest.mark.slow
def test_conformance_full_selection_vs_onnxruntime(selection):
    _compare(selection)


X = np.random.default_rng(4).standard_normal((2, 3, 4)).astype(np.float32)


def test_backend_interface():
    assert backend.supports_device("CPU") and not backend.supports_device("CUDA")
    (y,) = backend.run_node(helper.make_node("Relu", ["x"], ["y"]), [X])
    np.testing.assert_array_equal(y, np.maximum(X, 0))
    m = make_model([helper.make_node("Sigmoid", ["x"], ["y"])], {"x": X}, ["y"])
    (y,) = backend.run_model(m, {"x": X})
    np.testing.assert_allclose(y, 1 / (1 + np.exp(-X)), rtol=1e-6)


def test_inputs_the_importer_needs_as_values_are_bound_per_value():
    shape = np.array([3, 8], np.int64)
    m = make_model([helper.make_node("Reshape", ["x", "s"], ["y"])], {"x": X, "s": shape}, ["y"])
    rep = backend.prepare(m)
    assert rep.bind == {"s"}
    (a,) = rep.run([X, shape])
    (b,) = rep.run([X, np.array([6, 4], np.int64)])
    assert a.shape == (3, 8) and b.shape == (6, 4)
    np.testing.assert_array_equal(b, X.reshape(6, 4))


def test_unsupported_models_fail_at_prepare_with_the_node_named():
    m = make_model([helper.make_node("Det", ["x"], ["y"], name="det")],
                   {"x": np.zeros((2, 3, 3), np.float32)}, ["y"])
    with pytest.raises(ImportProblems, match="'det' \\(op Det"):
        backend.prepare(m)


def test_integer_ops_run_through_the_integer_path(selection):
    # QuantizeLinear/DequantizeLinear, QLinearConv/MatMul and ConvInteger/MatMulInteger (uint8
    # and int8, zero points as inputs: bound per value) compile with precision="int8"; a lone
    # DynamicQuantizeLinear (no scales of its own) is float, its codes, scale and zero point
    # computed at run time (no input bound); every case onnxruntime passes, Tessera passes
    cases = [c for c in selection if c.family == "quantisation"]
    dql = [c for c in cases if {n.op_type for n in c.test.model.graph.node}
           == {"DynamicQuantizeLinear"}]
    assert len(dql) == 3
    assert all(any(n.op_type in backend.INTEGER_OPS for n in c.test.model.graph.node)
               for c in cases if c not in dql)
    qconv = next(c for c in cases if c.name == "test_qlinearconv")
    assert backend.prepare(qconv.test.model).precision == "int8"
    for c in dql:
        rep = backend.prepare(c.test.model)
        assert rep.precision == "float" and not rep.bind, c.name
    ort_ok = {o.name for o in run_cases(ort_backend, cases) if o.passed}
    ours = {o.name: o for o in run_cases(backend, cases)}
    missed = sorted(n for n in ort_ok if not ours[n].passed)
    print(f"\nquantisation family: onnxruntime passes {len(ort_ok)} of {len(cases)}, Tessera "
          f"{sum(o.passed for o in ours.values())} ({len(ort_ok) - len(missed)} of onnxruntime's)")
    assert not missed, [(n, ours[n].detail) for n in missed]
    assert {c.name for c in dql} <= ort_ok
    assert {"test_qlinearconv", "test_qlinearmatmul_2D_uint8_float32",
            "test_convinteger_without_padding", "test_matmulinteger"} <= set(ours) & ort_ok
