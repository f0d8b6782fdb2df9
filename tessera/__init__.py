"""Tessera: an open hardware-software co-design stack for a VTA-style int8 accelerator."""

from tessera.config import PRESETS, Config
from tessera.errors import (
    ArtifactError,
    CompileError,
    ConfigError,
    DeviceError,
    HwError,
    IsaError,
    ProgramError,
    SimError,
    TesseraError,
)

__all__ = [
    "Config", "PRESETS", "TesseraError", "ConfigError", "IsaError", "SimError", "DeviceError",
    "ProgramError", "HwError", "CompileError", "ArtifactError",
]
__version__ = "0.1.0"
