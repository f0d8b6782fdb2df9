"""Per-block cocotb testbenches: Verilog of one hardware block with simple ports, and the
reference models its tests check against.

:func:`block_verilog` converts a single Amaranth component (its signature's ports plus ``clk``
and ``rst``) into a Verilog module; the models are plain numpy/Python.
"""

from __future__ import annotations

import numpy as np

__all__ = ["block_verilog", "gemm_reference", "pack_lanes", "unpack_lanes"]


def block_verilog(component, name: str) -> str:
    """Verilog of one ``wiring.Component`` as top module ``name`` (ports named ``a__b``)."""
    from tessera.hw.verilog import convert

    return convert(component, name, f"block {name}")


def pack_lanes(values: np.ndarray, bits: int) -> int:
    """Little-endian packing of signed ``values`` into one integer, ``bits`` per lane."""
    out = 0
    for i, v in enumerate(np.asarray(values).reshape(-1)):
        out |= (int(v) & ((1 << bits) - 1)) << (i * bits)
    return out


def unpack_lanes(word: int, bits: int, n: int) -> np.ndarray:
    """Inverse of :func:`pack_lanes`: ``n`` signed lanes of ``bits`` bits."""
    mask, half = (1 << bits) - 1, 1 << (bits - 1)
    vals = [(word >> (i * bits)) & mask for i in range(n)]
    return np.array([v - (1 << bits) if v >= half else v for v in vals], dtype=np.int64)


def gemm_reference(inp: np.ndarray, wgt: np.ndarray) -> np.ndarray:
    """SPEC §4 GEMM step without accumulation: ``inp @ wgt.T`` in int32 (wrapping)."""
    prod = inp.astype(np.int64) @ wgt.astype(np.int64).T
    return prod.astype(np.int32)
