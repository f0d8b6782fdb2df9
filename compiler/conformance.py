"""ONNX node conformance on the curated CNN op families, for any ONNX backend.

The cases are ONNX's own node tests, which ``onnx.backend.test.BackendTest`` generates in memory
(the wheel ships no test data) and runs with ONNX's runner: its tolerances, its dtype and shape
checks.
The selection is a rule, not a list of passing tests — a case is in when

1. every op of its graph (expanded function bodies included) is in :data:`FAMILIES` (the ops of
   CNN, detector and OCR exports: conv, pool, activation, elementwise, reduce, resize, shape,
   matmul, softmax, norm, rnn, topk, quantisation), in the default domain;
2. every graph input and output is float32, int64, int32, int8, uint8 or bool (the dtypes of
   inference graphs; double, float16, bfloat16, float8, int4, int16 and strings are out).

Each case belongs to the family of its op (an ``_expanded`` case to that of its unexpanded twin,
and is out when the twin's op is; other multi-op cases to the first family, in
:data:`FAMILIES` order, holding one of its ops).
"""

from __future__ import annotations

import re
import unittest
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import onnx

__all__ = ["FAMILIES", "Case", "select_cases", "run_cases", "Outcome"]

FAMILIES: dict[str, tuple[str, ...]] = {
    "rnn": ("LSTM", "GRU", "RNN"),
    "conv": ("Conv", "ConvTranspose"),
    "pool": ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"),
    "norm": ("BatchNormalization", "LayerNormalization", "InstanceNormalization",
             "GroupNormalization", "LRN", "MeanVarianceNormalization", "LpNormalization"),
    "resize": ("Resize", "Upsample"),
    "softmax": ("Softmax", "LogSoftmax", "Hardmax"),
    "matmul": ("MatMul", "Gemm"),
    "topk": ("TopK",),
    "quantisation": ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul",
                     "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"),
    "reduce": ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
               "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp", "ArgMax",
               "ArgMin"),
    "activation": ("Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
                   "Elu", "Selu", "Celu", "Softplus", "Softsign", "ThresholdedRelu", "Gelu",
                   "Mish", "Swish", "Erf", "Clip"),
    "elementwise": ("Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Log", "Neg", "Abs",
                    "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Max", "Min", "Sum", "Mean",
                    "Mod", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Where",
                    "Not", "And", "Or", "Xor", "IsNaN", "IsInf"),
    "shape": ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Concat", "Slice",
              "Split", "Expand", "Tile", "Pad", "Gather", "Shape", "Size", "ConstantOfShape",
              "Constant", "Cast", "CastLike", "Identity", "Dropout", "DepthToSpace",
              "SpaceToDepth", "Range"),
}
_FAMILY_OF = {op: fam for fam, ops in FAMILIES.items() for op in ops}
_DTYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64, onnx.TensorProto.INT32,
           onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.BOOL}


@dataclass(frozen=True)
class Case:
    """One selected node test: its name (``test_...``), family, and ONNX's test case."""

    name: str
    family: str
    test: Any  # onnx.backend.test.case.test_case.TestCase


@dataclass(frozen=True)
class Outcome:
    """The result of one case on one backend: ``passed``, or why not."""

    name: str
    family: str
    passed: bool
    detail: str = ""


@cache
def _all_testcases() -> tuple[Any, ...]:
    from onnx.backend.test.case.node import collect_testcases
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the case generators divide by zero on purpose
        return tuple(collect_testcases())


def _ops(g: onnx.GraphProto) -> set[tuple[str, str]]:
    out = set()
    for n in g.node:
        out.add((n.domain or "", n.op_type))
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                out |= _ops(a.g)
            for sub in a.graphs:
                out |= _ops(sub)
    return out


def _dtypes_ok(g: onnx.GraphProto) -> bool:
    for vi in list(g.input) + list(g.output):
        t = vi.type
        if not t.HasField("tensor_type") or t.tensor_type.elem_type not in _DTYPES:
            return False
    return True


def select_cases(families: Iterable[str] | None = None) -> list[Case]:
    """The selected cases (see the module docstring), optionally of some families only."""
    wanted = set(FAMILIES) if families is None else set(families)
    unknown = wanted - set(FAMILIES)
    if unknown:
        raise ValueError(f"families must be among {sorted(FAMILIES)}, not {sorted(unknown)}")
    tests = _all_testcases()
    single = {t.name: t.model.graph.node[0].op_type for t in tests
              if len(t.model.graph.node) == 1}
    out = []
    for t in tests:
        ops = _ops(t.model.graph)
        if any(dom not in ("", "ai.onnx") or op not in _FAMILY_OF for dom, op in ops):
            continue
        if not _dtypes_ok(t.model.graph):
            continue
        twin = single.get(re.sub(r"_expanded(_ver\d+)?$", "", t.name))
        if twin is not None and twin not in _FAMILY_OF:
            continue  # the expanded body of an op outside the families
        if twin is not None:
            fam = _FAMILY_OF[twin]
        else:
            present = {op for _, op in ops}
            fam = next(f for f, fops in FAMILIES.items() if present & set(fops))
        if fam in wanted:
            out.append(Case(t.name, fam, t))
    return sorted(out, key=lambda c: c.name)


def run_cases(backend: Any, cases: Sequence[Case], device: str = "CPU") -> list[Outcome]:
    """Run ``cases`` on ``backend`` (a module or class with ONNX's backend interface) through
    ``onnx.backend.test.BackendTest``; one :class:`Outcome` per case."""
    from onnx.backend.test import BackendTest

    runner = BackendTest(backend, __name__)  # builds the node tests in memory
    by_test = {f"{c.name}_{device.lower()}": c for c in cases}
    runner.include("^(" + "|".join(re.escape(k) for k in by_test) + ")$")
    suite = unittest.TestSuite()
    for cls in runner.test_cases.values():
        suite.addTests(unittest.defaultTestLoader.loadTestsFromTestCase(cls))
    result = unittest.TestResult()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        suite.run(result)
    bad = {}
    for test, text in result.failures + result.errors:
        bad[test._testMethodName] = text.strip().splitlines()[-1][:300]
    for test, why in result.skipped:
        bad[test._testMethodName] = f"skipped: {why}"[:300]
    return [Outcome(c.name, c.family, key not in bad, bad.get(key, ""))
            for key, c in by_test.items()]
