"""ONNX node conformance on the curated CNN op families: Tessera beside onnxruntime, same run.

    python bench/onnx_conformance.py [--families conv resize ...] [--failures]

Prints, per family, the number of selected cases, onnxruntime's passes, Tessera's passes and
how many of onnxruntime's passes Tessera also passes (the selection rule is in
``tessera.compiler.conformance``). ``--failures`` lists the cases onnxruntime passes and Tessera
does not, with the reason.
"""

from __future__ import annotations

import argparse
import time

import onnxruntime.backend as ort_backend

import tessera.onnx_backend as tessera_backend
from tessera.compiler.conformance import FAMILIES, run_cases, select_cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", nargs="*", choices=sorted(FAMILIES))
    ap.add_argument("--failures", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    cases = select_cases(args.families)
    t1 = time.perf_counter()
    ort = {o.name: o for o in run_cases(ort_backend, cases)}
    t2 = time.perf_counter()
    ours = {o.name: o for o in run_cases(tessera_backend, cases)}
    t3 = time.perf_counter()
    print(f"{'family':<14}{'cases':>7}{'onnxruntime':>13}{'tessera':>9}{'both':>7}")
    total = [0, 0, 0, 0]
    for fam in FAMILIES:
        names = [c.name for c in cases if c.family == fam]
        if not names:
            continue
        row = [len(names), sum(ort[n].passed for n in names), sum(ours[n].passed for n in names),
               sum(ort[n].passed and ours[n].passed for n in names)]
        total = [a + b for a, b in zip(total, row)]
        print(f"{fam:<14}" + "".join(f"{v:>{w}}" for v, w in zip(row, (7, 13, 9, 7))))
    print(f"{'all':<14}" + "".join(f"{v:>{w}}" for v, w in zip(total, (7, 13, 9, 7))))
    print(f"Tessera passes {total[3]} of the {total[1]} cases onnxruntime passes "
          f"({100 * total[3] / max(total[1], 1):.1f}%); selection {t1 - t0:.1f} s, onnxruntime "
          f"{t2 - t1:.1f} s, Tessera {t3 - t2:.1f} s")
    if args.failures:
        for n in sorted(ours):
            if ort[n].passed and not ours[n].passed:
                print(f"  {n}: {ours[n].detail}")


if __name__ == "__main__":
    main()
