"""Exception types, one per layer.

Every error a user can cause surfaces as one of these, with a message that says what was wrong and
where. Lower layers raise their own type; a layer that calls another may wrap it but never
swallows it.
"""

from __future__ import annotations


class TesseraError(Exception):
    """Base class of every error Tessera raises on purpose."""


class ConfigError(TesseraError, ValueError):
    """A hardware configuration is malformed (wrong type, out of range, does not fit the ISA)."""


class IsaError(TesseraError, ValueError):
    """An instruction or micro-op field cannot be encoded or decoded."""


class SimError(TesseraError):
    """The functional simulator rejected a program.

    ``code`` is the SPEC §6 error code (1..7, 7 a token deadlock) or None for races and DMA
    faults; ``pc`` is the index of the offending instruction, or None.
    """

    def __init__(self, message: str, code: int | None = None, pc: int | None = None):
        super().__init__(message)
        self.code = code
        self.pc = pc


class DeviceError(TesseraError):
    """A device reported an error, timed out, or was used wrongly from the host.

    ``code`` and ``pc`` are the SPEC §6 ERROR_CODE and ERROR_PC for device errors, and both None
    for a timeout, a race or a host-side error (a token deadlock is code 7).
    """

    def __init__(self, message: str, code: int | None = None, pc: int | None = None):
        super().__init__(message)
        self.code = code
        self.pc = pc


class ProgramError(TesseraError, ValueError):
    """The runtime's command-stream builder was asked for something the hardware cannot do."""


class HwError(TesseraError):
    """Hardware generation, simulation build or synthesis failed."""


class CompileError(TesseraError):
    """A model cannot be compiled; lists every offending node."""


class ArtifactError(TesseraError):
    """A compiled-model file is truncated, foreign or of an unknown format version."""


class KernelError(TesseraError, ValueError):
    """A CPU kernel cannot be generated or called: unknown operator, or attributes, shapes or
    dtypes its generator rejects."""


class InputError(TesseraError, ValueError):
    """A run-time input (a feed, a calibration batch, an input file) is missing, of the wrong
    shape or dtype, or not finite."""


class ExploreError(TesseraError):
    """A design-space sweep cannot run as asked: no models, an empty space, a plot without
    area figures, an unreachable Dask scheduler."""
