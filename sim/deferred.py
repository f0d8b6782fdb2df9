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

The rows come as :class:`~tessera.sim.races.IndexSet` (cached with the micro-op kernel's
plan), so the common check — a few contiguous runs of rows, halves as memoised sets — costs a
handful of Python comparisons; only index sets without runs, and a clash (to name it), go
through numpy set operations.
"""

from __future__ import annotations

import numpy as np

from tessera.errors import SimError
from tessera.isa import Opcode
from tessera.sim.races import IndexSet

__all__ = ["Deferred"]


class Deferred:
    """The deferred ALU instructions since the last drain point, with the rows they use."""

    def __init__(self, acc_depth: int):
        self.half = acc_depth // 2
        self.pending: list[tuple[int, IndexSet, IndexSet | None]] = []
        self.halves: frozenset[int] = frozenset()  # union of the pending destinations' halves
        self.runs: list[tuple[int, int]] | None = []  # union of the rows they use, if in runs

    def clear(self) -> None:
        """A drain point: no deferred ALU runs any more."""
        if self.pending:
            self.pending = []
            self.halves = frozenset()
            self.runs = []

    @staticmethod
    def drain_points(f: dict, compute: list[bool]) -> tuple[list[bool], list[bool]]:
        """Per pc of a program with decoded fields ``f``: whether the instruction drains the
        deferred ALUs before it executes (a LOAD, FINISH, an ALU without the bit), and after
        (``push_next``, an ALU with any push) — the module docstring's rules, for the pcs with
        ``compute[pc]`` (the compute module's; the others never drain). The simulator calls
        :meth:`clear` at those points."""
        op, dfr, pp, pn = f["opcode"], f["deferred"], f["push_prev"], f["push_next"]
        before = [c and (op[pc] in (Opcode.LOAD, Opcode.FINISH) or (op[pc] == Opcode.ALU
                                                                   and not dfr[pc]))
                  for pc, c in enumerate(compute)]
        after = [c and bool(pn[pc] or (op[pc] == Opcode.ALU and pp[pc]))
                 for pc, c in enumerate(compute)]
        return before, after

    def gemm(self, pc: int, dst: IndexSet) -> None:
        """Check GEMM ``pc``'s accumulator rows ``dst`` against the pending deferred ALUs."""
        if not self.pending:
            return
        if not (dst.halves(self.half) & self.halves) and self.runs is not None:
            if dst.meets(self.runs) is False:
                return  # proven disjoint, other halves: the common case
        rows = dst.uniq  # sorted, distinct
        halves = dst.halves(self.half)
        for apc, adst, asrc in self.pending:
            used = adst.uniq if asrc is None else np.union1d(adst.uniq, asrc.uniq)
            clash = np.intersect1d(rows, used, assume_unique=True)
            if clash.size:
                raise SimError(
                    f"race on the accumulator rows [{int(clash.min())}:{int(clash.max()) + 1}]: "
                    f"instruction {pc} (GEMM) may run while the deferred ALU instruction {apc} "
                    f"still reads or writes them (no drain point between them; spec-notes 16)")
            both = halves & adst.halves(self.half)
            if both:
                raise SimError(
                    f"race on accumulator half {min(both)}: instruction {pc} (GEMM) "
                    f"writes it while the deferred ALU instruction {apc} may still write it "
                    f"(they would share the bank's ports; spec-notes 16)")

    def alu(self, pc: int, dst: IndexSet, src: IndexSet | None) -> None:
        """Record deferred ALU ``pc`` with its destination (and source) rows."""
        self.pending.append((pc, dst, src))
        hs = dst.halves(self.half)
        if not hs <= self.halves:
            self.halves = self.halves | hs
        if self.runs is not None:
            if dst.runs is None or (src is not None and src.runs is None):
                self.runs = None
            else:
                self.runs.extend(dst.runs)  # a list of this object's own (clear makes anew)
                if src is not None:
                    self.runs.extend(src.runs)
