"""The ``tessera`` command line: each layer registers its own subcommands."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from tessera.config import Config
from tessera.errors import TesseraError

# Modules that add subcommands through ``register(subparsers)``, in help order, and the
# commands each registers: a command imports only its own module, so ``tessera run`` never
# imports the compiler. (tests/unit/test_driver_cli.py checks the two agree.)
SUBCOMMAND_MODULES = {
    "tessera.compiler.cli": ("compile", "demo"),
    "tessera.runtime.cli": ("run", "profile"),
    "tessera.hw.cli": ("hw",),
    "tessera.compiler.explore.cli": ("explore",),
}


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


def _modules_for(command: str | None) -> list[str]:
    """The subcommand modules to import for ``command`` (all of them when unknown)."""
    for module, commands in SUBCOMMAND_MODULES.items():
        if command in commands:
            return [module]
    return list(SUBCOMMAND_MODULES)


def _missing_layer(exc: ModuleNotFoundError, module: str) -> bool:
    """Whether ``exc`` says that ``module`` (or a package above it) is not installed."""
    name = exc.name or ""
    return module == name or module.startswith(name + ".")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``tessera`` argument parser, with the subcommands of ``command``'s layer (every
    layer's when ``command`` is None or unknown)."""
    parser = argparse.ArgumentParser(prog="tessera", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("disasm", help="disassemble a raw instruction stream (16 bytes each)")
    p.add_argument("file")
    p.add_argument("--config", default="default", help="preset name or config JSON path")
    p.set_defaults(func=_disasm)
    p = sub.add_parser("config", help="print a preset (or JSON config) with derived sizes")
    p.add_argument("name", nargs="?", default="default")
    p.set_defaults(func=_config)
    builtins = {"disasm", "config"}
    for name in _modules_for(None if command in builtins else command):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if not _missing_layer(exc, name):
                raise
            continue  # that layer is not installed in this build
        module.register(sub)
    return parser


def _command(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (its first non-option argument), if any."""
    for a in argv:
        if not a.startswith("-"):
            return a
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(_command(argv)).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TesseraError as exc:
        print(f"tessera: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
