"""Command-line surface of the runtime: ``run`` and ``profile`` (no compiler needed)."""

from __future__ import annotations

import argparse
import io
import sys
import time

import numpy as np

from tessera.driver import BACKENDS, device_options
from tessera.errors import InputError
from tessera.files import check_writable, read_regular

COMMANDS = ("run", "profile")


def _feeds(model, inputs: list[str]) -> dict[str, np.ndarray]:
    names = model.input_names
    feeds = {}
    for item in inputs:
        name, sep, path = item.partition("=")
        if not sep:
            if len(names) != 1:
                raise InputError(f"the model has inputs {names}; use --input NAME=FILE.npy")
            name, path = names[0], item
        if name in feeds:
            raise InputError(f"input {name!r} is given twice")
        raw = read_regular(path, "input file", InputError)
        try:
            arr = np.load(io.BytesIO(raw), allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise InputError(f"cannot read input file {path!r}: {exc}") from None
        if not isinstance(arr, np.ndarray):
            raise InputError(f"input file {path!r} must hold one array (.npy), not an archive")
        feeds[name] = arr
    return feeds


def _cmd_run(args: argparse.Namespace, profile: bool = False) -> int:
    for flag in ("trace", "plot"):
        if not hasattr(args, flag):
            setattr(args, flag, None)
    from tessera.runtime.model import load

    for path, what in ((args.output, "output file"), (args.trace, "trace file"),
                       (args.plot, "plot file")):
        if path:
            check_writable(path, what, InputError)  # before any work
    options = {k: v for k, v in (("read_latency", args.read_latency),
                                 ("beats_per_cycle", args.beats_per_cycle)) if v is not None}
    for k in options:  # before any work
        if k not in device_options(args.device):
            takers = [d for d in BACKENDS if k in device_options(d)]
            raise InputError(f"--{k.replace('_', '-')} does not apply to device "
                             f"{args.device!r} (only to {', '.join(takers)})")
    model = load(args.model)
    feeds = _feeds(model, args.input)
    t0 = time.perf_counter()
    try:
        result = model.run(feeds, device=args.device, profile=profile,
                           progress=sys.stderr.isatty(), **options)
    finally:
        model.close()
    outs, prof = result if profile else (result, None)
    wall = time.perf_counter() - t0
    for name, value in zip(model.output_names, outs):
        flat = value.reshape(-1)
        print(f"{name}: {value.dtype}{list(value.shape)} "
              f"{np.array2string(flat[:8], precision=4)}{' ...' if flat.size > 8 else ''}")
    if args.output:
        np.savez(args.output, **dict(zip(model.output_names, outs)))
        print(f"wrote {args.output}")
    if prof is not None:
        print(prof.table())
        if args.trace:
            prof.write_trace(args.trace)
            print(f"wrote {args.trace} (open in ui.perfetto.dev or chrome://tracing)")
        if args.plot:
            prof.plot_roofline(args.plot)
            print(f"wrote {args.plot}")
    print(f"{args.device}: {wall:.3f} s")
    return 0


def _dram_knob(name: str, kind: type):
    """An argparse type for one DRAM timing knob, checked by the cycle model's own rules
    (``tessera.sim.timing.DramTiming``) so that a bad value is a usage error."""
    def parse(text: str):
        from tessera.errors import SimError
        from tessera.sim.timing import DramTiming

        try:
            value = kind(text)
            DramTiming(**{name: value})
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{name} must be {what}, not {text!r}") from None
        except SimError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value
    parse.__name__ = name
    return parse


def register(sub: argparse._SubParsersAction) -> None:
    for name, helptext in (("run", "run a compiled model"),
                           ("profile", "run a compiled model and print per-layer figures")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("model", help=".tsr file")
        p.add_argument("--input", action="append", required=True,
                       help="FILE.npy, or NAME=FILE.npy for several inputs")
        p.add_argument("--device", default="fsim", choices=list(BACKENDS),
                       help="device kind to run on (default fsim)")
        p.add_argument("-o", "--output", help="write the outputs to this .npz")
        p.add_argument("--read-latency", type=_dram_knob("read_latency", int),
                       help="DRAM read latency in cycles "
                       "(fsim and verilator; default 16)")
        p.add_argument("--beats-per-cycle", type=_dram_knob("beats_per_cycle", float),
                       help="DRAM data beats per cycle, "
                       "(0, 1] (fsim and verilator; default 1)")
        if name == "profile":
            p.add_argument("--trace", metavar="FILE.json",
                           help="write a Chrome/Perfetto trace of the modules' busy and "
                                "stalled intervals")
            p.add_argument("--plot", metavar="FILE.png", help="draw the per-layer roofline")
        p.set_defaults(func=(lambda a: _cmd_run(a, profile=True)) if name == "profile"
                       else _cmd_run)
