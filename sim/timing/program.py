"""What the cycle model needs of a decoded program, computed once with numpy.

Timing depends on the instructions only (never on data): per instruction its module, its token
pops and pushes (queue and sequence number), its GEMM/ALU loop length, and for DMA its rows:
the bus-aligned address, beat count and consumer cost of every DRAM row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tessera.config import Config
from tessera.isa import MemType, Opcode
from tessera.sim.timing.port import MAX_BURST, PAGE

__all__ = ["StaticProgram", "prepare", "FIELDS", "LOAD", "COMPUTE", "STORE", "L2C", "C2L", "C2S",
           "S2C", "QUEUE_NAMES", "MODULE_NAMES", "TOKEN_QUEUES", "K_LOAD", "K_STORE", "K_RUN",
           "K_NONE", "K_SYNC", "K_ALU"]

LOAD, COMPUTE, STORE = 0, 1, 2
MODULE_NAMES = ("load", "compute", "store")
L2C, C2L, C2S, S2C = 0, 1, 2, 3
QUEUE_NAMES = ("L2C", "C2L", "C2S", "S2C")
# Per module, the queues of its first and second pop and of its first and second push (SPEC
# §5's table; None: the module has no such flag) and the flags that request them.
TOKEN_QUEUES = {LOAD: (C2L, None, L2C, None), COMPUTE: (L2C, S2C, C2L, C2S),
                STORE: (C2S, None, S2C, None)}
TOKEN_FLAGS = {LOAD: ("pop_next", None, "push_next", None),
               COMPUTE: ("pop_prev", "pop_next", "push_prev", "push_next"),
               STORE: ("pop_prev", None, "push_prev", None)}

# instruction kinds
# K_SYNC: LOAD/STORE with x_size == 0; K_RUN: GEMM; K_ALU: ALU (run by the compute module's
# ALU engine, hw/compute.py)
K_LOAD, K_STORE, K_RUN, K_NONE, K_SYNC, K_ALU = 0, 1, 2, 3, 4, 5

# the fields timing depends on
FIELDS = ("opcode", "memory_type", "pop_prev", "pop_next", "push_prev", "push_next",
           "dram_base", "x_size", "y_size", "x_stride", "y_pad_0", "y_pad_1", "x_pad_0",
           "x_pad_1", "uop_bgn", "uop_end", "iter_out", "iter_in", "reset")


@dataclass
class StaticProgram:
    """Per-module instruction records and the DMA row table.

    ``insns[m]`` lists module ``m``'s instructions in order as tuples ``(pc, pop_a, pop_b,
    push_a, push_b, kind, steps, addr, stride, xs, ys, eb, yp0, yp1, xp0, xp1, row0, bit7)``:
    the
    sequence numbers of its pops and pushes in the queues of :data:`TOKEN_QUEUES` (-1: none),
    the kind, the GEMM/ALU loop steps, and for LOAD/STORE the byte address and stride, sizes,
    element bytes, padding and the index of its first row in the row table; ``bit7`` is the
    GEMM's reset / the ALU's deferred bit. The row table holds,
    per DRAM row of a load, its byte address, bus-aligned address, beats, and the cycles its
    consumer holds the beats beyond one per beat. ``finish_pc`` is the first FINISH, if any.
    """

    n: int
    module: list[int]
    finish_pc: int | None
    insns: tuple[list[tuple], list[tuple], list[tuple]]
    row_addr: list[int]
    row_base: list[int]
    row_beats: list[int]
    row_extra: list[int]
    row_single: list[bool]  # the row is one burst (no 4 KiB crossing, at most 256 beats)


def _elem_bytes_table(cfg: Config) -> np.ndarray:
    t = np.zeros(8, np.int64)
    t[MemType.UOP], t[MemType.WGT], t[MemType.INP] = (cfg.uop_elem_bytes, cfg.wgt_elem_bytes,
                                                       cfg.inp_elem_bytes)
    t[MemType.ACC], t[MemType.OUT], t[MemType.ACC_8BIT] = (cfg.acc_elem_bytes,
                                                            cfg.out_elem_bytes,
                                                            cfg.acc8_elem_bytes)
    return t


def prepare(fields: Mapping[str, Sequence[int] | np.ndarray], n: int, cfg: Config
            ) -> StaticProgram:
    """The model's view of the first ``n`` instructions of a decoded program.

    ``fields`` maps ISA field names (``tessera.isa.layout``) to per-instruction values, as
    :class:`tessera.sim.decode.DecodedProgram` holds them.
    """
    f = {k: np.asarray(fields[k][:n], dtype=np.int64) for k in FIELDS}
    op, mt = f["opcode"], f["memory_type"]
    is_load, is_store = op == Opcode.LOAD, op == Opcode.STORE
    is_mem = is_load | is_store
    module = np.full(n, COMPUTE, np.int64)
    module[is_load & ((mt == MemType.INP) | (mt == MemType.WGT))] = LOAD
    module[is_store] = STORE
    xs, ys = f["x_size"], f["y_size"]
    kind = np.full(n, K_NONE, np.int64)
    kind[op == Opcode.GEMM] = K_RUN
    kind[op == Opcode.ALU] = K_ALU
    kind[is_load] = K_LOAD
    kind[is_store] = K_STORE
    kind[is_mem & (xs == 0)] = K_SYNC
    bgn, end = f["uop_bgn"], f["uop_end"]
    steps = np.where(end > bgn, end - bgn, 0) * f["iter_out"] * f["iter_in"]
    eb = _elem_bytes_table(cfg)[np.clip(mt, 0, 7)] * is_mem
    addr = f["dram_base"] * eb
    stride = f["x_stride"] * eb

    def seq(mod: int, flag: str) -> np.ndarray:
        mask = (module == mod) & (f[flag] != 0)
        return np.where(mask, np.cumsum(mask) - 1, -1)

    # per module, the sequence numbers of its (up to two) pops and pushes; -1: none
    none = np.full(n, -1, np.int64)
    tokens = {m: [seq(m, fl) if fl else none for fl in flags] for m, flags in TOKEN_FLAGS.items()}

    # DMA rows of loads (load module and compute module), in program order
    loads = np.flatnonzero((kind == K_LOAD) & (ys > 0))
    nrows = ys[loads]
    row0 = np.zeros(n, np.int64)
    row0[loads] = np.cumsum(nrows) - nrows
    ridx = np.repeat(loads, nrows)
    within = np.arange(int(nrows.sum()), dtype=np.int64) - np.repeat(row0[loads], nrows)
    bus = cfg.mem_bus_bytes
    lbb = bus.bit_length() - 1
    ra = (addr[ridx] + within * stride[ridx]) & 0xFFFFFFFF
    nbytes = xs[ridx] * eb[ridx]
    base = (ra >> lbb) << lbb
    beats = ((ra + nbytes + bus - 1) >> lbb) - (ra >> lbb)
    narrow = eb[ridx] < bus
    extra = np.where(narrow, xs[ridx] - beats, 0)
    single = (beats <= MAX_BURST) & ((base & (PAGE - 1)) + beats * bus <= PAGE)

    pc = np.arange(n, dtype=np.int64)
    common = [kind, steps, addr, stride, xs, ys, eb, f["y_pad_0"], f["y_pad_1"], f["x_pad_0"],
              f["x_pad_1"], row0, f["reset"]]
    insns = []
    for m in (LOAD, COMPUTE, STORE):
        sel = module == m
        cols = [c[sel].tolist() for c in [pc] + tokens[m] + common]
        insns.append(list(zip(*cols)))
    fin = np.flatnonzero(op == Opcode.FINISH)
    return StaticProgram(n, module.tolist(), int(fin[0]) if fin.size else None, tuple(insns),
                         ra.tolist(), base.tolist(), beats.tolist(), extra.tolist(),
                         single.tolist())
