"""A cycle model of the RTL for the functional simulator (docs/cycle-model.md).

From a decoded program, the :class:`~tessera.config.Config` and the DRAM timing knobs of the
Verilator harness (:class:`DramTiming`), :func:`predict` computes the cycles the RTL takes
(CYCLES), its timing counters and, on request, per-instruction timing of every module for
traces. Timing depends on the instructions only, never on data, so the prediction can be made
before the functional simulation runs.
"""

from __future__ import annotations

import copy
import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from tessera.config import Config
from tessera.errors import SimError
from tessera.isa import INSN_BYTES, MemType, Opcode, extract, layout
from tessera.sim.timing.engine import Blocked, Engine
from tessera.sim.timing.port import credit_period
from tessera.sim.timing.program import FIELDS, MODULE_NAMES, QUEUE_NAMES, prepare

__all__ = ["DramTiming", "Prediction", "InsnTiming", "Interval", "intervals", "Program",
           "DecodedStream", "predict", "decode_stream", "freeze", "clear_cache",
           "TIMING_COUNTERS"]

TIMING_COUNTERS = ("load_busy_cycles", "store_busy_cycles", "compute_wait_cycles")
"""The timing counters of ``tessera.regs.COUNTERS`` the model produces."""

CACHE_SIZE = 512
"""Predictions remembered (without traces), keyed by everything timing depends on: the config,
the DRAM knobs, the program's address and count and its decoded fields."""
_CACHE: OrderedDict[tuple, Prediction] = OrderedDict()


@dataclass(frozen=True)
class DramTiming:
    """The DRAM model's knobs (``sim/native/harness.cpp``; the verilator device's options).

    ``read_latency``: cycles from a read burst's address handshake to its first data beat;
    ``beats_per_cycle`` (0 < x <= 1): each data channel's bandwidth (a token bucket).
    """

    read_latency: int = 16
    beats_per_cycle: float = 1.0

    def __post_init__(self) -> None:
        lat, bpc = self.read_latency, self.beats_per_cycle
        if isinstance(lat, bool) or not isinstance(lat, (int, np.integer)) or \
                not 1 <= lat <= 100_000:
            raise SimError(f"read_latency must be an integer in [1, 100000] cycles, not {lat!r}")
        if isinstance(bpc, bool) or not isinstance(bpc, (int, float, np.floating)) or \
                not 0 < bpc <= 1:
            raise SimError(f"beats_per_cycle must be in (0, 1], not {bpc!r}")
        object.__setattr__(self, "read_latency", int(lat))
        object.__setattr__(self, "beats_per_cycle", float(bpc))


@dataclass(frozen=True)
class InsnTiming:
    """When one instruction went through its module's states (cycles from the start).

    ``taken``: the module took its command; ``popped``: its tokens were popped (it waited
    from ``taken + 1``); ``started``: it began executing (DMA command, micro-op loop);
    ``first_beat``: a load's first DRAM data beat (None otherwise); ``pushing``: it finished
    executing and began to push its tokens; ``retired``: the push was done. ``pop_wait`` and
    ``push_wait`` name the token queue it waited for, if it waited. ``what`` is the
    instruction, e.g. ``"GEMM"``, ``"LOAD INP"``.
    """

    module: str
    pc: int
    taken: int
    popped: int
    started: int
    first_beat: int | None
    pushing: int
    retired: int
    pop_wait: str | None
    push_wait: str | None
    what: str


@dataclass(frozen=True)
class Interval:
    """A module in one state over the cycles ``[start, end)``: ``state`` is ``"exec"`` (running
    ``what``), ``"dram"`` (a load waiting for its first data beat), ``"pop"`` / ``"push"``
    (waiting for a token of queue ``what``). Cycles not covered are idle or FSM bookkeeping."""

    module: str
    state: str
    start: int
    end: int
    pc: int
    what: str


def intervals(insns: list[InsnTiming]) -> list[Interval]:
    """The busy and stalled intervals of every module, from a traced prediction."""
    out = []
    for r in insns:
        if r.pop_wait is not None:
            out.append(Interval(r.module, "pop", r.taken + 1, r.popped, r.pc, r.pop_wait))
        start = r.started
        if r.first_beat is not None and r.first_beat > start:
            out.append(Interval(r.module, "dram", start, r.first_beat, r.pc, r.what))
            start = r.first_beat
        if r.pushing > start:
            out.append(Interval(r.module, "exec", start, r.pushing, r.pc, r.what))
        if r.push_wait is not None:
            out.append(Interval(r.module, "push", r.pushing, r.retired, r.pc, r.push_wait))
    return out


def _labels(fields: Mapping[str, np.ndarray], n: int) -> list[str]:
    op = np.asarray(fields["opcode"][:n]).tolist()
    mt = np.asarray(fields["memory_type"][:n]).tolist()
    xs = np.asarray(fields["x_size"][:n]).tolist()
    out = []
    for o, t, x in zip(op, mt, xs):
        name = Opcode(o).name if o in Opcode._value2member_map_ else f"opcode {o}"
        if o in (Opcode.LOAD, Opcode.STORE):
            name += f" {MemType(t).name}" if t in MemType._value2member_map_ else ""
            name += " (sync)" if x == 0 else ""
        out.append(name)
    return out


@dataclass
class Prediction:
    """The model's answer for one run.

    ``cycles`` is None when the program cannot complete on the RTL: ``blocked`` then says what
    waits on what, ``blocked_at`` is the cycle from which nothing moves any more and
    ``blocked_pc`` the lowest pc among the instructions the blocked modules hold.
    """

    cycles: int | None
    counters: dict[str, int] = field(default_factory=dict)
    blocked: str | None = None
    blocked_at: int | None = None
    blocked_pc: int | None = None
    insns: list[InsnTiming] | None = None


class Program(Protocol):
    """What :func:`predict` reads of a decoded program (``tessera.sim.decode.DecodedProgram``):
    ``n`` dispatched instructions and ``arrays``, every ISA field by name, per pc.

    A program whose field arrays are all read-only (the decoders' are: :func:`freeze`) and that
    has a ``digest`` attribute gets its cache digest computed once, on its first prediction,
    and kept there; the contract is that neither ``n`` nor the ``arrays`` mapping changes after
    decoding. Any other program's fields are hashed on every call."""

    n: int
    arrays: Mapping[str, np.ndarray]


@dataclass
class DecodedStream:
    """A :class:`Program` decoded by :func:`decode_stream` (read-only arrays; ``digest``:
    :func:`predict`'s cache digest, set on first use)."""

    n: int
    arrays: dict[str, np.ndarray]
    digest: bytes | None = field(default=None, repr=False)


def freeze(arrays: Mapping[str, np.ndarray]) -> None:
    """Make a decoded program's field arrays read-only (the :class:`Program` contract)."""
    for a in arrays.values():
        a.flags.writeable = False


def _digest(program: Program) -> bytes:
    """The cache digest of ``program``'s dispatched fields (see :class:`Program`)."""
    known = getattr(program, "digest", None)
    if known is not None:
        return known
    fields, n = program.arrays, program.n
    digest = hashlib.blake2b(np.stack([np.asarray(fields[k][:n], np.int64) for k in FIELDS])
                             .tobytes() if n else b"", digest_size=16).digest()
    if hasattr(program, "digest") and all(
            isinstance(a, np.ndarray) and not a.flags.writeable for a in fields.values()):
        program.digest = digest
    return digest


def predict(program: Program, cfg: Config, dram: DramTiming | None = None, *, insn_addr: int,
            insn_count: int, trace: bool = False) -> Prediction:
    """Predict the RTL's run of ``insn_count`` instructions at ``insn_addr``.

    ``program`` is the decoded program (its first ``program.n`` instructions are dispatched).
    ``trace=True`` also returns the timing of every instruction.
    """
    if not isinstance(cfg, Config):
        raise SimError(f"cfg must be a Config, not {cfg!r}")
    dram = dram if dram is not None else DramTiming()
    fields, n = program.arrays, program.n
    if not 0 <= n <= insn_count:
        raise SimError(f"n must be in [0, insn_count={insn_count}], not {n!r}")
    if insn_addr % INSN_BYTES:
        raise SimError(f"insn_addr must be 16-byte aligned, not {insn_addr:#x}")
    key = None
    if not trace:
        key = (cfg, dram, insn_addr, insn_count, n, _digest(program))
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return copy.deepcopy(hit)
    sp = prepare(fields, n, cfg)
    eng = Engine(sp, cfg.mem_bus_bytes, cfg.dep_queue_depth, insn_addr, insn_count,
                 dram.read_latency, credit_period(dram.beats_per_cycle), trace=trace)
    try:
        cycles = eng.run()
    except Blocked as exc:
        result = Prediction(None, blocked=str(exc), blocked_at=exc.cycle, blocked_pc=exc.pc)
    else:
        counters = {"load_busy_cycles": eng.busy[0], "store_busy_cycles": eng.busy[2],
                    "compute_wait_cycles": eng.wait[1]}
        insns = None
        if trace:
            what = _labels(fields, n)
            insns = sorted((InsnTiming(MODULE_NAMES[m], pc, *rest,
                                       QUEUE_NAMES[pq] if pq is not None else None,
                                       QUEUE_NAMES[sq] if sq is not None else None, what[pc])
                            for m, pc, *rest, pq, sq in eng.trace), key=lambda r: r.pc)
        result = Prediction(cycles, counters, insns=insns)
    if key is not None:
        _CACHE[key] = copy.deepcopy(result)
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    return result


def clear_cache() -> None:
    """Forget every cached prediction (benchmarks measure the model's cold cost with it)."""
    _CACHE.clear()


def decode_stream(code: bytes, cfg: Config) -> DecodedStream:
    """The fields of a packed instruction stream and the number of instructions dispatched
    (up to and including the first FINISH), for :func:`predict` without the simulator."""
    if len(code) % INSN_BYTES:
        raise SimError(f"an instruction stream must be a multiple of 16 bytes, not {len(code)}")
    words = np.frombuffer(bytes(code), dtype="<u8")
    lo, hi = words[0::2], words[1::2]
    op = (lo & np.uint64(7)).astype(np.int64)
    fin = np.flatnonzero(op == Opcode.FINISH)
    n = int(fin[0]) + 1 if fin.size else len(op)
    lay = layout(cfg)
    out: dict[str, np.ndarray] = {"opcode": op}
    for table in (lay.mem, lay.gemm):
        for fl in table:
            out.setdefault(fl.name, extract(lo[:n], hi[:n], fl))
    out["opcode"] = op[:n]
    freeze(out)
    return DecodedStream(n, out)
