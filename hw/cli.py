"""``tessera hw …`` subcommands: ``verilog``, ``synth``, ``bitstream`` and ``program``."""

from __future__ import annotations

import argparse
import sys

from tessera.config import Config

__all__ = ["register"]


def _verilog(args: argparse.Namespace) -> int:
    from tessera.hw.verilog import write_verilog

    cfg = Config.resolve(args.config)
    path = write_verilog(cfg, args.output)
    print(f"wrote {path} ({cfg.summary()})")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from tessera.hw.synth import format_report, synthesize

    cfg = Config.resolve(args.config)
    report = synthesize(cfg, timeout=args.timeout)
    print(format_report(report))
    return 0 if report.fits else 1


def _bitstream(args: argparse.Namespace) -> int:
    from tessera.hw.boards.bitstream import build_bitstream, format_report

    cfg = Config.resolve(args.config)
    report = build_bitstream(cfg, args.board, args.output, seed=args.seed,
                             progress=lambda line: print(line, flush=True),
                             timeout=args.timeout)
    print(format_report(report))
    print(f"wrote {report.bitstream} (reports: report.txt, report.json)")
    return 0


def _program(args: argparse.Namespace) -> int:
    from tessera.hw.boards.program import program

    out = program(args.board, args.bitstream, flash=args.flash)
    print(out.strip())
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``hw`` command (``verilog``, ``synth``, ``bitstream``, ``program``)."""
    hw = subparsers.add_parser("hw", help="hardware generation, area, bitstreams, programming")
    sub = hw.add_subparsers(dest="hw_cmd", required=True)
    v = sub.add_parser("verilog", help="generate the core's Verilog (top tessera_core)")
    v.add_argument("--config", default="default", help="preset name or JSON config path")
    v.add_argument("-o", "--output", required=True, help="output directory")
    v.set_defaults(func=_verilog)
    s = sub.add_parser("synth", help="Yosys synth_ecp5 area estimate (LUT4/FF/DP16KD/MULT18)")
    s.add_argument("--config", default="default", help="preset name or JSON config path")
    s.add_argument("--timeout", type=float, default=None, help="seconds before giving up")
    s.set_defaults(func=_synth)
    b = sub.add_parser("bitstream", help="build a board's SoC bitstream (yosys, nextpnr-ecp5, "
                                         "ecppack from PyPI)")
    b.add_argument("--board", default="ulx3s", help="board name (ulx3s)")
    b.add_argument("--config", default="ulx3s", help="preset name or JSON config path")
    b.add_argument("-o", "--output", required=True, help="build directory")
    b.add_argument("--seed", type=int, default=1, help="nextpnr placement seed")
    b.add_argument("--timeout", type=float, default=None, help="seconds per tool")
    b.set_defaults(func=_bitstream)
    p = sub.add_parser("program", help="load a bitstream into a board (openFPGALoader)")
    p.add_argument("bitstream", help=".bit file, or a `hw bitstream` build directory")
    p.add_argument("--board", default="ulx3s", help="board name (ulx3s)")
    p.add_argument("--flash", action="store_true", help="write the configuration flash")
    p.set_defaults(func=_program)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tessera")
    register(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
