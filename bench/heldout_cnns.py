"""Held-out-style synthetic CNNs: our int8 error beside onnxruntime's static int8, per model.

    python bench/heldout_cnns.py [--seeds 0-11] [--trained 0-1] [--calibration 16] [--test 24]

Models: ``zoo.seeded_cnn(seed)`` (the held-out-style CNN of tests/unit/test_quant.py) for each
seed, and ``zoo.trained_like_cnn(seed)`` (dead channels, heavy-tailed weights). Inputs are
standard normal (seeded), as in the tests. For each model it prints the relative output error
(``bench/quant_eval.py``) of ours with and without bias correction and of onnxruntime's
``quantize_static`` (QDQ, per channel, MinMax, the same calibration batches), and their ratio;
the last line gives the geometric mean and the worst ratio. Our int8 model is run by the numpy
integer reference, which the compiled model on fsim equals bit for bit.
"""

from __future__ import annotations

import argparse
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


def _range(text: str) -> list[int]:
    out: list[int] = []
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0-11")
    ap.add_argument("--trained", default="0-1")
    ap.add_argument("--calibration", type=int, default=16)
    ap.add_argument("--test", type=int, default=24)
    args = ap.parse_args()
    cfg = Config.preset("default")
    models = [(f"seeded_cnn({s})", zoo.seeded_cnn(s)) for s in _range(args.seeds)]
    models += [(f"trained_like_cnn({s})", zoo.trained_like_cnn(s)) for s in _range(args.trained)]
    print(f"{'model':<22}{'ours':>9}{'ours -bc':>10}{'ort':>9}{'ratio':>8}{'ratio -bc':>11}")
    ratios, ratios_nobc = [], []
    for name, proto in models:
        g = run_pipeline(import_onnx(proto), GRAPH_PASSES)
        rng = np.random.default_rng(11)
        shape = g.tensors["input"].shape
        cal = [{"input": rng.standard_normal(shape).astype(np.float32)}
               for _ in range(args.calibration)]
        test = [{"input": rng.standard_normal(shape).astype(np.float32)}
                for _ in range(args.test)]
        f = np.concatenate([qe.ort_float(proto).run(None, t)[0] for t in test])
        qs = qe.ort_int8(proto, cal)
        theirs = qe.rel_error(np.concatenate([qs.run(None, t)[0] for t in test]), f)
        errs = []
        for bc in (True, False):
            qm = quantize(g, cal, accel=accel_predicate(cfg), bias_correction=bc)
            errs.append(qe.rel_error(np.concatenate([qm.run(t)["output"] for t in test]), f))
        ratios.append(errs[0] / theirs)
        ratios_nobc.append(errs[1] / theirs)
        print(f"{name:<22}{errs[0]:9.4f}{errs[1]:10.4f}{theirs:9.4f}{ratios[-1]:8.3f}"
              f"{ratios_nobc[-1]:11.3f}", flush=True)
    gm = float(np.exp(np.mean(np.log(ratios))))
    gm0 = float(np.exp(np.mean(np.log(ratios_nobc))))
    print(f"geomean ratio {gm:.3f} (without bias correction {gm0:.3f}); worst {max(ratios):.3f} "
          f"({max(ratios_nobc):.3f}); within 1.0x: {sum(r <= 1.0 for r in ratios)}/{len(ratios)}")


if __name__ == "__main__":
    main()
