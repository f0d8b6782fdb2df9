"""``tessera explore``: the command line of :func:`tessera.compiler.explore.explore`."""

from __future__ import annotations

import argparse
import time
from typing import Any

from tessera.compiler.explore.evaluate import model_names
from tessera.compiler.explore.space import CONFIG_FIELDS, DRAM_KNOBS

__all__ = ["register", "format_table"]


def _fmt(v: Any, spec: str = "") -> str:
    if v is None:
        return "-"
    return format(v, spec) if spec else str(v)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The result rows as a fixed-width table (errors abbreviated on their own lines)."""
    head = (f"{'model':<14} {'config':<40} {'lat':>4} {'bw':>4} {'cycles':>11} {'util':>6} "
            f"{'LUT4':>7} {'FF':>6} {'BRAM':>5} {'DSP':>5} {'Fmax':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        util = f"{100 * r['utilisation']:.1f}%" if r["utilisation"] is not None else "-"
        lines.append(
            f"{r['model'][:14]:<14} {(r['label'] or '')[:40]:<40} {r['read_latency']:>4} "
            f"{r['beats_per_cycle']:>4g} {_fmt(r['cycles'], ','):>11} {util:>6} "
            f"{_fmt(r['lut'], ','):>7} {_fmt(r['ff'], ','):>6} {_fmt(r['bram']):>5} "
            f"{_fmt(r['dsp']):>5} {_fmt(r['fmax_mhz'], '.1f'):>6}")
        if r["error"]:
            lines.append(f"    error: {r['error'][:200]}")
    return "\n".join(lines)


def _models(items: list[str]) -> list[str]:
    out: list[str] = []
    for item in items:
        out += [m.strip() for m in item.split(",") if m.strip()]
    return out


def _cmd_explore(args: argparse.Namespace) -> int:
    from tessera.compiler.explore.sweep import explore

    t0 = time.perf_counter()
    rows = explore(_models(args.models), args.grid or [], random=args.random, seed=args.seed,
                   config=args.config, area=args.area, fmax=args.fmax,
                   device="verilator" if args.rtl else "fsim", db=args.db, plot=args.plot,
                   scheduler=args.scheduler, jobs=args.jobs, progress=not args.quiet,
                   retry_failed=args.retry_failed, synth_timeout=args.synth_timeout)
    print(format_table(rows))
    failed = sum(1 for r in rows if r["error"])
    where = f"Dask at {args.scheduler}" if args.scheduler else f"{args.jobs} local process(es)"
    print(f"{len(rows)} point(s), {failed} with errors, {time.perf_counter() - t0:.1f} s on "
          f"{where}" + (f"; results in {args.db}" if args.db else "")
          + (f"; plot {args.plot}" if args.plot else ""))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``explore`` command."""
    p = sub.add_parser(
        "explore", help="sweep models over configs and DRAM timings: cycles, area, Fmax",
        description="Sweep models over accelerator configs (any Config field) and DRAM timings; "
                    "cycles come from fsim's cycle model (or the RTL with --rtl).")
    p.add_argument("--models", action="append", required=True,
                   help=f"zoo names ({', '.join(model_names())}) or .onnx paths, "
                        f"comma-separated or repeated")
    p.add_argument("--grid", action="append", metavar="FIELD=V1,V2,...",
                   help=f"values of a Config field ({', '.join(CONFIG_FIELDS)}) or DRAM knob "
                        f"({', '.join(DRAM_KNOBS)}); repeatable, the product is swept")
    p.add_argument("--random", type=int, default=0, metavar="N",
                   help="N seeded random valid configs (crossed with --grid)")
    p.add_argument("--seed", type=int, default=0, help="seed of --random and of the inputs")
    p.add_argument("--config", default="default", help="base preset or config JSON of --grid")
    p.add_argument("--area", action="store_true",
                   help="Yosys synth_ecp5 LUT/FF/BRAM/DSP per config (cached)")
    p.add_argument("--fmax", action="store_true",
                   help="nextpnr-ecp5 routed Fmax per config, out of context (cached; slow)")
    p.add_argument("--rtl", action="store_true", help="measure cycles on Verilator")
    p.add_argument("--db", metavar="FILE.sqlite", help="results table (resumable)")
    p.add_argument("--plot", metavar="FILE.png", help="Pareto front of cycles against LUTs")
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help="run on this Dask distributed scheduler instead of local processes")
    p.add_argument("--jobs", type=int, default=1, help="local worker processes (default 1)")
    p.add_argument("--retry-failed", action="store_true",
                   help="re-run points the database holds with an error")
    p.add_argument("--synth-timeout", type=float, default=None, metavar="S",
                   help="seconds per Yosys/nextpnr run")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_explore)
