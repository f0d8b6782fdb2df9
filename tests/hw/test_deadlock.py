"""Token-deadlock detection (SPEC §6 v1.1, error 7) in Amaranth's simulator.

The detector alone (``hw/deadlock.py``): it fires exactly on the window-th consecutive cycle of
the deadlock condition, with the lowest blocked pc, and never when any part of the condition is
missing. The whole core: deadlocking programs report code 7 and the lowest blocked pc within
256 cycles of the deadlock arising, and well-synchronised programs with slow memory never do.
"""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator
from amsim import AmaranthDevice

from tessera.config import Config
from tessera.errors import DeviceError
from tessera.hw.deadlock import DEADLOCK_WINDOW, DeadlockDetector
from tessera.isa import FinishInsn, GemmInsn, MemInsn, MemType, Opcode, Uop, encode_uop, to_bytes
from tessera.regs import ErrorCode
from tessera.sim.progen import random_program

CFG = Config.preset("tiny")
NAMES = ("load", "compute", "store")


def _detector_trace(window: int, steps: list[dict]) -> list[tuple[int, int]]:
    """Drive the detector with one input dict per cycle; return (err, err_pc) per cycle."""
    dut = DeadlockDetector(NAMES, window=window)
    seen: list[tuple[int, int]] = []

    async def bench(ctx):
        for step in steps:
            for n in NAMES:
                busy, blocked, pc = step.get(n, (0, 0, 0))
                port = getattr(dut, n)
                ctx.set(port.busy, busy)
                ctx.set(port.blocked, blocked)
                ctx.set(port.pc, pc)
            ctx.set(dut.fetch_stuck, step.get("stuck", 1))
            ctx.set(dut.quiet, step.get("quiet", 1))
            seen.append((ctx.get(dut.err), ctx.get(dut.err_pc)))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return seen


DEAD = {"load": (1, 1, 9), "compute": (1, 1, 4), "store": (0, 0, 2)}


def test_detector_fires_after_the_window_with_the_lowest_blocked_pc() -> None:
    trace = _detector_trace(5, [DEAD] * 8)
    assert [e for e, _ in trace] == [0, 0, 0, 0, 0, 1, 0, 0]  # once, after the 5th cycle
    assert trace[5][1] == 4  # store is idle, so its pc 2 does not count
    both = dict(DEAD, store=(1, 1, 2))
    assert _detector_trace(3, [both] * 4)[3] == (1, 2)


@pytest.mark.parametrize("spoiler", [
    {"compute": (1, 0, 4)},     # a module with work that is not blocked
    {"quiet": 0},               # a memory transaction outstanding
    {"stuck": 0},               # fetch can still dispatch
    {"load": (0, 0, 0), "compute": (0, 0, 0)},  # nobody blocked: that is completion
])
def test_detector_needs_every_part_of_the_condition(spoiler: dict) -> None:
    # the condition held for window-1 cycles, then one cycle without it restarts the count
    steps = [DEAD] * 4 + [dict(DEAD, **spoiler)] + [DEAD] * 4 + [dict(DEAD, **spoiler)] * 3
    assert all(e == 0 for e, _ in _detector_trace(5, steps))


# -- the whole core -------------------------------------------------------------------------------

def _run(insns, data: dict[int, bytes], **dev_options) -> tuple[tuple | None, int | None]:
    dev = AmaranthDevice(CFG, **dev_options)
    for addr, blob in sorted(data.items()):
        assert dev.alloc(len(blob)).addr == addr
        dev.write(addr, blob)
    code = to_bytes(insns, CFG)
    ibuf = dev.alloc(len(code))
    dev.write(ibuf.addr, code)
    try:
        stats = dev.run(ibuf.addr, len(insns), timeout_cycles=20_000)
    except DeviceError as exc:
        assert exc.code is not None, str(exc)  # not a timeout
        cycles = dev.read_reg(0x14)
        return (exc.code, exc.pc), cycles
    return None, stats.cycles


L, S = Opcode.LOAD, Opcode.STORE
UOPS = {0x1000: b"".join(encode_uop(Uop(k, k, k), CFG).to_bytes(4, "little") for k in range(4))}
UOP_LOAD = MemInsn(opcode=L, memory_type=MemType.UOP, dram_base=0x1000 // 4, y_size=1, x_size=4)


def test_pop_of_a_queue_nobody_fills() -> None:
    """Compute's GEMM 2 waits on L2C; no load pushes it. Store 3 waits on C2S behind it."""
    insns = [UOP_LOAD, GemmInsn(uop_end=2, reset=1),
             GemmInsn(uop_end=2, pop_prev=1, push_next=1),
             MemInsn(opcode=S, memory_type=MemType.OUT, pop_prev=1, y_size=1, x_size=1,
                     dram_base=0x1000),
             FinishInsn()]
    err, cycles = _run(insns, UOPS)
    assert err == (ErrorCode.TOKEN_DEADLOCK, 2)
    assert cycles < 120 + DEADLOCK_WINDOW, cycles  # the fetch and uop load take < 120 cycles


def test_push_into_a_full_queue() -> None:
    """Compute pushes C2S nine times (capacity 8) and no store pops: the ninth GEMM (pc 9) has
    completed and waits to push into the full queue."""
    depth = CFG.dep_queue_depth
    insns = [UOP_LOAD] + [GemmInsn(uop_end=1, reset=1, push_next=1) for _ in range(depth + 1)]
    insns += [FinishInsn()]
    err, _ = _run(insns, UOPS)
    assert err == (ErrorCode.TOKEN_DEADLOCK, depth + 1)


def test_two_modules_wait_on_each_other() -> None:
    """Store 1 waits on C2S, compute 2 waits on S2C: the lowest blocked pc is the store's."""
    insns = [UOP_LOAD,
             MemInsn(opcode=S, memory_type=MemType.OUT, pop_prev=1, push_prev=1, y_size=1,
                     x_size=1, dram_base=0x1000),
             GemmInsn(uop_end=1, reset=1, pop_next=1, push_next=1), FinishInsn()]
    err, _ = _run(insns, UOPS)
    assert err == (ErrorCode.TOKEN_DEADLOCK, 1)


def test_full_command_queue_is_reported_not_hung() -> None:
    """The token compute's pc 1 waits for comes from a load behind more compute instructions than
    the command queue holds (spec-notes: not supported); the RTL reports the deadlock."""
    insns = [UOP_LOAD, GemmInsn(uop_end=1, reset=1, pop_prev=1)]
    insns += [GemmInsn(uop_end=1, reset=1) for _ in range(12)]
    insns += [MemInsn(opcode=L, memory_type=MemType.INP, x_size=0, push_next=1), FinishInsn()]
    err, _ = _run(insns, UOPS)
    assert err == (ErrorCode.TOKEN_DEADLOCK, 1)
    # with the load early enough the same tokens work
    ok = [insns[0], insns[-2], *insns[1:-2], insns[-1]]
    assert _run(ok, UOPS)[0] is None


@pytest.mark.parametrize("seed", [21, 22])
def test_slow_memory_never_looks_like_a_deadlock(seed: int) -> None:
    """Random well-synchronised programs with DRAM stalls (fetch and DMA in flight while the
    other modules wait on tokens for longer than the window) finish without error."""
    prog = random_program(CFG, np.random.default_rng(seed), rounds=3)
    dev = AmaranthDevice(CFG, seed=seed, stall=0.85)
    prog.place(dev)
    stats = dev.run(prog.insn_addr, prog.insn_count, timeout_cycles=400_000)
    assert stats.counters["insns_retired"] > 0
    assert stats.counters["compute_wait_cycles"] > DEADLOCK_WINDOW
