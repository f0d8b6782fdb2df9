"""Pre-quantised models: our int8 layers against onnxruntime's integer outputs, per op.

    python bench/qdq_agreement.py [--models small_cnn,resnet_tiny,...] [--test 4]

Each zoo model is quantised by onnxruntime's ``quantize_static`` (after ``quant_pre_process``;
per channel; QDQ and QOperator formats; int8 and uint8 activations) and compiled by Tessera
with the model's own scales (no calibration). Every int8 node of ours that computes one of the
model's quantised tensors is re-run on onnxruntime's int8 inputs
(:func:`tessera.compiler.quant.agreement.integer_agreement`), so differences do not
accumulate, and compared with onnxruntime's output in integer steps: the largest difference and
the fraction of values that differ. Where they differ it is rounding: onnxruntime requantises
in float32 and rounds half to even, ours is a 16-bit fixed-point multiplier and a shift that
rounds half up (SPEC's ALU).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quant_eval as qe  # noqa: E402

from tessera.compiler import zoo  # noqa: E402
from tessera.compiler.api import compile as tcompile  # noqa: E402
from tessera.compiler.quant.agreement import integer_agreement  # noqa: E402
from tessera.errors import TesseraError  # noqa: E402

MODELS = {"small_cnn": zoo.small_cnn, "resnet_tiny": zoo.resnet_tiny,
          "mobilenet_tiny": zoo.mobilenet_tiny, "seeded_cnn1": lambda: zoo.seeded_cnn(1),
          "trained_like0": lambda: zoo.trained_like_cnn(0)}
FORMATS = [("QDQ", "QInt8"), ("QDQ", "QUInt8"), ("QOperator", "QInt8"), ("QOperator", "QUInt8")]


def ort_quantized(m: onnx.ModelProto, batches: list, fmt: str, act: str) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    logging.getLogger().setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as d:
        fp, qp = os.path.join(d, "f.onnx"), os.path.join(d, "q.onnx")
        onnx.save(m, fp)
        with contextlib.redirect_stdout(io.StringIO()):
            quant_pre_process(fp, fp)
            quantize_static(fp, qp, qe.Reader(batches), quant_format=getattr(QuantFormat, fmt),
                            per_channel=True, activation_type=getattr(QuantType, act))
        return onnx.load(qp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--test", type=int, default=4)
    args = ap.parse_args()
    total: dict[str, list[int]] = {}
    print(f"{'model':<16}{'format':<18}{'op':<18}{'max diff':>9}{'differ':>10}{'values':>10}")
    for name in filter(None, args.models.split(",")):
        m = MODELS[name]()
        shape = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
        rng = np.random.default_rng(0)
        cal = [{"input": rng.standard_normal(shape).astype(np.float32)} for _ in range(8)]
        test = [{"input": rng.standard_normal(shape).astype(np.float32)}
                for _ in range(args.test)]
        for fmt, act in FORMATS:
            label = f"{fmt}/{act}"
            try:
                qmodel = ort_quantized(m, cal, fmt, act)
                model = tcompile(qmodel, config="default")
            except TesseraError as exc:
                print(f"{name:<16}{label:<18}does not compile: {str(exc).splitlines()[0][:80]}")
                continue
            for op, a in sorted(integer_agreement(qmodel, model.quantized, test).items()):
                print(f"{name:<16}{label:<18}{op:<18}{a.max_diff:9d}{a.fraction:10.4%}"
                      f"{a.total:10d}", flush=True)
                t = total.setdefault(op, [0, 0, 0])
                t[0] = max(t[0], a.max_diff)
                t[1] += a.differing
                t[2] += a.total
    print()
    for op, (mx, diff, tot) in sorted(total.items()):
        print(f"{'all':<16}{'':<18}{op:<18}{mx:9d}{diff / max(tot, 1):10.4%}{tot:10d}")


if __name__ == "__main__":
    main()
