"""Loading a saved model: validation plus CPU-kernel regeneration, cold and warm kernel cache.

    python bench/load.py [--model resnet18] [--config default]

Compiles the model once and saves it, then in fresh processes loads it with an empty kernel
cache (every CPU kernel regenerated and compiled by LLVM) and again with the cache that run
filled (kernels regenerated and validated, machine code from disk). Prints both load times,
their ratio, how many LLVM compilations each did, and the model's compile time as the
reference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from tessera.compiler import zoo
from tessera.compiler.api import compile as tcompile

CHILD = """
import json, sys, time
t0 = time.perf_counter()
import tessera
from tessera.runtime.cpu.jit import default_engine
t1 = time.perf_counter()
model = tessera.load(sys.argv[1])
t2 = time.perf_counter()
stats = default_engine().stats
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "compiles": stats.compiles,
                  "disk_hits": stats.disk_hits, "cpu_steps": sum(s.kind == "cpu"
                                                                for s in model.plan.steps)}))
"""


def _load_in_child(path: str, cache: str) -> dict:
    env = {**os.environ, "TESSERA_CACHE": cache}
    out = subprocess.run([sys.executable, "-c", CHILD, path], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--config", default="default")
    args = ap.parse_args()
    proto = getattr(zoo, args.model)()
    inp = proto.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    cal = [{inp.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(2)]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model = tcompile(proto, config=args.config, calibration=cal)
        t_compile = time.perf_counter() - t0
        path = os.path.join(tmp, "model.tsr")
        model.save(path)
        cache = os.path.join(tmp, "cache")
        cold = _load_in_child(path, cache)
        warm = _load_in_child(path, cache)
        size = os.path.getsize(path)
    print(f"{args.model} on {args.config}: {size} bytes, "
          f"{cold['cpu_steps']} CPU steps; compile (reference) {t_compile:.2f} s")
    print(f"load, cold kernel cache: {cold['load_s']:.3f} s ({cold['compiles']} LLVM "
          f"compilations)")
    print(f"load, warm kernel cache: {warm['load_s']:.3f} s ({warm['compiles']} LLVM "
          f"compilations, {warm['disk_hits']} from disk)")
    print(f"cold / warm: {cold['load_s'] / max(warm['load_s'], 1e-9):.1f}x; "
          f"warm load / compile: {warm['load_s'] / t_compile:.2f}")


if __name__ == "__main__":
    main()
