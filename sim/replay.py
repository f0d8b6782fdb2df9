"""Replaying a program whose checks already passed: the data movement alone.

Every check the functional simulator makes while a program executes — races (SRAM shadow,
DRAM tracker, deferred ALUs), index ranges, DRAM bounds, token deadlocks, ``dma_check`` — is a
function of the instructions, of the micro-op kernels they run and of what ``dma_check``
accepts, never of the values the instructions move. A :class:`Replay`, recorded after a run of
the fast path that raised nothing, keeps that run's data steps (each LOAD's, GEMM's, ALU's and
STORE's data part, in schedule order, with the plans and descriptors they used) and its event
counters. A later run of the same program replays them — the same computation in the same
order, without the bookkeeping — when everything the checks depended on is unchanged:

- the micro-op buffer holds the same contents as at the start of the recorded run (the same
  epoch, which names contents one to one);
- every UOP load of the program reads the same bytes (no STORE of the program may write
  them, else the program is not replayed);
- ``dma_check`` accepts the same rows (the same allocation generation; a simulator without
  ``dma_generation`` but with a ``dma_check`` never replays).

The checks' verdict is then the recorded run's, "passed", so the results, errors (none) and
counters are those of a full run; ``tests/unit/test_fsim_replay.py`` checks this against the
plain path and checks that changing any of the three inputs runs (and rejects) in full.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from tessera.isa import MemType

__all__ = ["Replay"]


class Replay:
    """The recorded data steps of one program (see the module docstring)."""

    def __init__(self, start_epoch: int, generation: int | None, sources: list[tuple],
                 steps: list[Callable[[], None]], counters: dict[str, int],
                 bytes_by_type: dict[str, int]):
        self.start_epoch = start_epoch
        self.generation = generation
        self.sources = sources  # (DRAM view, bytes) of every UOP load
        self.steps = steps
        self.counters = counters
        self.bytes_by_type = bytes_by_type

    @classmethod
    def record(cls, sim, prog, kinds: list[int], start_epoch: int,
               epochs: list[int]) -> Replay | None:
        """The replay of ``prog``, which ``sim`` (fast) has just executed without an error from
        micro-op epoch ``start_epoch``, its UOP loads giving ``epochs`` in turn; None when the
        program cannot be replayed (a STORE writes bytes a UOP load reads)."""
        if sim.dma_check is not None and sim.dma_generation is None:
            return None
        f = prog.f
        steps: list[Callable[[], None]] = []
        sources, uop_spans, store_spans = [], [], []
        epoch, later = start_epoch, iter(epochs)
        dirty = sim._out_dirty
        for pc in prog.schedule.order:
            kind = kinds[pc]
            if kind in (0, 1):  # a LOAD
                d = prog.load_memo[pc]
                if not d:
                    continue
                if d[1] == MemType.UOP:
                    raw, span = d[5], d[10]
                    sources.append((raw, raw.tobytes()))
                    uop_spans.append(span)
                    epoch = next(later)
                steps.append(d[-1])  # its data step
            elif kind in (2, 3):  # GEMM, ALU
                if (f["uop_bgn"][pc] >= f["uop_end"][pc] or f["iter_out"][pc] == 0
                        or f["iter_in"][pc] == 0):
                    continue  # an empty loop
                hit = prog.plan_memo.get(pc)
                if hit is None or hit[0] != epoch:
                    return None  # (not expected: every fast GEMM/ALU memoises its plan)
                plan = hit[1]
                if kind == 2 and plan.reset:
                    steps.append(partial(sim._gemm_data, plan))
                    continue
                if kind == 2:  # sim._gemm_data and sim._alu_data, their views bound once
                    steps.append(plan.bound(sim.acc, sim.inp_f, sim.wgt_t, sim.wgt_stamp))
                else:
                    steps.append(plan.bound(sim.acc, f["alu_opcode"][pc],
                                            f["imm"][pc] if plan.src is None else None))
                steps.append(partial(dirty.__setitem__, plan.rows.key, plan.rows))  # sim._wrote
            elif kind == 4:  # a STORE
                if f["x_size"][pc] == 0 or f["y_size"][pc] == 0:
                    continue
                starts, length, _stride, _what = sim._dma(pc)
                store_spans.append((int(starts[0]), int(starts[-1]) + length))
                steps.append(partial(sim._store_data, pc))
        if any(a < d and c < b for a, b in uop_spans for c, d in store_spans):
            return None
        return cls(start_epoch, sim._dma_gen, sources, steps, dict(sim.counters),
                   dict(sim.bytes_by_type))

    def applies(self, sim) -> bool:
        """Whether a run of the program on ``sim`` now would make the same checks as the
        recorded one (``sim._dma_gen`` already read for this run)."""
        if sim._uop_epoch != self.start_epoch:
            return False
        if sim.dma_check is not None and sim._dma_gen != self.generation:
            return False
        return all(view.tobytes() == data for view, data in self.sources)

    def run(self, sim) -> dict[str, int]:
        """Replay the data steps on ``sim``; return the event counters."""
        for step in self.steps:
            step()
        sim.counters = dict(self.counters)
        sim.bytes_by_type = dict(self.bytes_by_type)
        return dict(self.counters)
