"""Token deadlocks (SPEC §6 v1.1, error 7): ``verilator`` vs ``fsim``.

Two kinds of seeded random programs:

- *flag programs*: per-module streams of data-free instructions with random dependency flags,
  interleaved at random (many deadlock, through empty and through full queues; each module gets
  at most :data:`MAX_PER_MODULE` instructions so that no command queue fills — a program whose
  deadlock depends on command-queue depth is not supported, spec-notes point 2);
- *broken pipelines*: ``sim.progen`` programs (DMA, GEMM, ALU, stores) with one push flag
  cleared or one pop flag added.

Whenever fsim reports a deadlock, the RTL must report the same code and pc (after every
instruction before it has run exactly as in fsim); when fsim completes, the RTL must complete
with the same memory and counters (the detector never fires on a program that is not
deadlocked); a program fsim rejects as racy must still end on the RTL (no hang).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from rtlutil import free_all, memory_diff, open_pair, run

from tessera.config import Config
from tessera.hw.fetch import CMDQ_DEPTH
from tessera.isa import FinishInsn, GemmInsn, MemInsn, MemType, Opcode, to_bytes
from tessera.regs import ErrorCode, Reg
from tessera.sim.progen import random_program

TINY = Config.preset("tiny")
TIMEOUT = 2_000_000
MAX_PER_MODULE = CMDQ_DEPTH  # + the one the module holds: the command queue never fills

# SPEC §5: each module's pop and push flags
POP_FLAGS = (("pop_next",), ("pop_prev", "pop_next"), ("pop_prev",))
PUSH_FLAGS = (("push_next",), ("push_prev", "push_next"), ("push_prev",))


def _sync_insn(module: int, flags: dict[str, int]):
    if module == 0:
        return MemInsn(opcode=Opcode.LOAD, memory_type=MemType.WGT, x_size=0, **flags)
    if module == 2:
        return MemInsn(opcode=Opcode.STORE, memory_type=MemType.OUT, x_size=0, **flags)
    return GemmInsn(uop_bgn=0, uop_end=0, **flags)


# (producer, push flag, consumer, pop flag) per token queue: L2C, C2L, C2S, S2C
QUEUES = ((0, "push_next", 1, "pop_prev"), (1, "push_prev", 0, "pop_next"),
          (1, "push_next", 2, "pop_prev"), (2, "push_prev", 1, "pop_next"))


def flag_program(rng: np.random.Generator) -> list:
    """Random flags; in half the programs every queue then gets as many pushes as pops (these
    still deadlock when the order is cyclic or a queue overfills); modules interleaved at
    random, then FINISH."""
    p = float(rng.uniform(0.15, 0.6))
    streams = []
    for m in range(3):
        n = int(rng.integers(1, MAX_PER_MODULE + (0 if m == 1 else 1)))  # FINISH is compute's
        streams.append([{f: int(rng.random() < p) for f in POP_FLAGS[m] + PUSH_FLAGS[m]}
                        for _ in range(n)])
    if rng.random() < 0.5:
        for pm, pf, cm, cf in QUEUES:
            pushes = [d for d in streams[pm] if d[pf]]
            pops = [d for d in streams[cm] if d[cf]]
            extra, flag = (pushes, pf) if len(pushes) > len(pops) else (pops, cf)
            for k in rng.permutation(len(extra))[:abs(len(pushes) - len(pops))]:
                extra[k][flag] = 0
    order = rng.permutation(np.repeat(np.arange(3), [len(s) for s in streams]))
    return [_sync_insn(int(m), streams[m].pop(0)) for m in order] + [FinishInsn()]


def broken_pipeline(cfg: Config, rng: np.random.Generator):
    """A progen program with one push flag cleared or one (extra) pop flag set."""
    prog = random_program(cfg, rng, rounds=int(rng.integers(2, 6)))
    insns = prog.insns[:-1]  # keep FINISH
    if rng.random() < 0.5:
        cands = [(i, f) for i, x in enumerate(insns) for f in ("push_prev", "push_next")
                 if getattr(x, f, 0)]
        value = 0
    else:
        cands = [(i, f) for i, x in enumerate(insns) for f in _pop_flags(x, cfg)
                 if not getattr(x, f)]
        value = 1
    i, f = cands[int(rng.integers(len(cands)))]
    prog.insns[i] = dataclasses.replace(insns[i], **{f: value})
    return prog


def _pop_flags(insn, cfg: Config) -> tuple[str, ...]:
    if isinstance(insn, MemInsn) and insn.opcode == Opcode.STORE:
        return ("pop_prev",)
    if isinstance(insn, MemInsn) and insn.memory_type in (MemType.INP, MemType.WGT):
        return ("pop_next",)
    return ("pop_prev", "pop_next")


def _compare(got, want, vdev, fdev, where: str) -> str:
    """Check the RTL outcome against fsim's; return fsim's verdict."""
    if want.error is None:
        assert got.error is None, f"{where}: RTL failed where fsim completed: {got.error}"
        assert not memory_diff(vdev, fdev), f"{where}: DRAM differs"
        assert got.counters == want.counters, f"{where}: counters differ"
        return "done"
    if want.error.code == ErrorCode.TOKEN_DEADLOCK:
        assert got.error is not None and (got.error.code, got.error.pc) == (
            want.error.code, want.error.pc), f"{where}: RTL {got.error}; fsim {want.error}"
        assert vdev.read_reg(Reg.ERROR_CODE) == ErrorCode.TOKEN_DEADLOCK
        return "deadlock"
    # a race or another fsim-only verdict: RTL results are undefined, but the run must end
    assert got.error is None or "timed out" not in str(got.error), f"{where}: RTL {got.error}"
    return "other"


def test_random_flag_programs_deadlock_alike():
    vdev, fdev = open_pair(TINY)
    seen = {"done": 0, "deadlock": 0, "other": 0}
    with vdev, fdev:
        for seed in range(120):
            insns = flag_program(np.random.default_rng(seed))
            outcomes = []
            for dev in (vdev, fdev):
                code = to_bytes(insns, TINY)
                buf = dev.alloc(len(code))
                dev.write(buf.addr, code)
                outcomes.append(run(dev, buf.addr, len(insns), TIMEOUT))
            seen[_compare(*outcomes, vdev, fdev, f"flag program seed {seed}")] += 1
            free_all(vdev)
            free_all(fdev)
    assert seen["deadlock"] >= 30 and seen["done"] >= 20, seen


@pytest.mark.parametrize("latency", [1, 3000])
def test_broken_pipelines_deadlock_alike(latency):
    """With a DRAM read latency far beyond the detection window too: DMA and instruction fetch
    in flight while other modules wait on tokens is not a deadlock."""
    vdev, fdev = open_pair(TINY, read_latency=latency)
    seen = {"done": 0, "deadlock": 0, "other": 0}
    with vdev, fdev:
        for seed in range(16 if latency == 1 else 6):
            progs = [broken_pipeline(TINY, np.random.default_rng(seed)) for _ in range(2)]
            progs[0].place(vdev)
            progs[1].place(fdev)
            got = run(vdev, progs[0].insn_addr, progs[0].insn_count, 20 * TIMEOUT)
            want = run(fdev, progs[1].insn_addr, progs[1].insn_count, None)
            seen[_compare(got, want, vdev, fdev, f"pipeline seed {seed}")] += 1
            free_all(vdev)
            free_all(fdev)
    assert seen["deadlock"] >= 2, seen


def test_deadlock_is_reported_long_before_the_default_timeout():
    """A deadlock on the ``default`` core is error 7 within 256 cycles of arising, with no
    ``timeout_cycles`` given (before, the run went on to the 50 M-cycle default timeout)."""
    cfg = Config.preset("default")
    vdev, fdev = open_pair(cfg)
    with vdev, fdev:
        insns = [MemInsn(opcode=Opcode.LOAD, memory_type=MemType.INP, x_size=0, push_next=1),
                 GemmInsn(uop_bgn=0, uop_end=0, pop_prev=1),
                 GemmInsn(uop_bgn=0, uop_end=0, pop_prev=1, push_next=1),
                 MemInsn(opcode=Opcode.STORE, memory_type=MemType.OUT, x_size=0, pop_prev=1),
                 FinishInsn()]
        outcomes = []
        for dev in (vdev, fdev):
            code = to_bytes(insns, cfg)
            buf = dev.alloc(len(code))
            dev.write(buf.addr, code)
            outcomes.append(run(dev, buf.addr, len(insns), None))
        assert _compare(*outcomes, vdev, fdev, "default") == "deadlock"
        assert outcomes[0].error.pc == 2
        cycles = vdev.read_reg(Reg.CYCLES_LO)
        assert cycles < 256 + 100, cycles  # fetching 5 instructions takes well under 100
