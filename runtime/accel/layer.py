"""What every accelerator operator shares: tensor addresses, layer statistics, the epilogue's
ALU passes and accumulator row layout, and the parameter arrays a layer reads.

An output tile's accumulator rows are laid out as ``[result rows | residual rows (when the
epilogue has a residual) | bias rows (one per output-channel block) | multiplier rows (when the
multiplier is per channel)]``. The epilogue adds the bias with one ALU pass, then runs
:meth:`~tessera.runtime.accel.epilogue.Epilogue.alu_steps` in order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from tessera.config import Config
from tessera.errors import ProgramError
from tessera.isa import AluOp, MemType, Uop, elem_bytes
from tessera.runtime.accel.emitter import AluPass
from tessera.runtime.accel.epilogue import Epilogue
from tessera.runtime.layout import ceil_div, pack_bias
from tessera.runtime.uop_cache import MicroKernel

__all__ = ["LayerAddrs", "LayerStats", "AccRows", "element_base", "rows_kernel",
           "epilogue_passes", "channel_rows"]


@dataclass(frozen=True)
class LayerAddrs:
    """Device byte addresses of a layer's tensors (for a compiled model: virtual addresses the
    executor relocates). ``bias`` and ``mult`` are int32 accumulator rows, ``residual`` an int8
    tensor shaped like the output; ``None`` where the layer has none."""

    x: int
    w: int
    y: int
    bias: int | None = None
    mult: int | None = None
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

    @property
    def macs_per_insn(self) -> float:
        return self.hw_macs / self.insns if self.insns else 0.0


def element_base(cfg: Config, addr: int | None, mem_type: MemType, what: str) -> int:
    """DRAM element index of byte address ``addr`` (SPEC §2: element-aligned); 0 for None."""
    if addr is None:
        return 0
    eb = elem_bytes(cfg, mem_type)
    if isinstance(addr, bool) or not isinstance(addr, (int, np.integer)) or addr < 0 \
            or addr % eb:
        raise ProgramError(f"{what} address must be a non-negative multiple of {eb} bytes, "
                           f"not {addr!r}")
    return int(addr) // eb


@dataclass(frozen=True)
class AccRows:
    """Where a tile's epilogue operands sit, relative to the tile's accumulator base."""

    rows: int  # result rows
    residual: int | None  # first residual row
    bias: int | None  # first bias row
    mult: int | None  # first multiplier row
    total: int  # rows the tile occupies

    @classmethod
    def layout(cls, rows: int, blocks: int, residual: bool, bias: bool, vec: bool) -> AccRows:
        pos = rows
        res = pos if residual else None
        pos += rows if residual else 0
        b = pos if bias else None
        pos += blocks if bias else 0
        m = pos if vec else None
        pos += blocks if vec else 0
        return cls(rows, res, b, m, pos)


def rows_kernel(base: int, rows: int, src: int = 0, src_step: int = 0) -> MicroKernel:
    """One micro-op repeated over ``rows`` consecutive accumulator rows from ``base``
    (``src`` advancing by ``src_step`` per row)."""
    return MicroKernel((Uop(base, src, 0),), rows, 1, 1, 0, src_step, 0, 0, 0)


def _rows_at(offset: int, rows: int, src: int | None, ab: int) -> MicroKernel:
    if src is None:
        return rows_kernel(ab + offset, rows)
    return rows_kernel(ab + offset, rows, ab + src, 1)


def epilogue_passes(epi: Epilogue, acc: AccRows,
                    channel: Callable[[int, int], MicroKernel]) -> tuple[AluPass, ...]:
    """The ALU passes of a tile: the bias add, then ``epi.alu_steps()``.

    ``channel(acc_base, src_row)`` is the operator's kernel that combines every result row with
    the constant row of its output-channel block (``src_row`` is the block's first row).
    """
    out: list[AluPass] = []
    if acc.bias is not None:
        out.append(AluPass(lambda ab: channel(ab, ab + acc.bias), AluOp.ADD))
    for st in epi.alu_steps():
        op = AluOp[st.opcode]
        if st.branch == "combine":
            out.append(AluPass(partial(_rows_at, 0, acc.rows, acc.residual), op))
        elif st.branch == "residual":
            out.append(AluPass(partial(_rows_at, acc.residual, acc.rows, None), op,
                               int(st.operand)))
        elif isinstance(st.operand, np.ndarray):
            if acc.mult is None:
                raise ProgramError("a per-channel multiplier needs its multiplier rows")
            out.append(AluPass(lambda ab: channel(ab, ab + acc.mult), op))
        else:
            out.append(AluPass(partial(_rows_at, 0, acc.rows, None), op, int(st.operand)))
    return tuple(out)


def channel_rows(cfg: Config, values: np.ndarray | None, channels: int, what: str
                 ) -> np.ndarray:
    """Per-output-channel int32 values as accumulator rows ``(O/BLOCK_OUT, BATCH, BLOCK_OUT)``
    (zero for padded channels)."""
    v = np.zeros(channels, np.int64) if values is None else np.asarray(values).reshape(-1)
    if v.size != channels:
        raise ProgramError(f"{what} must have {channels} values (one per output channel), not "
                           f"{v.size}")
    if not np.issubdtype(v.dtype, np.integer):
        raise ProgramError(f"{what} must be integers, not {v.dtype}")
    padded = np.zeros(ceil_div(channels, cfg.block_out) * cfg.block_out, np.int64)
    padded[:channels] = v
    return pack_bias(padded, cfg)


def layer_params(cfg: Config, packed_weights: np.ndarray, bias: np.ndarray | None,
                 epi: Epilogue, channels: int) -> dict[str, np.ndarray]:
    """The arrays a layer reads: ``w`` (packed weights), ``bias`` rows, and ``mult`` rows when
    the epilogue's multiplier is per channel."""
    out = {"w": packed_weights, "bias": channel_rows(cfg, bias, channels, "bias")}
    if epi.per_channel:
        if epi.mult.size != channels:
            raise ProgramError(f"the epilogue has {epi.mult.size} multipliers for {channels} "
                               f"output channels")
        out["mult"] = channel_rows(cfg, epi.mult, channels, "multiplier")
    return out
