"""Instruction field access generated from the ISA tables (``tessera.isa.layout``).

Nothing here types a bit position: every field is sliced at the ``lo``/``width`` that
:func:`tessera.isa.layout` computed for the config.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import Value
from amaranth.lib import data

from tessera.errors import HwError
from tessera.isa import Field

__all__ = ["fields", "bad_param", "Cmd", "CMD_PC_BITS", "INSN_BITS"]

INSN_BITS = 128
CMD_PC_BITS = 32  # instruction index carried with every command, for error reporting

Cmd = data.StructLayout({"insn": INSN_BITS, "pc": CMD_PC_BITS})
"""A command-queue entry: the raw instruction word and its index in the program."""


def fields(word: Value, table: tuple[Field, ...]) -> SimpleNamespace:
    """The fields of ``table`` as slices of ``word`` (signed fields as signed values)."""
    out = {}
    for f in table:
        v = word[f.lo:f.lo + f.width]
        out[f.name] = v.as_signed() if f.signed else v
    return SimpleNamespace(**out)


def bad_param(component: object, message: str) -> HwError:
    """The :class:`HwError` for a bad constructor argument of ``component``.

    The half-built component is marked used, so Amaranth does not also warn that it was never
    elaborated.
    """
    component._MustUse__silence = True
    return HwError(message)
