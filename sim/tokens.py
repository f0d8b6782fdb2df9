"""The token-level schedule of a program (SPEC §5), computed from its dependency flags alone.

The three modules run their command queues in order; four token queues of capacity
``dep_queue_depth`` connect them. An instruction first pops every queue it is flagged to pop
(all at once, when all hold a token), then executes, then pushes every queue it is flagged to
push (all at once, when all have room) and retires — the RTL's sequencing (``hw/compute.py``,
``hw/dma.py``). Which instructions execute, and whether the program deadlocks, depends only on
the flags, so the whole schedule is computed before any data moves; the simulator then executes
the instructions in ``Schedule.order``.

Each executed instruction carries the vector clock of its module: entry ``m`` is how many
instructions of module ``m`` are known (through tokens) to have completed; a pushed token carries
the pusher's clock and a pop merges it (element-wise max). Race detection (``sim/races.py``)
compares these clocks, so its verdict does not depend on the interleaving chosen here.

A token deadlock (SPEC §6 code 7; the reading is spec-notes 13): every
module that still has an unretired instruction is *blocked* — its current instruction waits to
pop an empty queue, or has executed and waits to push into a full one. fsim's command queues are
unbounded, so fetch has always dispatched everything up to the first FINISH. The error's pc is the
lowest pc among the blocked instructions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tessera.sim.decode import COMPUTE, LOAD, MODULE_NAMES, STORE, DecodedProgram

__all__ = ["Schedule", "Deadlock", "schedule", "QUEUE_NAMES"]

# Token queues
L2C, C2L, C2S, S2C = 0, 1, 2, 3
QUEUE_NAMES = ("L2C", "C2L", "C2S", "S2C")
# (module, flag) -> token queue; SPEC §5's table.
_POP = {(LOAD, "pop_next"): C2L, (COMPUTE, "pop_prev"): L2C, (COMPUTE, "pop_next"): S2C,
        (STORE, "pop_prev"): C2S}
_PUSH = {(LOAD, "push_next"): L2C, (COMPUTE, "push_prev"): C2L, (COMPUTE, "push_next"): C2S,
         (STORE, "push_prev"): S2C}


@dataclass
class Deadlock:
    """A token deadlock: ``pc`` is the lowest blocked pc; ``waits`` describes every wait."""

    pc: int
    waits: list[str]

    def message(self) -> str:
        return (f"error 7 (token deadlock) at instruction {self.pc}: " + "; ".join(self.waits))


@dataclass
class Schedule:
    """``order``: pcs in the order fsim executes them (every instruction that executes, incl.
    one that then waits forever to push); ``clocks[k]``: the vector clock (load, compute, store)
    of ``order[k]`` when it executes; ``seq[k]``: its 1-based position in its module's queue;
    ``deadlock``: None, or the deadlock reached after ``order`` has executed."""

    order: list[int]
    clocks: np.ndarray
    seq: list[int]
    deadlock: Deadlock | None


def schedule(prog: DecodedProgram, capacity: int) -> Schedule:
    """The token schedule of ``prog`` with token queues of ``capacity``; sets ``prog.schedule``."""
    f = prog.f
    queues = prog.local_pcs
    pops = [[_POP[m, fl] for fl in ("pop_prev", "pop_next") if (m, fl) in _POP and f[fl][pc]]
            for pc, m in enumerate(prog.module)]
    pushes = [[_PUSH[m, fl] for fl in ("push_prev", "push_next") if (m, fl) in _PUSH
               and f[fl][pc]] for pc, m in enumerate(prog.module)]
    tokens: list[list[tuple[int, int, int]]] = [[] for _ in range(4)]
    heads = [0, 0, 0, 0]  # index of the oldest token of each queue in tokens[q]
    vc = [[0, 0, 0] for _ in range(3)]
    ptr = [0, 0, 0]
    executed = [False, False, False]  # the current instruction has popped and executed
    order: list[int] = []
    clocks: list[tuple[int, int, int]] = []
    seq: list[int] = []
    remaining = prog.n
    while remaining:
        progressed = False
        for m in (LOAD, COMPUTE, STORE):
            q = queues[m]
            clock = vc[m]
            while ptr[m] < len(q):
                pc = q[ptr[m]]
                if not executed[m]:
                    need = pops[pc]
                    if any(heads[t] == len(tokens[t]) for t in need):
                        break
                    for t in need:
                        tok = tokens[t][heads[t]]
                        heads[t] += 1
                        for k in range(3):
                            if tok[k] > clock[k]:
                                clock[k] = tok[k]
                    clock[m] = ptr[m] + 1
                    order.append(pc)
                    clocks.append((clock[0], clock[1], clock[2]))
                    seq.append(ptr[m] + 1)
                    executed[m] = True
                out = pushes[pc]
                if any(len(tokens[t]) - heads[t] >= capacity for t in out):
                    break
                snap = (clock[0], clock[1], clock[2])
                for t in out:
                    tokens[t].append(snap)
                executed[m] = False
                ptr[m] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            dead = _deadlock(prog, ptr, executed, pops, pushes, tokens, heads, capacity)
            break
    else:
        dead = None
    sched = Schedule(order, np.array(clocks, np.int64).reshape(-1, 3), seq, dead)
    prog.schedule = sched
    return sched


def _deadlock(prog, ptr, executed, pops, pushes, tokens, heads, capacity) -> Deadlock:
    waits, blocked = [], []
    for m in (LOAD, COMPUTE, STORE):
        if ptr[m] >= len(prog.local_pcs[m]):
            continue
        pc = prog.local_pcs[m][ptr[m]]
        blocked.append(pc)
        if not executed[m]:
            for t in pops[pc]:
                if heads[t] == len(tokens[t]):
                    waits.append(f"{MODULE_NAMES[m]} instruction {pc} waits to pop "
                                 f"{QUEUE_NAMES[t]}, which is empty")
        else:
            for t in pushes[pc]:
                if len(tokens[t]) - heads[t] >= capacity:
                    waits.append(f"{MODULE_NAMES[m]} instruction {pc} waits to push "
                                 f"{QUEUE_NAMES[t]}, which is full ({capacity} tokens)")
    assert blocked and waits
    return Deadlock(min(blocked), waits)
