"""The one cost model of the accelerator kernels, used by every operator's tile search.

An operator enumerates the tile shapes that fit the SRAM (its own feasibility rules) and asks
:func:`tile_cycles` what one tile of each distinct shape costs; the shape with the lowest total
wins. The model:

- compute: one cycle per GEMM micro-op step (the reset included) and per ALU step, plus 8 per
  GEMM instruction and 40 per tile;
- load: DRAM bytes at the memory bus width, plus 40 per input LOAD instruction (the weight load
  of a stage overlaps them), and the residual rows of the epilogue;
- store: the tile's bytes at the bus width plus 20 per STORE instruction;
- double buffered, the three modules overlap and a tile costs the slowest of them; otherwise
  they add up.

Loads the pipeline skips because their data is still resident are not modelled (the estimate is
an upper bound there).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tessera.config import Config

__all__ = ["StageShape", "tile_cycles", "spans", "TILE_OVERHEAD", "GEMM_OVERHEAD",
           "LOAD_OVERHEAD", "STORE_OVERHEAD"]

TILE_OVERHEAD = 40
GEMM_OVERHEAD = 8
LOAD_OVERHEAD = 40
STORE_OVERHEAD = 20


@dataclass(frozen=True)
class StageShape:
    """``count`` reduction stages of one shape within a tile."""

    count: int
    gemm_steps: int  # micro-op steps of the stage's GEMM
    inp_elems: int  # input elements the stage loads (padding included)
    wgt_elems: int  # weight elements the stage loads
    inp_loads: int  # input LOAD instructions


def spans(total: int, step: int) -> list[tuple[int, int]]:
    """(extent, count) of the full tiles and the ragged last tile covering ``total``."""
    full, rest = divmod(total, step)
    return [(step, full)] * (full > 0) + [(rest, 1)] * (rest > 0)


def tile_cycles(cfg: Config, rows: int, stages: Iterable[StageShape], alu_steps: int,
                residual: bool, double_buffer: bool, store_insns: int = 1) -> int:
    """Estimated cycles of one tile with ``rows`` accumulator rows of result, its ``stages``,
    ``alu_steps`` ALU passes over the rows (besides the bias add) and an optional residual."""
    bus = cfg.mem_bus_bytes
    compute = rows + rows * (alu_steps + (2 if residual else 0)) + TILE_OVERHEAD
    load = rows * cfg.acc8_elem_bytes // bus if residual else 0
    for st in stages:
        compute += st.count * (st.gemm_steps + GEMM_OVERHEAD)
        load += st.count * ((st.inp_elems * cfg.inp_elem_bytes
                             + st.wgt_elems * cfg.wgt_elem_bytes) // bus
                            + LOAD_OVERHEAD * st.inp_loads)
    store = rows * cfg.out_elem_bytes // bus + STORE_OVERHEAD * store_insns
    if double_buffer:
        return max(compute, load, store)
    return compute + load + store
