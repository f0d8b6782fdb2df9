"""Whole networks: compile time, fsim and RTL wall time, per-layer cycles and GEMM utilisation.

    python bench/networks.py [--models resnet18,mobilenet_v1] [--rtl resnet18] [--config default]

For each model: compile (seeded calibration), run one held-out input on fsim and, for the models
named by ``--rtl``, on the RTL; check the RTL's outputs equal fsim's; print the per-layer table
(cycles per layer from the RTL run), the accelerator's share of MACs and the wall times.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from tessera.compiler import zoo
from tessera.compiler.api import compile as tcompile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,mobilenet_v1")
    ap.add_argument("--rtl", default="resnet18", help="models also run on Verilator")
    ap.add_argument("--config", default="default")
    ap.add_argument("--calibration", type=int, default=4, help="calibration batches")
    args = ap.parse_args()
    rtl = set(filter(None, args.rtl.split(",")))
    for name in filter(None, args.models.split(",")):
        proto = getattr(zoo, name)()
        inp = proto.graph.input[0]
        shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        rng = np.random.default_rng(0)
        cal = [{inp.name: rng.standard_normal(shape).astype(np.float32)}
               for _ in range(args.calibration)]
        x = {inp.name: rng.standard_normal(shape).astype(np.float32)}
        t0 = time.perf_counter()
        model = tcompile(proto, config=args.config, calibration=cal)
        t_compile = time.perf_counter() - t0
        print(f"== {name}: compiled in {t_compile:.2f} s ({args.calibration} calibration "
              f"batches): {model.summary()}")
        t0 = time.perf_counter()
        want, prof = model.run(x, device="fsim", profile=True)
        t_fsim = time.perf_counter() - t0
        print(f"fsim run: {t_fsim:.2f} s")
        if name in rtl:
            t0 = time.perf_counter()
            got, prof = model.run(x, device="verilator", profile=True)
            t_rtl = time.perf_counter() - t0
            same = all(np.array_equal(a, b) for a, b in zip(got, want))
            cycles = prof.totals()["cycles"]
            print(f"RTL run: {t_rtl:.2f} s, {cycles} cycles "
                  f"({cycles / t_rtl:,.0f} cycles/s); outputs equal fsim: {same}")
        print(prof.table())
        model.close()
        print()


if __name__ == "__main__":
    main()
