"""Command-line surface of the compiler: ``compile`` and ``demo``."""

from __future__ import annotations

import argparse
import io
import sys
import time

import numpy as np

from tessera.errors import ArtifactError, CompileError, InputError
from tessera.files import check_writable, read_regular

COMMANDS = ("compile", "demo")
DEMO_MODELS = ("resnet_tiny", "mobilenet_tiny", "small_cnn", "mlp", "resnet18", "mobilenet_v1")


def _input_shapes(items: list[str] | None) -> dict[str, list[int]] | None:
    if not items:
        return None
    out = {}
    for item in items:
        name, _, dims = item.partition("=")
        try:
            out[name] = [int(d) for d in dims.split(",")]
        except ValueError:
            raise CompileError(
                f"--input-shape must look like NAME=1,3,224,224, not {item!r}") from None
    return out


def _load_calibration(path: str | None):
    if path is None:
        return None
    raw = read_regular(path, "calibration file", InputError)
    try:
        data = np.load(io.BytesIO(raw), allow_pickle=False)
        if not hasattr(data, "files"):
            raise ValueError("it holds one array, not an .npz archive of one array per input")
        arrays = {n: data[n] for n in data.files}
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"cannot read calibration file {path!r}: {exc}") from None
    if not arrays:
        raise InputError(f"calibration file {path!r} holds no arrays")
    bad = [n for n, a in arrays.items() if a.ndim == 0]
    if bad:
        raise InputError(f"calibration arrays in {path!r} need a batch axis; {bad} are scalars")
    counts = {len(a) for a in arrays.values()}
    if len(counts) != 1:
        raise InputError(f"calibration arrays in {path!r} must share their first (batch) "
                         f"dimension; got {sorted(counts)}")
    return [{n: a[i] for n, a in arrays.items()} for i in range(counts.pop())]


def _cmd_compile(args: argparse.Namespace) -> int:
    from tessera.compiler.api import compile as tcompile

    check_writable(args.output, "compiled model", ArtifactError)  # before any work
    calibration = _load_calibration(args.calibration)
    t0 = time.perf_counter()
    model = tcompile(args.model, config=args.config,
                     calibration=calibration,
                     input_shapes=_input_shapes(args.input_shape), dump_ir=args.dump_ir,
                     double_buffer=not args.no_double_buffer,
                     calibration_method=args.calibration_method,
                     activations=args.activations, keep_float=args.keep_float or (),
                     tune=args.tune)
    model.save(args.output)
    if model.meta.get("calibration", "given").startswith("random"):
        print(f"warning: no --calibration given; calibrated on {model.meta['calibration']}",
              file=sys.stderr)
    print(f"compiled {args.model} in {time.perf_counter() - t0:.2f} s: {model.summary()}")
    print(f"wrote {args.output}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compile", help="compile an ONNX model to a .tsr file")
    p.add_argument("model", help="ONNX file")
    p.add_argument("-o", "--output", required=True, help="output .tsr file")
    p.add_argument("--config", default="default", help="preset name or config JSON path")
    p.add_argument("--calibration", help=".npz with one array per input, batches on axis 0")
    p.add_argument("--input-shape", action="append", help="NAME=1,3,224,224 (repeatable)")
    p.add_argument("--dump-ir", action="append", help="print the IR after this pass ('all')")
    p.add_argument("--no-double-buffer", action="store_true")
    p.add_argument("--tune", type=int, nargs="?", const=8, default=0, metavar="N",
                   help="search tilings more widely and rank the N best (default 8) per layer "
                        "with the cycle model of the RTL")
    p.add_argument("--calibration-method", default="mse",
                   choices=("mse", "entropy", "percentile", "minmax"))
    p.add_argument("--activations", default="auto", choices=("auto", "symmetric", "asymmetric"))
    p.add_argument("--keep-float", action="append", metavar="NODE",
                   help="keep this node float inside the int8 model (repeatable)")
    p.set_defaults(func=_cmd_compile)
    p = sub.add_parser("demo", help="compile a bundled model, run it on fsim and the RTL, "
                                    "compare with onnxruntime, print a per-layer table")
    p.add_argument("--model", default="resnet18", choices=DEMO_MODELS)
    p.add_argument("--config", default="default")
    p.add_argument("--no-rtl", action="store_true", help="skip the Verilator run")
    p.add_argument("--out", default=None, help="also save the compiled model here")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from tessera.compiler.demo import demo

    return demo(args.model, args.config, rtl=not args.no_rtl, out=args.out)


