"""The ``tessera`` command line: each layer registers its own subcommands."""

from __future__ import annotations

import argparse
import importlib
import sys

from tessera.config import Config
from tessera.errors import DeviceError, HwError, InputError, SimError, TesseraError
from tessera.files import read_regular

# Exit codes (documented in ``tessera --help`` and the README).
EXIT_OK, EXIT_USAGE, EXIT_INPUT, EXIT_DEVICE, EXIT_CHECK_FAILED = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130
EXIT_CODES = f"""exit codes:
  {EXIT_OK}    success
  {EXIT_USAGE}    usage error: unknown command or option, missing or malformed argument
  {EXIT_INPUT}    bad input: a model, compiled model, config, instruction stream, input or
       calibration file, or output path that Tessera rejects (the message says what and where)
  {EXIT_DEVICE}    the device or a hardware tool failed (device error or timeout, build,
       synthesis)
  {EXIT_CHECK_FAILED}    a check failed (tessera demo: results differ from the reference)
  {EXIT_INTERRUPTED}  interrupted"""

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
    data = read_regular(args.file, "instruction stream", InputError, max_bytes=1 << 28)
    print(isa.disassemble(data, cfg))
    return 0


def _config(args: argparse.Namespace) -> int:
    cfg = Config.resolve(args.name)
    print(cfg.to_json(), end="")
    print(f"# {cfg.summary()}", file=sys.stderr)
    return 0


class _Usage(Exception):
    """A usage error (argparse's), reported by :func:`main` with :data:`EXIT_USAGE`."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D102 - argparse's hook
        raise _Usage(f"{self.format_usage().rstrip()}\n{self.prog}: error: {message}")


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
    parser = _Parser(prog="tessera", description=__doc__, epilog=EXIT_CODES,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
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
    """Run the ``tessera`` command; returns its exit code (see :data:`EXIT_CODES`). A
    documented error prints one ``tessera: error: ...`` message, never a traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser(_command(argv)).parse_args(argv)
    except _Usage as exc:
        print(exc, file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help, --version
        return int(exc.code or 0)
    try:
        return int(args.func(args) or 0)
    except (DeviceError, SimError, HwError) as exc:
        print(f"tessera: error: {exc}", file=sys.stderr)
        return EXIT_DEVICE
    except TesseraError as exc:
        print(f"tessera: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("tessera: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
