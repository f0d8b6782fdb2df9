"""Dependency tokens (SPEC §5): modules, queues, sync-only no-ops, and stream analyses.

Four FIFO token queues connect the modules. A token carries no data: the k-th pop of a queue is
satisfied by its k-th push, so a push on producer instruction P and the matching pop on consumer
instruction C order every access of P (and of every earlier instruction of P's module) before
every access of C (and of every later instruction of C's module).

Deadlock freedom. :func:`check_tokens` walks a stream in program order and keeps, per queue, the
number of tokens pushed minus popped. If that count never goes negative (no pop precedes its
push in program order) and never exceeds ``dep_queue_depth``, the program cannot deadlock: a
module blocked on a pop waits for a push that precedes the pop in program order, a module
blocked on a push to a full queue waits for a pop that precedes the push in program order, so
every blocked module waits on a module whose current instruction is strictly earlier in program
order, and such waits cannot form a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from tessera.config import Config
from tessera.errors import ProgramError
from tessera.isa import INSN_BYTES, GemmInsn, Insn, MemInsn, MemType, Opcode, extract, layout

__all__ = [
    "Module", "Queue", "QUEUES", "queue", "module_of", "noop", "check_tokens",
    "check_tokens_encoded", "HappensBefore",
]


class Module(IntEnum):
    LOAD = 0
    COMPUTE = 1
    STORE = 2


@dataclass(frozen=True)
class Queue:
    """A token queue from ``src`` to ``dst``; the flag names are those each side sets."""

    name: str
    src: Module
    dst: Module
    push_flag: str
    pop_flag: str


QUEUES: tuple[Queue, ...] = (
    Queue("L2C", Module.LOAD, Module.COMPUTE, "push_next", "pop_prev"),
    Queue("C2L", Module.COMPUTE, Module.LOAD, "push_prev", "pop_next"),
    Queue("C2S", Module.COMPUTE, Module.STORE, "push_next", "pop_prev"),
    Queue("S2C", Module.STORE, Module.COMPUTE, "push_prev", "pop_next"),
)
_BY_PAIR = {(q.src, q.dst): q for q in QUEUES}


def queue(src: Module | int, dst: Module | int) -> Queue:
    """The queue from ``src`` to ``dst``; only neighbouring modules have one."""
    try:
        q = _BY_PAIR.get((src, dst))  # Module members and their int values hash alike
    except TypeError:  # unhashable: the conversion below names it
        q = None
    if q is not None:
        return q
    try:
        return _BY_PAIR[Module(src), Module(dst)]
    except (KeyError, ValueError):
        raise ProgramError(
            f"there is no dependency queue from {_name(src)} to {_name(dst)}; queues connect "
            f"load<->compute and compute<->store only") from None


def _name(m: Module | int) -> str:
    try:
        return Module(m).name.lower()
    except ValueError:
        return repr(m)


def module_of(insn: Insn) -> Module:
    """The module that executes ``insn`` (SPEC §5: fetch routing)."""
    if insn.opcode == Opcode.STORE:
        return Module.STORE
    if insn.opcode == Opcode.LOAD and insn.memory_type in (MemType.INP, MemType.WGT):
        return Module.LOAD
    return Module.COMPUTE


def noop(module: Module | int) -> Insn:
    """A sync-only instruction for ``module``: LOAD/STORE with ``x_size`` 0, or an empty GEMM."""
    m = Module(module)
    if m == Module.LOAD:
        return MemInsn(opcode=Opcode.LOAD, memory_type=MemType.INP, y_size=0, x_size=0)
    if m == Module.STORE:
        return MemInsn(opcode=Opcode.STORE, memory_type=MemType.OUT, y_size=0, x_size=0)
    return GemmInsn(uop_bgn=0, uop_end=0, iter_out=1, iter_in=1)


def check_tokens(insns: list[Insn], depth: int) -> dict[str, int]:
    """Check the program-order token invariant (module docstring); return each queue's peak.

    Raises :class:`ProgramError` naming the instruction and queue on an illegal flag, a pop
    with no earlier push, or more than ``depth`` outstanding tokens (the first violation in
    program order; at one instruction an illegal flag, then pops, then pushes, each in queue
    order). Vectorised over the stream (:func:`_check_tokens_loop` is the same walk, one
    instruction at a time, for the error message).
    """
    n = len(insns)
    if not n:
        return {q.name: 0 for q in QUEUES}
    rows = [(i.opcode, getattr(i, "memory_type", -1), i.pop_prev, i.pop_next, i.push_prev,
             i.push_next) for i in insns]
    try:
        a = np.array(rows, dtype=np.int64).reshape(n, 6)
    except (TypeError, ValueError, OverflowError):
        return _check_tokens_loop(insns, depth)
    peak = _token_peaks(a[:, 0], a[:, 1], [a[:, 2 + k] != 0 for k in range(4)], depth)
    if peak is None:
        return _check_tokens_loop(insns, depth)  # raises, naming the first violation
    return peak


def check_tokens_encoded(code: bytes, insns: list[Insn], cfg: Config) -> dict[str, int]:
    """:func:`check_tokens` (depth ``cfg.dep_queue_depth``) of ``insns`` read from their
    encoding ``code`` (:func:`~tessera.isa.to_bytes`; the header fields and the memory type
    sit at the same bits in every format), vectorised without a pass over the records;
    ``insns`` name the first violation."""
    if len(code) != INSN_BYTES * len(insns):
        raise ProgramError(f"{len(code)} bytes of code do not encode {len(insns)} instructions")
    depth = cfg.dep_queue_depth
    if not insns:
        return {q.name: 0 for q in QUEUES}
    words = np.frombuffer(code, dtype="<u8")
    lo, hi = words[0::2], words[1::2]
    f = {fl.name: fl for fl in layout(cfg).mem}
    op = extract(lo, hi, f["opcode"])
    mt = extract(lo, hi, f["memory_type"])  # read only where the opcode is LOAD
    peak = _token_peaks(op, mt, [extract(lo, hi, f[name]) != 0 for name in _FLAGS], depth)
    if peak is None:
        return _check_tokens_loop(insns, depth)
    return peak


def _token_peaks(op: np.ndarray, mt: np.ndarray, flags: list[np.ndarray], depth: int
                 ) -> dict[str, int] | None:
    """Each queue's peak, or None on any violation (opcode and memory type columns, the
    ``_FLAGS`` as bool columns)."""
    n = len(op)
    count = {q.name: 0 for q in QUEUES}
    module = np.where(op == Opcode.STORE, Module.STORE,
                      np.where((op == Opcode.LOAD) & ((mt == MemType.INP) | (mt == MemType.WGT)),
                               Module.LOAD, Module.COMPUTE))
    flag = dict(zip(_FLAGS, flags))
    bad = np.zeros(n, bool)
    for m in Module:
        here = module == m
        for name in _FLAGS:
            if name not in _LEGAL[m]:
                bad |= here & flag[name]
    peak = dict(count)
    for q in QUEUES:
        pops = (module == q.dst) & flag[q.pop_flag]
        pushes = (module == q.src) & flag[q.push_flag]
        level = np.cumsum(pushes.astype(np.int64) - pops)
        bad |= (pops & (level < 0)) | (pushes & (level > depth))
        peak[q.name] = max(0, int(level.max()))
    return None if bad.any() else peak


_FLAGS = ("pop_prev", "pop_next", "push_prev", "push_next")
_LEGAL = {m: {q.push_flag for q in QUEUES if q.src == m} | {q.pop_flag for q in QUEUES
                                                            if q.dst == m} for m in Module}


def _check_tokens_loop(insns: list[Insn], depth: int) -> dict[str, int]:
    count = {q.name: 0 for q in QUEUES}
    peak = dict(count)
    legal = _LEGAL
    for pc, insn in enumerate(insns):
        m = module_of(insn)
        for flag in _FLAGS:
            if getattr(insn, flag) and flag not in legal[m]:
                raise ProgramError(f"instruction {pc}: {flag} is illegal on the {m.name.lower()} "
                                   f"module")
        for q in QUEUES:
            if q.dst == m and getattr(insn, q.pop_flag):
                count[q.name] -= 1
                if count[q.name] < 0:
                    raise ProgramError(f"instruction {pc} pops {q.name} before any token was "
                                       f"pushed in program order")
        for q in QUEUES:
            if q.src == m and getattr(insn, q.push_flag):
                count[q.name] += 1
                peak[q.name] = max(peak[q.name], count[q.name])
                if count[q.name] > depth:
                    raise ProgramError(
                        f"instruction {pc} pushes a token that leaves {count[q.name]} tokens "
                        f"outstanding in {q.name}, more than dep_queue_depth={depth}; the "
                        f"program could deadlock")
    return peak


class HappensBefore:
    """The ordering that tokens and per-module program order impose on a stream.

    ``ordered(a, b)`` is True when instruction ``a`` is guaranteed to have completed before
    instruction ``b`` starts, whatever the hardware's interleaving. FINISH is ignored. Assumes
    unbounded token queues (capacity only adds stalls, never orderings).
    """

    def __init__(self, insns: list[Insn]):
        n = len(insns)
        self.module = [int(module_of(i)) for i in insns]
        self.seq = [0] * n
        self.clock = np.zeros((n, 3), np.int64)
        queues = [[pc for pc in range(n) if self.module[pc] == m
                   and insns[pc].opcode != Opcode.FINISH] for m in range(3)]
        ptr = [0, 0, 0]
        vc = [np.zeros(3, np.int64) for _ in range(3)]
        tokens: dict[str, list[np.ndarray]] = {q.name: [] for q in QUEUES}
        taken = {q.name: 0 for q in QUEUES}
        done = 0
        total = sum(len(q) for q in queues)
        while done < total:
            progressed = False
            for m in range(3):
                while ptr[m] < len(queues[m]):
                    pc = queues[m][ptr[m]]
                    insn = insns[pc]
                    pops = [q for q in QUEUES if q.dst == m and getattr(insn, q.pop_flag)]
                    if any(taken[q.name] >= len(tokens[q.name]) for q in pops):
                        break
                    for q in pops:
                        np.maximum(vc[m], tokens[q.name][taken[q.name]], out=vc[m])
                        taken[q.name] += 1
                    ptr[m] += 1
                    vc[m][m] = ptr[m]
                    self.seq[pc] = ptr[m]
                    self.clock[pc] = vc[m]
                    for q in QUEUES:
                        if q.src == m and getattr(insn, q.push_flag):
                            tokens[q.name].append(vc[m].copy())
                    done += 1
                    progressed = True
            if not progressed:
                raise ProgramError("the stream deadlocks even with unbounded token queues")

    def ordered(self, a: int, b: int) -> bool:
        """Whether instruction ``a`` completes before instruction ``b`` starts."""
        ma = self.module[a]
        if ma == self.module[b]:
            return a < b
        return bool(self.seq[a] <= self.clock[b][ma])
