"""A cheap, conservative lower bound of the cycles the RTL needs to run a decoded program.

fsim has no cycle model yet, so it honours ``timeout_cycles`` against this bound (spec-notes
point "fsim and timeout_cycles"): a run whose bound exceeds the limit is refused before anything
executes. The bound only uses limits every implementation of SPEC §5–6 obeys, never the RTL's
particular pipeline, so it can only err on the low side:

- a module retires at most one instruction per cycle;
- the GEMM/ALU pipeline starts at most one micro-op step per cycle (reset steps included);
- the DRAM port moves at most one ``mem_bus_bits`` beat per cycle on its read channel (shared
  by instruction fetch and every LOAD) and one on its write channel (every STORE), and a beat
  carries bytes of one burst only, so a row of ``r`` bytes needs at least
  ``ceil(r / bus_bytes)`` beats.

Per module the bound is the sum over its executed instructions of
``max(1, micro-op steps or DRAM beats)``; the run's bound is the largest of the three module
sums, the read channel's beats (fetch of every executed instruction's 16 bytes plus LOAD rows)
and the write channel's beats. Only instructions that execute count (for a program that
deadlocks, those that execute before the deadlock), so the bound also holds for the time until
a deadlock is reported.

This is the one seam through which a cycle model replaces the bound: ``cycles_lower_bound``
is the only function the fsim device calls for it.
"""

from __future__ import annotations

import numpy as np

from tessera.config import Config
from tessera.isa import INSN_BYTES, MemType, Opcode, elem_bytes
from tessera.sim.decode import COMPUTE, LOAD, STORE, DecodedProgram

__all__ = ["cycles_lower_bound"]


def cycles_lower_bound(prog: DecodedProgram, cfg: Config) -> int:
    """Cycles the hardware needs at least to run ``prog`` (to done, or to its deadlock).

    Uses ``prog.schedule.order`` (the instructions that execute) when the schedule is set,
    otherwise every dispatched instruction.
    """
    a = prog.arrays
    if prog.schedule is not None:
        pcs = np.asarray(prog.schedule.order, np.int64)
    else:
        pcs = np.arange(prog.n, dtype=np.int64)
    if pcs.size == 0:
        return 0
    op = a["opcode"][pcs]
    module = np.asarray(prog.module, np.int64)[pcs]
    steps = (a["iter_out"][pcs] * a["iter_in"][pcs]
             * np.maximum(a["uop_end"][pcs] - a["uop_bgn"][pcs], 0))
    steps = np.where((op == Opcode.GEMM) | (op == Opcode.ALU), steps, 0)
    is_mem = (op == Opcode.LOAD) | (op == Opcode.STORE)
    mt = np.where(is_mem, a["memory_type"][pcs], MemType.UOP)
    ebytes = np.array([elem_bytes(cfg, t) for t in range(len(MemType))], np.int64)[mt]
    bus = cfg.mem_bus_bytes
    row_beats = -(-(a["x_size"][pcs] * ebytes) // bus)
    beats = np.where(is_mem, a["y_size"][pcs] * row_beats, 0)
    per_insn = np.maximum(1, np.maximum(steps, beats))
    modules = [int(per_insn[module == m].sum()) for m in (LOAD, COMPUTE, STORE)]
    fetched = int(pcs.max()) + 1  # every instruction up to the last executed one was fetched
    reads = -(-fetched * INSN_BYTES // bus) + int(beats[op == Opcode.LOAD].sum())
    writes = int(beats[op == Opcode.STORE].sum())
    return max(*modules, reads, writes)
