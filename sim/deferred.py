"""Deferred ALU instructions in the functional simulator (spec-notes 16).

The compute module may run an ALU instruction with the [ext] ``deferred`` bit concurrently with
the GEMM instructions that follow it, until the next instruction that drains its ALU engine:
a LOAD, an ALU instruction without the bit, FINISH (before they start), and an instruction
with ``push_next`` or an ALU instruction with any push (once they have executed). The
functional simulator executes in program order, so it gives the sequential result; a program
is only well synchronised when that is also what the hardware computes, so :class:`Deferred`
rejects (as a race, :class:`~tessera.errors.SimError` with no code) a GEMM that, while a
deferred ALU may still run,

- touches an accumulator row the ALU reads or writes, or
- writes rows in the same accumulator half as the ALU's destination rows (the two pipelines
  would share that bank's ports).
"""

from __future__ import annotations

import numpy as np

from tessera.errors import SimError
from tessera.isa import Opcode

__all__ = ["Deferred"]


class Deferred:
    """The deferred ALU instructions since the last drain point, with the rows they use."""

    def __init__(self, acc_depth: int):
        self.half = acc_depth // 2
        self.pending: list[tuple[int, np.ndarray, frozenset[int]]] = []

    def before(self, pc: int, f: dict) -> None:
        """Called before compute instruction ``pc`` executes (``f``: the decoded fields)."""
        op = f["opcode"][pc]
        if op in (Opcode.LOAD, Opcode.FINISH) or (op == Opcode.ALU and not f["deferred"][pc]):
            self.pending.clear()

    def gemm(self, pc: int, dst: np.ndarray) -> None:
        """Check GEMM ``pc``'s accumulator rows ``dst`` (sorted, distinct) against the pending
        deferred ALUs."""
        if not self.pending:
            return
        rows = np.asarray(dst)  # sorted, distinct (IndexSet.uniq)
        halves = frozenset((rows // self.half).tolist())
        for apc, used, ahalves in self.pending:
            clash = np.intersect1d(rows, used, assume_unique=True)
            if clash.size:
                raise SimError(
                    f"race on the accumulator rows [{int(clash.min())}:{int(clash.max()) + 1}]: "
                    f"instruction {pc} (GEMM) may run while the deferred ALU instruction {apc} "
                    f"still reads or writes them (no drain point between them; spec-notes 16)")
            if halves & ahalves:
                raise SimError(
                    f"race on accumulator half {min(halves & ahalves)}: instruction {pc} (GEMM) "
                    f"writes it while the deferred ALU instruction {apc} may still write it "
                    f"(they would share the bank's ports; spec-notes 16)")

    def alu(self, pc: int, dst: np.ndarray, src: np.ndarray | None) -> None:
        """Record deferred ALU ``pc`` with its destination (and source) rows (sorted,
        distinct)."""
        d = np.asarray(dst)
        used = d if src is None else np.union1d(d, src)
        self.pending.append((pc, used, frozenset((d // self.half).tolist())))

    def after(self, pc: int, f: dict) -> None:
        """Called after compute instruction ``pc`` executed."""
        op = f["opcode"][pc]
        if f["push_next"][pc] or (op == Opcode.ALU and (f["push_prev"][pc] or
                                                        f["push_next"][pc])):
            self.pending.clear()
