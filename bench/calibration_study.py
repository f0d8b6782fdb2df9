"""Calibration study: int8 error of every calibration method beside onnxruntime's static int8.

    python bench/calibration_study.py [--models NAME,...] [--survey] [--calibration 16]
                                      [--test 48] [--floors]

For each model and each of our calibration methods (``mse``, ``entropy``, ``percentile``,
``minmax``, with the default ``activations="auto"``, plus ``mse`` with all-symmetric and
all-asymmetric activations; bias correction on, the default) it prints the relative output
error (``bench/quant_eval.py``) against onnxruntime float, and the same for onnxruntime's
``quantize_static`` (QDQ, per channel, same calibration batches): MinMax (its default) and,
after its ``quant_pre_process``, MinMax, Percentile and Entropy. The last rows give, per
method, the geometric mean of our error over onnxruntime's (default flow, and with
pre-processing) and how often the method was the best of ours. Our int8 model is run by the
numpy integer reference, which the compiled model on fsim equals bit for bit
(tests/unit/test_compile_e2e.py).

Models: the test zoo (``small_cnn``, ``mobilenet_tiny``, ``resnet_tiny``), held-out-style CNNs
(``seeded_cnn`` 7, 8, 9), trained-like CNNs with dead channels (``trained_like_cnn`` 0..3), and
with ``--survey`` the survey's trained models that compile (bench/real_models.py, with its
generated inputs). Zoo models get standard-normal inputs, as the tests use. ``--floors`` adds
the weight-scale floor sweep (the per-channel scale floor of compiler/quant/params.py).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quant_eval as qe  # noqa: E402

from tessera.compiler import zoo  # noqa: E402
from tessera.compiler.frontend import import_onnx  # noqa: E402
from tessera.compiler.passes import GRAPH_PASSES, run_pipeline  # noqa: E402
from tessera.compiler.quant.quantize import accel_predicate, quantize  # noqa: E402
from tessera.config import Config  # noqa: E402
from tessera.errors import TesseraError  # noqa: E402

OURS = [("mse", "auto"), ("entropy", "auto"), ("percentile", "auto"), ("minmax", "auto"),
        ("mse", "symmetric"), ("mse", "asymmetric")]
ORTS = [("MinMax", False), ("MinMax", True), ("Percentile", True), ("Entropy", True)]


def zoo_models() -> dict:
    out = {"small_cnn": zoo.small_cnn(), "mobilenet_tiny": zoo.mobilenet_tiny(),
           "resnet_tiny": zoo.resnet_tiny()}
    out.update({f"seeded_cnn{s}": zoo.seeded_cnn(s) for s in (7, 8, 9)})
    out.update({f"trained_like{s}": zoo.trained_like_cnn(s) for s in range(4)})
    return out


def gaussian_feeds(graph, rng, n):
    return [{i: rng.standard_normal(graph.tensors[i].shape).astype(np.float32)
             for i in graph.inputs} for _ in range(n)]


def study(name, proto, cal, test, input_shapes=None, floors=False):
    cfg = Config.preset("default")
    g = run_pipeline(import_onnx(proto, input_shapes=input_shapes), GRAPH_PASSES)
    fixed = qe.fix_shapes(proto, input_shapes) if input_shapes else proto
    fs = qe.ort_float(fixed)
    out = fs.get_outputs()[0].name
    f = np.concatenate([fs.run([out], t)[0] for t in test])
    row = {}
    for method, act in OURS:
        qm = quantize(g, cal, method=method, activations=act, accel=accel_predicate(cfg))
        row[f"{method}:{act}"] = qe.rel_error(np.concatenate([qm.run(t)[out] for t in test]), f)
    for method, pre in ORTS:
        try:
            qs = qe.ort_int8(fixed, cal, pre=pre, method=method)
            o = np.concatenate([qs.run([out], t)[0] for t in test])
            row[f"ort:{method}{'+pre' if pre else ''}"] = qe.rel_error(o, f)
        except Exception as exc:  # noqa: BLE001 - reported; the reference may fail a model
            print(f"  {name}: onnxruntime {method} failed: {exc!s:.100}")
    if floors:
        for fl in (2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -12, 0.0):
            qm = quantize(g, cal, accel=accel_predicate(cfg), weight_floor=fl)
            row[f"floor 2^{int(math.log2(fl)) if fl else '-inf'}"] = qe.rel_error(
                np.concatenate([qm.run(t)[out] for t in test]), f)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="")
    ap.add_argument("--survey", action="store_true")
    ap.add_argument("--calibration", type=int, default=16)
    ap.add_argument("--test", type=int, default=48)
    ap.add_argument("--floors", action="store_true")
    args = ap.parse_args()
    names = set(filter(None, args.models.split(",")))
    rows: dict[str, dict] = {}
    for name, proto in zoo_models().items():
        if names and name not in names:
            continue
        g = import_onnx(proto)
        rng = np.random.default_rng(11)
        cal, test = gaussian_feeds(g, rng, args.calibration), gaussian_feeds(g, rng, args.test)
        rows[name] = study(name, proto, cal, test, floors=args.floors)
        print(f"{name}: " + " ".join(f"{k}={v:.4f}" for k, v in rows[name].items()), flush=True)
    if args.survey:
        import onnx
        import real_models as rm
        for spec in rm.MODELS:
            if names and spec.name not in names:
                continue
            try:
                proto = onnx.load(str(rm.fetch(spec)))
                rng = np.random.default_rng(0)
                cal = rm.make_inputs(spec, rng, min(args.calibration, 8))
                test = rm.make_inputs(spec, rng, min(args.test, 8))
                rows[spec.name] = study(spec.name, proto, cal, test, spec.inputs, args.floors)
                print(f"{spec.name}: " + " ".join(f"{k}={v:.4f}"
                                                  for k, v in rows[spec.name].items()),
                      flush=True)
            except TesseraError as exc:
                print(f"{spec.name}: does not compile ({str(exc).splitlines()[0][:100]})")
    if not rows:
        return
    cols = list(next(iter(rows.values())))
    w = max(len(n) for n in rows) + 2
    print()
    print(f"{'model':<{w}}" + "".join(f"{c:>17s}" for c in cols))
    for name, r in rows.items():
        print(f"{name:<{w}}" + "".join(f"{r.get(c, float('nan')):17.4f}" for c in cols))
    ours = [c for c in cols if not c.startswith("ort:")]
    for ref in ("ort:MinMax", "ort:MinMax+pre"):
        line = f"{'geomean / ' + ref[4:]:<{w}}"
        for c in cols:
            if c.startswith("ort:"):
                line += f"{'':>17s}"
                continue
            ratios = [r[c] / r[ref] for r in rows.values() if c in r and ref in r]
            line += f"{math.exp(np.mean(np.log(ratios))):17.3f}" if ratios else f"{'-':>17s}"
        print(line)
    best = {c: 0 for c in ours}
    for r in rows.values():
        cands = [c for c in ours if c in r and not c.startswith("floor")]
        if cands:
            best[min(cands, key=r.__getitem__)] += 1
    print(f"{'best of ours (count)':<{w}}" + "".join(
        f"{best[c]:17d}" if c in best and not c.startswith("floor") else f"{'':>17s}"
        for c in cols))


if __name__ == "__main__":
    main()
