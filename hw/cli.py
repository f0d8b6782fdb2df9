"""``tessera hw …`` subcommands: ``hw verilog`` and ``hw synth``."""

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


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``hw`` command (with ``verilog`` and ``synth``) to a CLI's subparsers."""
    hw = subparsers.add_parser("hw", help="hardware generation and area estimates")
    sub = hw.add_subparsers(dest="hw_cmd", required=True)
    v = sub.add_parser("verilog", help="generate the core's Verilog (top tessera_core)")
    v.add_argument("--config", default="default", help="preset name or JSON config path")
    v.add_argument("-o", "--output", required=True, help="output directory")
    v.set_defaults(func=_verilog)
    s = sub.add_parser("synth", help="Yosys synth_ecp5 area estimate (LUT4/FF/DP16KD/MULT18)")
    s.add_argument("--config", default="default", help="preset name or JSON config path")
    s.add_argument("--timeout", type=float, default=None, help="seconds before giving up")
    s.set_defaults(func=_synth)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tessera")
    register(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
