"""How closely a pre-quantised model's int8 layers agree with onnxruntime's integer outputs.

Each of our int8 nodes that computes one of the model's quantised tensors (a QuantizeLinear or
QLinear* output) is re-run on onnxruntime's int8 values of its inputs, so upstream differences
do not accumulate, and its output is compared with onnxruntime's, in integer steps. (A
quantize that follows float ops, e.g. a softmax, is left out: its input is our float chain.)
Needs
``onnxruntime`` (the reference; a development dependency).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from tessera.compiler import reference
from tessera.errors import CompileError

__all__ = ["OpAgreement", "integer_agreement"]

_QUANTISED_OUTPUTS = ("QuantizeLinear", "QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd",
                      "QLinearMul", "QLinearGlobalAveragePool", "QLinearAveragePool",
                      "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax")


@dataclass
class OpAgreement:
    """Agreement of one of our int8 ops (over every tensor it computes)."""

    op: str
    max_diff: int = 0
    differing: int = 0
    total: int = 0
    tensors: int = 0

    @property
    def fraction(self) -> float:
        return self.differing / self.total if self.total else 0.0


def _carried(v: np.ndarray) -> np.ndarray:
    """An onnxruntime int8/uint8 tensor as our int8 carrier (uint8 - 128)."""
    v = np.asarray(v)
    return (v.astype(np.int16) - 128).astype(np.int8) if v.dtype == np.uint8 else v


def integer_agreement(model: onnx.ModelProto, quantized, feeds: Iterable[Mapping[str, np.ndarray]],
                      ) -> dict[str, OpAgreement]:
    """Per op of ours: the largest |difference| (integer steps) and how many values differ, on
    ``feeds``. ``quantized`` is the :class:`~tessera.compiler.quant.quantize.QuantizedModel`
    of ``model`` (``compiled.quantized``)."""
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - onnxruntime is a dev dependency
        raise CompileError("integer_agreement needs onnxruntime (pip install onnxruntime)") \
            from None
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    quantised = [n.output[0] for n in model.graph.node if n.op_type in _QUANTISED_OUTPUTS]
    have = {o.name for o in probe.graph.output}
    for n in model.graph.node:  # every tensor, untyped: the int8 ones are read back as such
        for t in n.output:
            if t and t not in have:
                probe.graph.output.append(onnx.ValueInfoProto(name=t))
                have.add(t)
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    qm = quantized
    ours_of = {}
    for t in quantised:
        ours = qm.model_int.get(t) or qm.model_int.get(f"{t}:i8")
        if ours is not None:
            ours_of[t] = ours
    theirs_of = {v: k for k, v in ours_of.items()}
    prod = qm.graph.producers()
    out: dict[str, OpAgreement] = {}
    for feed in feeds:
        ref = dict(zip(names, sess.run(None, dict(feed)), strict=True))
        env = reference.run(qm.graph, feed, all_tensors=True)
        for t, ours in ours_of.items():
            n = prod.get(ours)
            if n is None or n.op not in reference.KERNELS or (
                    n.op == "quantize" and n.inputs[0] not in qm.graph.inputs):
                continue  # a quantize after float ops would compare our float chain, not it
            y = reference.KERNELS[n.op](n, *[_input(qm, env, ref, theirs_of, prod, i)
                                             for i in n.inputs])[0]
            d = np.abs(_carried(ref[t]).astype(np.int64) - y.astype(np.int64))
            a = out.setdefault(n.op, OpAgreement(n.op))
            a.max_diff = max(a.max_diff, int(d.max(initial=0)))
            a.differing += int((d > 0).sum())
            a.total += d.size
            a.tensors += 1
    return out


def _input(qm, env, ref, theirs_of, prod, i: str):
    """Input ``i`` of one of our nodes: onnxruntime's value when it is (or pads, or
    requantises) one of the model's int8 tensors, else ours."""
    if not i:
        return None
    if i in qm.graph.constants:
        return qm.graph.constants[i]
    theirs = _theirs(ref, theirs_of, i)
    if theirs is not None:
        return theirs
    n = prod.get(i)
    if n is not None and n.op in ("pad", "requant"):
        src = _theirs(ref, theirs_of, n.inputs[0])
        if src is not None:
            return reference.KERNELS[n.op](n, src)[0]
    return env[i]


def _theirs(ref, theirs_of, i: str):
    """onnxruntime's int8 value of our tensor ``i`` (the model's tensor it stands for, or the
    model's tensor of the same name, e.g. a reshape of int8 data, or the uint8 tensor ``i``
    carries as int8, ``name:i8``), or None."""
    t = theirs_of.get(i, i)
    if t not in ref:
        m = re.fullmatch(r"(.+):i8(_\d+)?", t)
        t = m.group(1) if m else t
    if t in ref and np.asarray(ref[t]).dtype in (np.int8, np.uint8):
        return _carried(ref[t])
    return None
