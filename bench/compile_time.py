"""Cold-cache compile seconds per model beside a reference compiler, measured in one run.

    python bench/compile_time.py [--models resnet18,light_resnet50,light_vgg19] [--repeat 1]

Each compile runs in a fresh process (``tessera.compile`` with its default calibration, eight
seeded batches) with an empty ``TESSERA_CACHE``, pinned to one core (``taskset``-style affinity,
``OMP_NUM_THREADS=1`` and friends). The line shows the seconds inside ``compile()`` (imports
excluded, printed apart) and its CPU seconds (the fairer figure on a shared machine), the CPU
seconds of ``build_plan`` (``plan cpu``, beside its target), of calibration's float passes and
of bias correction (``calib cpu``, ``bc cpu``: ``process_time`` around
``quantize.collect`` / ``quantize.correct_biases``), the phases (wall seconds) that take most
of it (``meta["compile_phases"]``) and the
reference: TVM's ``relay`` ONNX import + ``relay.build`` for ``llvm`` when ``tvm`` is importable,
else onnxruntime's session creation (graph optimisations on, one thread), also in a fresh
process on the same core. Models: names of :mod:`tessera.compiler.zoo` builders or of the onnx
wheel's ``light_*`` models.

This VM's speed drifts by ~25% from minute to minute, so ``--repeat N`` runs N rounds (each:
a machine-speed probe, then every model once, each run a fresh process) and prints per model
the median and the range (min-max) of the N runs beside the target. The probe, also a fresh
process on the same core, prints a fixed one-thread float32 GEMM's GFLOP/s and the rate at
which fresh memory is faulted in (GB/s; numpy's huge-page advice off, as inside
``compile()``: :func:`tessera.runtime.scratch.small_pages`): a slow round shows there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import onnx

from tessera.compiler import zoo

TARGETS = {"resnet18": 2.0, "light_resnet50": 5.0, "light_vgg19": 10.0}  # issue 9 part 3
PLAN_TARGETS = {"resnet18": 0.4, "light_resnet50": 1.0, "light_vgg19": 1.0}  # build_plan, s

_TESSERA = """
import json, sys, time
t0 = time.perf_counter()
from tessera.compiler.api import compile as tcompile
t1 = time.perf_counter()
import tessera.compiler.api as api
quantize = sys.modules["tessera.compiler.quant.quantize"]  # the package exports quantize()
cpu = {}
def timed(module, attr, key):
    inner = getattr(module, attr)
    def call(*args, **kwargs):
        c = time.process_time()
        try:
            return inner(*args, **kwargs)
        finally:
            cpu[key] = cpu.get(key, 0.0) + time.process_time() - c
    setattr(module, attr, call)
timed(api, "build_plan", "plan")
timed(quantize, "collect", "calibration")
timed(quantize, "correct_biases", "bias_correction")
c1 = time.process_time()
model = tcompile(sys.argv[1])
t2 = time.perf_counter()
print(json.dumps({"imports": t1 - t0, "compile": t2 - t1, "cpu": time.process_time() - c1,
                  "plan_cpu": cpu.get("plan", 0.0), "cpu_phases": cpu,
                  "phases": model.meta.get("compile_phases", {}),
                  "summary": model.summary()}))
"""

_TVM = """
import json, sys, time
t0 = time.perf_counter()
import onnx, tvm
from tvm import relay
t1 = time.perf_counter()
c1 = time.process_time()
m = onnx.load(sys.argv[1])
inp = m.graph.input[0]
shape = {inp.name: [d.dim_value for d in inp.type.tensor_type.shape.dim]}
mod, params = relay.frontend.from_onnx(m, shape)
with tvm.transform.PassContext(opt_level=3):
    relay.build(mod, target="llvm", params=params)
print(json.dumps({"imports": t1 - t0, "compile": time.perf_counter() - t1,
                  "cpu": time.process_time() - c1, "what": "TVM relay.build llvm"}))
"""

_ORT = """
import json, sys, time
t0 = time.perf_counter()
import onnxruntime as ort
t1 = time.perf_counter()
c1 = time.process_time()
so = ort.SessionOptions()
so.intra_op_num_threads = so.inter_op_num_threads = 1
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
print(json.dumps({"imports": t1 - t0, "compile": time.perf_counter() - t1,
                  "cpu": time.process_time() - c1, "what": "onnxruntime session creation"}))
"""

_PROBE = """
import json, time
import numpy as np
from tessera.runtime.scratch import small_pages
a, b = np.random.default_rng(0).standard_normal((2, 1024, 1024), dtype=np.float32)
def gemm_seconds():
    c = time.process_time()
    a @ b
    return time.process_time() - c
gemm_seconds()
best = min(gemm_seconds() for _ in range(5))
with small_pages():
    c = time.process_time()
    m = np.ones(1 << 26, np.float32)  # 256 MB, first touch
    touch = time.process_time() - c
print(json.dumps({"gflops": 2 * 1024 ** 3 / best / 1e9, "touch_gbs": m.nbytes / touch / 1e9}))
"""


def _model_path(name: str, tmp: Path) -> Path:
    for p in zoo.light_models():
        if p.stem == name:
            return p
    builder = getattr(zoo, name, None)
    if builder is None or not callable(builder):
        raise SystemExit(f"unknown model {name!r}: a zoo builder or one of "
                         f"{[p.stem for p in zoo.light_models()]}")
    path = tmp / f"{name}.onnx"
    onnx.save(builder(), path)
    return path


def _importable(module: str) -> bool:
    probe = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
    return probe.returncode == 0


def _run(code: str, model: Path, core: int) -> dict:
    """``code`` in a fresh, single-core process with an empty cache; its JSON line."""
    with tempfile.TemporaryDirectory(prefix="tsr-cold-") as cache:
        env = {**os.environ, "TESSERA_CACHE": cache, "OMP_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TVM_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True,
                              text=True, env=env,
                              preexec_fn=lambda: os.sched_setaffinity(0, {core}))
    if proc.returncode:
        raise SystemExit(f"compile of {model} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median_range(runs: list[dict], key: str) -> tuple[float, float, float]:
    vals = [r[key] for r in runs]
    return statistics.median(vals), min(vals), max(vals)


def _fmt(mrr: tuple[float, float, float], width: int) -> str:
    """``median (min-max)``; the median alone for one run."""
    med, lo, hi = mrr
    if lo == hi:
        return f"{med:{width}.2f}" + " " * 13
    return f"{med:{width}.2f} ({lo:4.2f}-{hi:5.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,light_resnet50,light_vgg19")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds: each a speed probe and one fresh run of every model")
    ap.add_argument("--core", type=int, default=min(os.sched_getaffinity(0)),
                    help="the CPU core every run is pinned to")
    args = ap.parse_args()
    if args.repeat < 1:
        raise SystemExit(f"--repeat must be at least 1, not {args.repeat}")
    names = list(filter(None, args.models.split(",")))
    ref_code = _TVM if _importable("tvm") else _ORT
    print(f"cold cache, fresh process, core {args.core}, {args.repeat} round(s): median "
          f"(min-max); reference: "
          f"{'TVM relay.build llvm' if ref_code is _TVM else 'onnxruntime session creation'}")
    ours: dict[str, list[dict]] = {n: [] for n in names}
    refs: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {n: _model_path(n, Path(tmp)) for n in names}
        for r in range(args.repeat):
            probe = _run(_PROBE, paths[names[0]], args.core) if names else {}
            line = []
            for name in names:
                run = _run(_TESSERA, paths[name], args.core)
                ours[name].append(run)
                refs[name].append(_run(ref_code, paths[name], args.core))
                line.append(f"{name} {run['cpu']:.2f}")
            print(f"round {r + 1}: probe sgemm {probe.get('gflops', float('nan')):.0f} GFLOP/s "
                  f"(one thread), fresh memory {probe.get('touch_gbs', float('nan')):.2f} GB/s; "
                  f"cpu s: " + ", ".join(line), flush=True)
    print(f"{'model':16s} {'cpu s (range)':>19s} {'target':>6s} {'tessera s':>9s} {'plan cpu':>8s} "
          f"{'target':>6s} {'calib cpu':>9s} {'bc cpu':>6s} {'ref s':>6s} {'ratio':>6s} "
          f"{'imports':>7s}  phases (s, median run)")
    for name in names:
        runs = ours[name]
        for run in runs:
            parts = run.get("cpu_phases", {})
            run["calibration"] = parts.get("calibration", float("nan"))
            run["bias_correction"] = parts.get("bias_correction", float("nan"))
        mid = sorted(runs, key=lambda x: x["cpu"])[(len(runs) - 1) // 2]
        top = sorted(mid["phases"].items(), key=lambda kv: -kv[1])[:4]
        ref = statistics.median(x["compile"] for x in refs[name])
        wall = statistics.median(x["compile"] for x in runs)
        print(f"{name:16s} {_fmt(_median_range(runs, 'cpu'), 6)} "
              f"{TARGETS.get(name, float('nan')):6.1f} {wall:9.2f} "
              f"{statistics.median(x['plan_cpu'] for x in runs):8.2f} "
              f"{PLAN_TARGETS.get(name, float('nan')):6.1f} "
              f"{statistics.median(x['calibration'] for x in runs):9.2f} "
              f"{statistics.median(x['bias_correction'] for x in runs):6.2f} "
              f"{ref:6.2f} {wall / ref:5.1f}x "
              f"{statistics.median(x['imports'] for x in runs):7.2f}  "
              + ", ".join(f"{k} {v:.2f}" for k, v in top))


if __name__ == "__main__":
    main()
