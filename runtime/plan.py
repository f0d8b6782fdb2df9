"""The plan: what the runtime executes and what a compiled-model file stores.

A :class:`Plan` is device memory *slots* (tensors in a layout, placed in the arena — where
activations live, reused by liveness — or in the params region) and a flat list of *steps* in
graph order: accelerator layers (an instruction stream and its micro-ops, one device run each)
and CPU operators (:class:`~tessera.runtime.cpu.op.CpuOp`, kernel calls on the arena).
Accelerator streams address memory through the virtual region bases :data:`REGION_BASES`, which
the executor relocates onto the device's real buffers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tessera.config import Config
from tessera.isa import INSN_BYTES
from tessera.runtime.cpu.op import CpuOp

__all__ = ["Slot", "AccelStep", "CpuStep", "Plan", "REGION_BASES", "REGION_LIMIT", "ALIGN",
           "LAYOUTS", "REGIONS"]

# Virtual base addresses of the regions accelerator code refers to; each region < 512 MiB.
REGION_BASES = {"arena": 0x2000_0000, "params": 0x4000_0000}
REGIONS = tuple(REGION_BASES)
REGION_LIMIT = 0x2000_0000
ALIGN = 4096  # arena slots start on this boundary
# "nchw": a plain row-major tensor; "blocked": SPEC §2's packed layout; "raw": a parameter array
LAYOUTS = ("nchw", "blocked", "raw")


@dataclass
class Slot:
    """A tensor in device memory. ``shape`` and ``dtype`` are those of the array as stored (the
    packed shape for a ``blocked`` slot), ``nbytes`` its size."""

    name: str
    region: str
    offset: int
    nbytes: int
    shape: tuple[int, ...]
    dtype: str
    layout: str = "nchw"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "region": self.region, "offset": self.offset,
                "nbytes": self.nbytes, "shape": list(self.shape), "dtype": self.dtype,
                "layout": self.layout}


@dataclass
class AccelStep:
    """One accelerator layer: a stream of its own (ends in FINISH) plus its micro-op area."""

    name: str
    op: str
    inputs: list[str]
    outputs: list[str]
    code: bytes  # encoded instructions; DRAM addresses virtual (REGION_BASES)
    uop_words: bytes
    uop_load_pcs: list[int]
    info: dict[str, Any] = field(default_factory=dict)

    kind = "accel"

    @property
    def insn_count(self) -> int:
        return len(self.code) // INSN_BYTES


@dataclass
class CpuStep:
    """One CPU operator: ``op`` reads the ``inputs`` slots (``""`` for an absent optional input)
    and writes the ``outputs`` slots."""

    name: str
    op: CpuOp
    inputs: list[str]
    outputs: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    kind = "cpu"


@dataclass
class Plan:
    config: Config
    slots: dict[str, Slot]
    steps: list[AccelStep | CpuStep]
    inputs: dict[str, str]  # graph input name -> slot name
    outputs: dict[str, str]  # graph output name -> slot name
    arena_size: int
    params: dict[str, np.ndarray]  # slot name -> stored array (already in device layout)
    params_size: int
