"""Tessera: an open hardware-software co-design stack for a VTA-style int8 accelerator."""

from tessera.config import PRESETS, Config
from tessera.errors import (
    ArtifactError,
    CompileError,
    ConfigError,
    DeviceError,
    ExploreError,
    HwError,
    InputError,
    IsaError,
    KernelError,
    ProgramError,
    SimError,
    TesseraError,
)

__all__ = [
    "Config", "PRESETS", "TesseraError", "ConfigError", "IsaError", "SimError", "DeviceError",
    "ProgramError", "HwError", "CompileError", "ArtifactError", "KernelError", "InputError",
    "ExploreError", "compile", "load", "explore",
]
__version__ = "0.1.0"


def compile(model, config=None, calibration=None, **options):  # noqa: A001 - the public name
    """Compile an ONNX model for the accelerator; see :func:`tessera.compiler.api.compile`."""
    from tessera.compiler.api import compile as _compile

    return _compile(model, config=config, calibration=calibration, **options)


def load(path):
    """Load a compiled model written by ``CompiledModel.save`` (runtime only: the compiler is
    not imported); see :func:`tessera.runtime.model.load`."""
    from tessera.runtime.model import load as _load

    return _load(path)


def explore(models, grid=None, **options):
    """Sweep models over a design space (cycles, utilisation, area, Fmax); see
    :func:`tessera.compiler.explore.sweep.explore`."""
    from tessera.compiler.explore.sweep import explore as _explore

    return _explore(models, grid, **options)
