"""The cycle model (``tessera.sim.timing``) without a simulator: its arithmetic, its contract with
the RTL's constants, and runs whose cycles follow from the RTL's documented delays.

The model is checked against the RTL itself in ``tests/rtl/test_timing_model.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from tessera import isa
from tessera.config import Config
from tessera.errors import SimError
from tessera.isa import FinishInsn, GemmInsn, MemInsn, MemType, Opcode
from tessera.sim import timing
from tessera.sim.progen import random_program
from tessera.sim.timing.port import credit_period, split_bursts

TINY = Config.preset("tiny")


def _predict(insns, cfg=TINY, dram=None, count=None, addr=1 << 16, trace=False):
    code = isa.to_bytes(insns, cfg)
    prog = timing.decode_stream(code, cfg)
    count = len(insns) if count is None else count
    return timing.predict(prog, cfg, dram, insn_addr=addr, insn_count=count, trace=trace)


def test_credit_period_follows_the_harness_token_bucket():
    # exact double-precision sums: 0.1 added ten times is 0.9999999999999999 < 1
    assert [credit_period(b) for b in (1.0, 0.5, 0.25, 0.125)] == [1, 2, 4, 8]
    assert credit_period(0.1) == 11
    assert credit_period(0.3) == 4  # 0.3 * 3 = 0.8999999999999999
    assert credit_period(0.9) == 2
    with pytest.raises(ValueError, match="beats_per_cycle"):
        credit_period(0.0)


def test_bursts_never_cross_4k_and_hold_at_most_256_beats():
    # 64-bit bus: a page is 512 beats
    assert split_bursts(0x1000, 600, 8) == [(0, 256), (256, 256), (512, 88)]
    assert split_bursts(0x1FF8, 3, 8) == [(0, 1), (1, 2)]
    assert split_bursts(0x2000 - 64, 40, 64) == [(0, 1), (1, 39)]


def test_dram_timing_is_validated():
    assert timing.DramTiming() == timing.DramTiming(16, 1.0)
    for bad in (0, -3, 1.5, True, 100_001):
        with pytest.raises(SimError, match="read_latency must be an integer in"):
            timing.DramTiming(read_latency=bad)
    for bad in (0, 1.01, -0.5, "1", True):
        with pytest.raises(SimError, match="beats_per_cycle must be in"):
            timing.DramTiming(beats_per_cycle=bad)


def test_finish_alone_follows_the_fetch_and_dispatch_delays():
    # start pulse 0; fetch request granted at 1, burst generated at 2, AR accepted at 3; the
    # two beats of the instruction at 3+L and 4+L; the instruction queue has it 2 cycles after
    # the push, the decoder 1 later, the compute command queue 2 after dispatch; IDLE, POP,
    # PUSH (retire), and `finished` the cycle after (the retire counter is registered).
    for latency in (1, 16, 100):
        p = _predict([FinishInsn()], dram=timing.DramTiming(latency))
        assert p.cycles == 12 + latency
        assert p.counters == {"load_busy_cycles": 0, "store_busy_cycles": 0,
                              "compute_wait_cycles": 0}


def test_gemm_costs_its_steps_plus_seven_cycles():
    # IDLE, POP (start_run), RUN = steps + 4 (S0..S3 fill/drain), PUSH: steps + 7 per GEMM
    # when the next command is waiting; an empty loop costs RUN = 1 cycle
    base = _predict([GemmInsn(reset=1, uop_end=1, iter_out=1), FinishInsn()]).cycles
    for steps in (2, 10, 1000):
        p = _predict([GemmInsn(reset=1, uop_end=1, iter_out=steps), FinishInsn()])
        assert p.cycles == base + steps - 1
    two = _predict([GemmInsn(reset=1, uop_end=1, iter_out=500)] * 2 + [FinishInsn()]).cycles
    one = _predict([GemmInsn(reset=1, uop_end=1, iter_out=500), FinishInsn()]).cycles
    assert two - one == 500 + 7
    empty = _predict([GemmInsn(uop_end=0)] * 2 + [FinishInsn()]).cycles
    assert empty < one


def test_bandwidth_bounds_a_long_load():
    # 20 INP rows of 200 elements (4 bytes each on a 64-bit bus: 100 beats a row), requested
    # ahead; the load module writes one element per cycle, so at full bandwidth a beat takes 2
    # cycles; at a quarter beat per cycle it waits 4 cycles for its credit, plus one more for
    # its second element; the rest is one read latency and a few cycles of the FSM
    load = MemInsn(opcode=Opcode.LOAD, memory_type=MemType.INP, dram_base=1 << 14, y_size=20,
                   x_size=200, x_stride=200)
    for bpc, per_beat in ((1.0, 2), (0.25, 5)):
        p = _predict([load, FinishInsn()], dram=timing.DramTiming(16, bpc))
        beats = 20 * 100
        assert beats * per_beat < p.counters["load_busy_cycles"] < beats * per_beat + 30


def test_trace_is_consistent_with_the_cycles():
    cfg = TINY
    prog = random_program(cfg, np.random.default_rng(3), rounds=5)
    dec = timing.decode_stream(prog.code(), cfg)
    p = timing.predict(dec, cfg, insn_addr=prog.insn_addr, insn_count=prog.insn_count,
                       trace=True)
    assert len(p.insns) == dec.n
    last = {}
    for r in p.insns:
        assert r.taken < r.popped + 1 <= r.started <= r.pushing <= r.retired < p.cycles
        if r.first_beat is not None:
            assert r.started < r.first_beat < r.pushing
        assert last.get(r.module, -1) < r.taken
        last[r.module] = r.retired
    busy = sum(r.pushing - r.started for r in p.insns if r.module == "load")
    assert busy == p.counters["load_busy_cycles"]
    wait = sum(r.popped - r.taken - 1 for r in p.insns if r.module == "compute")
    assert wait == p.counters["compute_wait_cycles"]
    assert timing.predict(dec, cfg, insn_addr=prog.insn_addr,
                          insn_count=prog.insn_count).cycles == p.cycles


def test_deadlocks_are_reported_like_fsim():
    # progen's rounds hold two tokens in flight; with one-token queues they deadlock
    from tessera.driver import open_device
    from tessera.errors import DeviceError

    cfg = Config(**{**TINY.to_dict(), "dep_queue_depth": 1})
    for seed in range(3):
        prog = random_program(cfg, np.random.default_rng(seed), rounds=4)
        with open_device("fsim", cfg, mem_bytes=1 << 22) as dev:
            prog.place(dev)
            with pytest.raises(DeviceError, match="waits to push C2L"):
                dev.run(prog.insn_addr, prog.insn_count)
        dec = timing.decode_stream(prog.code(), cfg)
        p = timing.predict(dec, cfg, insn_addr=prog.insn_addr, insn_count=prog.insn_count)
        assert p.cycles is None and p.blocked_at > 0
        assert "compute instruction" in p.blocked and "waiting to push a token" in p.blocked


def test_command_queue_deadlock_that_fsim_does_not_have():
    # 9 LOADs waiting for C2L tokens that only a later GEMM pushes: the load command queue
    # (8 entries + the module's register) fills and dispatch can never reach the GEMM
    # (spec-notes 2: such programs are not supported by the RTL)
    wait = MemInsn(opcode=Opcode.LOAD, memory_type=MemType.INP, pop_next=1)
    push = GemmInsn(push_prev=1)
    p = _predict([wait] * 10 + [push] * 10 + [FinishInsn()])
    assert p.cycles is None
    assert "dispatch of instruction" in p.blocked and "command queue" in p.blocked
    ok = _predict([wait] * 8 + [push] * 8 + [FinishInsn()])
    assert ok.cycles is not None


def test_rtl_constants_are_the_hardware_ones():
    # the model mirrors a few RTL constants rather than importing Amaranth with hw/
    from tessera.hw import axi, compute, fetch
    from tessera.sim.timing import engine, port

    assert (engine.IQ_DEPTH, engine.CMDQ_DEPTH) == (fetch.IQ_DEPTH, fetch.CMDQ_DEPTH)
    assert engine.ALU_QUEUE_DEPTH == compute.ALU_QUEUE_DEPTH
    assert (port.MAX_BURST, port.PAGE, port.OUTSTANDING) == (axi.MAX_BURST, axi.PAGE_BYTES,
                                                             axi.OUTSTANDING)


def test_fsim_device_reports_the_model_cycles_and_counters():
    from tessera.driver import open_device
    from tessera.regs import Reg, counter_offset

    prog = random_program(TINY, np.random.default_rng(5), rounds=6)
    seen = []
    for latency, bpc in ((16, 1.0), (60, 0.25)):
        with open_device("fsim", TINY, mem_bytes=1 << 22, read_latency=latency,
                         beats_per_cycle=bpc) as dev:
            prog.place(dev)
            stats = dev.run(prog.insn_addr, prog.insn_count)
            dec = timing.decode_stream(prog.code(), TINY)
            want = timing.predict(dec, TINY, timing.DramTiming(latency, bpc),
                                  insn_addr=prog.insn_addr, insn_count=prog.insn_count)
            assert stats.cycles == want.cycles > 0
            cycles = dev.read_reg(Reg.CYCLES_LO) | dev.read_reg(Reg.CYCLES_HI) << 32
            assert cycles == want.cycles
            for name in timing.TIMING_COUNTERS:
                assert stats.counters[name] == want.counters[name]
                assert dev.read_reg(counter_offset(name)) == want.counters[name]
            assert stats.counters["gemm_steps"] > 0  # the architectural ones are still there
            seen.append(stats.cycles)
    assert seen[1] > seen[0]  # slower DRAM, more cycles


def test_a_decoded_program_is_hashed_once_and_a_writable_one_every_time(monkeypatch):
    """The model's cache digest is kept on a decoded program (its arrays are read-only, so a
    change cannot make it stale); a program with writable arrays is hashed on every call, so
    changing one of its fields changes the prediction."""
    prog = random_program(TINY, np.random.default_rng(5), rounds=2)
    dec = timing.decode_stream(prog.code(), TINY)
    assert all(not a.flags.writeable for a in dec.arrays.values())
    with pytest.raises(ValueError, match="read-only"):
        dec.arrays["x_size"][0] = 1
    calls = []
    real = timing.hashlib.blake2b
    monkeypatch.setattr(timing.hashlib, "blake2b", lambda *a, **k: calls.append(1) or real(*a, **k))
    kw = {"insn_addr": prog.insn_addr, "insn_count": prog.insn_count}
    first = timing.predict(dec, TINY, **kw)
    assert timing.predict(dec, TINY, **kw) == first and len(calls) == 1 and dec.digest
    loose = timing.DecodedStream(dec.n, {k: v.copy() for k, v in dec.arrays.items()})
    assert timing.predict(loose, TINY, **kw) == first and loose.digest is None
    loads = np.flatnonzero((loose.arrays["opcode"] == Opcode.LOAD) & (loose.arrays["x_size"] > 1))
    loose.arrays["x_size"][loads] -= 1  # shorter loads: a different program, fewer cycles
    assert timing.predict(loose, TINY, **kw).cycles < first.cycles
    assert len(calls) == 3


def test_fsim_device_predictions_are_not_shared_between_runs():
    """Repeated runs of one program reuse the model's cached prediction, each run getting its
    own copy: what a caller does to ``last_prediction`` does not reach the next run."""
    from tessera.driver import open_device

    prog = random_program(TINY, np.random.default_rng(6), rounds=3)
    with open_device("fsim", TINY) as dev:
        prog.place(dev)
        first = dev.run(prog.insn_addr, prog.insn_count)
        dev.last_prediction.counters["load_busy_cycles"] = -1
        dev.last_prediction.cycles = -1
        again = dev.run(prog.insn_addr, prog.insn_count)
        assert again.cycles == first.cycles > 0 and again.counters == first.counters
        assert dev.last_prediction.counters["load_busy_cycles"] >= 0


def test_fsim_device_checks_its_dram_knobs():
    from tessera.driver import open_device
    from tessera.errors import DeviceError

    with pytest.raises(DeviceError, match="read_latency must be an integer in"):
        open_device("fsim", TINY, read_latency=0)
    with pytest.raises(DeviceError, match=r"beats_per_cycle must be in \(0, 1\]"):
        open_device("fsim", TINY, beats_per_cycle=2)


def test_fsim_device_runs_a_command_queue_deadlock_without_cycles():
    # fsim's command queues are unbounded (spec-notes 2): the program runs, but the RTL's
    # deadlock on it, so there is no cycle count; the prediction says why
    from tessera.driver import open_device

    wait = MemInsn(opcode=Opcode.LOAD, memory_type=MemType.INP, pop_next=1)
    code = isa.to_bytes([wait] * 10 + [GemmInsn(push_prev=1)] * 10 + [FinishInsn()], TINY)
    with open_device("fsim", TINY) as dev:
        buf = dev.alloc(len(code))
        dev.write(buf.addr, code)
        stats = dev.run(buf.addr, 21)
        assert stats.cycles is None and stats.counters["insns_retired"] == 21
        assert "command queue" in dev.last_prediction.blocked
