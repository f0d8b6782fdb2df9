"""The ``tessera`` command line: each layer registers its own subcommands."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from tessera.config import Config
from tessera.errors import TesseraError

# Modules that add subcommands through ``register(subparsers)``, in help order.
SUBCOMMAND_MODULES = ("tessera.compiler.cli", "tessera.hw.cli")


def _disasm(args: argparse.Namespace) -> int:
    from tessera import isa

    cfg = Config.resolve(args.config)
    data = Path(args.file).read_bytes()
    print(isa.disassemble(data, cfg))
    return 0


def _config(args: argparse.Namespace) -> int:
    cfg = Config.resolve(args.name)
    print(cfg.to_json(), end="")
    print(f"# {cfg.summary()}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tessera", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("disasm", help="disassemble a raw instruction stream (16 bytes each)")
    p.add_argument("file")
    p.add_argument("--config", default="default", help="preset name or config JSON path")
    p.set_defaults(func=_disasm)
    p = sub.add_parser("config", help="print a preset (or JSON config) with derived sizes")
    p.add_argument("name", nargs="?", default="default")
    p.set_defaults(func=_config)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # that layer has no command-line surface in this build
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TesseraError as exc:
        print(f"tessera: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
