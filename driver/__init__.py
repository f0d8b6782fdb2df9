"""Device drivers: one protocol (SPEC §7), backends chosen by a plain mapping of kind names."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from tessera.config import Config
from tessera.driver.alloc import Buffer
from tessera.driver.base import Device, RunStats
from tessera.errors import DeviceError

__all__ = ["open_device", "device_options", "unknown_option", "Device", "Buffer", "RunStats",
           "DeviceError", "BACKENDS"]

# kind -> "module:ClassName"; imported on first use so that e.g. fsim never loads Verilator.
BACKENDS: dict[str, str] = {
    "fsim": "tessera.driver.fsim:FsimDevice",
    "verilator": "tessera.driver.verilator:VerilatorDevice",
    "soc-sim": "tessera.driver.soc_sim:SocSimDevice",
    "board": "tessera.driver.board:BoardDevice",
}


def _backend(kind: str) -> type[Device]:
    if kind not in BACKENDS:
        raise DeviceError(f"unknown device kind {kind!r}; known kinds: {', '.join(BACKENDS)}")
    module_name, cls_name = BACKENDS[kind].split(":")
    return getattr(importlib.import_module(module_name), cls_name)


def device_options(kind: str) -> tuple[str, ...]:
    """The keyword options :func:`open_device` takes for ``kind`` (its backend's parameters)."""
    params = inspect.signature(_backend(kind)).parameters
    return tuple(n for n, p in params.items() if p.kind == p.KEYWORD_ONLY
                 or (p.kind == p.POSITIONAL_OR_KEYWORD and n != "config"))


def open_device(kind: str, config: Config | str | None = None, **options: Any) -> Device:
    """A new, independent device of ``kind`` (``"fsim"``, ``"verilator"``, ``"soc-sim"``,
    ``"board"``) for ``config``; an option the backend does not take is a DeviceError."""
    problem = unknown_option(kind, options)
    if problem:
        raise DeviceError(problem)
    return _backend(kind)(Config.resolve(config), **options)


def unknown_option(kind: str, options: Mapping[str, Any]) -> str | None:
    """What is wrong with ``options`` for a device of ``kind`` (the first option its backend
    does not take), or None."""
    known = device_options(kind)
    unknown = sorted(set(options) - set(known))
    if not unknown:
        return None
    return (f"device kind {kind!r} has no option {unknown[0]!r}; its options are "
            f"{', '.join(known) or 'none'}")
