"""What every accelerator operator shares: tensor addresses, layer statistics, the parameter
arrays a layer reads and the epilogue's constant rows.

A layer's epilogue is a :class:`~tessera.runtime.accel.requant.DeviceEpilogue`; its vector
operands are int32 accumulator rows in DRAM (the ``consts`` array): first ``ob`` rows (one per
output-channel block) for every per-channel vector, then one row for every uniform vector.
The kernels load the rows of the output blocks a tile covers into the accumulator's constant
region (:func:`const_slots` gives each vector's place there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tessera.config import Config
from tessera.errors import ProgramError
from tessera.isa import MemType, elem_bytes
from tessera.runtime.accel.epilogue import Epilogue
from tessera.runtime.accel.requant import DeviceEpilogue, acc_bounds, lower_epilogue
from tessera.runtime.layout import ceil_div, pack_bias

__all__ = ["LayerAddrs", "LayerStats", "LayerParams", "element_base", "CONV_TENSORS",
           "conv_bases", "channel_rows",
           "const_slots", "layer_params", "device_epilogue"]


@dataclass(frozen=True)
class LayerAddrs:
    """Device byte addresses of a layer's tensors (for a compiled model: virtual addresses the
    executor relocates). ``consts``: the epilogue's int32 constant rows; ``residual``: an int8
    tensor shaped like the output; ``None`` where the layer has none."""

    x: int
    w: int
    y: int
    consts: int | None = None
    residual: int | None = None


@dataclass
class LayerStats:
    """What emitting one layer produced."""

    name: str
    insns: int = 0
    macs: int = 0  # useful multiply-accumulates of the layer
    hw_macs: int = 0  # MACs the GEMMs execute, including channel/batch padding
    counts: dict[str, int] = field(default_factory=dict)  # instructions per kind
    tiles: Any = None  # the operator's tile shape
    pipeline: dict[str, int] = field(default_factory=dict)  # tiles, stages, loads skipped
    traffic: dict[str, int] = field(default_factory=dict)  # DRAM bytes read / written
    # (pc in the builder's stream, epilogue pass) of every ALU instruction whose immediate is
    # an epilogue pass's operand
    imm_pcs: list[tuple[int, int]] = field(default_factory=list)

    @property
    def macs_per_insn(self) -> float:
        return self.hw_macs / self.insns if self.insns else 0.0


@dataclass(frozen=True, eq=False)
class LayerParams:
    """The device arrays a layer reads (``w``; ``consts`` when its epilogue has vector operands)
    and the epilogue program those constants belong to."""

    arrays: dict[str, np.ndarray]
    program: DeviceEpilogue


def element_base(cfg: Config, addr: int | None, mem_type, what: str) -> int:
    """DRAM element index of byte address ``addr`` (SPEC §2: element-aligned); 0 for None."""
    if addr is None:
        return 0
    eb = elem_bytes(cfg, mem_type)
    if isinstance(addr, bool) or not isinstance(addr, (int, np.integer)) or addr < 0 \
            or addr % eb:
        raise ProgramError(f"{what} address must be a non-negative multiple of {eb} bytes, "
                           f"not {addr!r}")
    return int(addr) // eb


CONV_TENSORS = (("x", MemType.INP, "conv2d input"), ("w", MemType.WGT, "conv2d weights"),
                ("y", MemType.OUT, "conv2d output"), ("consts", MemType.ACC, "conv2d constants"),
                ("residual", MemType.ACC_8BIT, "conv2d residual"))
"""Each tensor of a conv layer (a :class:`LayerAddrs` field), the one memory type its stream
moves it with, and its name in errors."""


def conv_bases(cfg: Config, addrs: LayerAddrs) -> tuple[int, ...]:
    """The DRAM element bases of ``addrs``' tensors, in :data:`CONV_TENSORS` order."""
    return tuple(element_base(cfg, getattr(addrs, f), mt, what) for f, mt, what in CONV_TENSORS)


def channel_rows(cfg: Config, values: np.ndarray, channels: int, what: str) -> np.ndarray:
    """Per-output-channel int32 values as accumulator rows ``(O/BLOCK_OUT, BATCH, BLOCK_OUT)``
    (zero for padded channels)."""
    v = np.asarray(values).reshape(-1)
    if v.size != channels:
        raise ProgramError(f"{what} must have {channels} values (one per output channel), not "
                           f"{v.size}")
    padded = np.zeros(ceil_div(channels, cfg.block_out) * cfg.block_out, np.int64)
    padded[:channels] = v
    return pack_bias(padded, cfg)


def const_slots(dev: DeviceEpilogue) -> tuple[list[str], list[str]]:
    """The epilogue's per-channel vectors and its uniform vectors, in row order."""
    names = list(dev.vectors)
    return [n for n in names if n not in dev.uniform], [n for n in names if n in dev.uniform]


def device_epilogue(epi: Epilogue | DeviceEpilogue | None, channels: int) -> DeviceEpilogue:
    """``epi`` as a device program (an Epilogue is lowered without a bias)."""
    if isinstance(epi, DeviceEpilogue):
        return epi
    return lower_epilogue(epi if epi is not None else Epilogue(), None, channels)


def layer_params(cfg: Config, packed_weights: np.ndarray, weights: np.ndarray,
                 bias: np.ndarray | None, epi: Epilogue) -> LayerParams:
    """The arrays and epilogue program of a layer with int8 ``weights`` (output channel first)
    already packed as ``packed_weights``."""
    w = np.asarray(weights)
    channels = int(w.shape[0])
    lo, hi = acc_bounds(w)
    prog = lower_epilogue(epi, bias, channels, lo, hi)
    arrays = {"w": packed_weights}
    per, uni = const_slots(prog)
    if per or uni:
        rows = [channel_rows(cfg, prog.vectors[k], channels, f"epilogue vector {k}")
                for k in per]
        rows += [np.full((1, cfg.batch, cfg.block_out), int(prog.vectors[k][0]), np.int32)
                 for k in uni]
        arrays["consts"] = np.ascontiguousarray(np.concatenate(rows).astype(np.int32))
    return LayerParams(arrays, prog)
