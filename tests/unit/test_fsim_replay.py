"""fsim's replays (``sim/replay.py``): a program whose checks passed runs again as its data steps
alone, with the plain path's results and counters, and only while everything its checks
depended on is unchanged — new micro-ops, a STORE into its own micro-ops or freed memory run
(and are rejected) in full."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tessera.config import Config
from tessera.driver import open_device
from tessera.errors import DeviceError
from tessera.isa import AluInsn, AluOp, FinishInsn, MemInsn, MemType, Opcode, elem_bytes
from tessera.sim import replay as replay_mod
from tessera.sim.progen import Segment, build_program, overlap_program, random_program

TINY = Config.preset("tiny")
BATCH2 = dataclasses.replace(TINY, log_batch=1, mem_bus_bits=128)


@pytest.fixture
def replays(monkeypatch):
    """Counts the replayed runs."""
    count = [0]
    run = replay_mod.Replay.run

    def counted(self, sim):
        count[0] += 1
        return run(self, sim)
    monkeypatch.setattr(replay_mod.Replay, "run", counted)
    return count


def _state(dev, prog, stats):
    return prog.read_outputs(dev), stats.counters, dev.sim.acc.copy(), dev.sim.out.copy()


def _same(a, b):
    assert a[0] == b[0] and a[1] == b[1]
    assert np.array_equal(a[2], b[2]) and np.array_equal(a[3], b[3])


@pytest.mark.parametrize("cfg, seed", [(TINY, s) for s in range(8)] + [(BATCH2, 0), (BATCH2, 1)])
def test_replays_equal_the_plain_path_on_new_data(cfg, seed, replays):
    """Runs of a random program with new input data before each: the fast device replays from
    its third run on (the second starts from the micro-ops the first left) and matches the plain
    one in DRAM, counters, acc and out."""
    prog = random_program(cfg, np.random.default_rng(seed), rounds=5)
    devs = [open_device("fsim", cfg, fast=f) for f in (True, False)]
    for dev in devs:
        prog.place(dev)
    rng = np.random.default_rng(100 + seed)
    for run in range(4):
        for seg in prog.segments:
            if seg.name in ("inp", "wgt", "acc", "acc8") and run:
                data = rng.integers(0, 256, len(seg.data), dtype=np.uint8)
                for dev in devs:
                    dev.write(seg.addr, data)
        got = [_state(dev, prog, dev.run(prog.insn_addr, prog.insn_count)) for dev in devs]
        _same(*got)
    assert replays[0] >= 2


def test_new_micro_ops_that_race_are_rejected_after_replays(replays):
    """Same program bytes, new micro-ops in DRAM that make its GEMM race with a deferred ALU:
    the run is checked in full and rejected, like the plain path's."""
    prog = overlap_program(TINY, TINY.acc_depth // 2)
    racy = next(s for s in overlap_program(TINY, 4).segments if s.name == "uop")
    seg = next(s for s in prog.segments if s.name == "uop")
    errors = []
    for fast in (True, False):
        dev = open_device("fsim", TINY, fast=fast)
        prog.place(dev)
        for _ in range(3):  # the third run replays
            dev.run(prog.insn_addr, prog.insn_count)
        dev.write(seg.addr, racy.data)
        with pytest.raises(DeviceError, match="race on the accumulator") as info:
            dev.run(prog.insn_addr, prog.insn_count)
        errors.append(str(info.value))
    assert errors[0] == errors[1] and replays[0] == 1


def _store_into_own_uops(cfg: Config):
    """STORE out row 0 over the program's micro-op, then load that micro-op and run an ALU
    with it: each run's kernel is what the previous run left in out row 0."""
    acc = np.zeros((4, cfg.batch * cfg.block_out), "<i4")
    acc[0] = 1
    segs = [Segment("acc", 4 * cfg.acc_elem_bytes, acc.tobytes()),
            Segment("uop", 4 * 4),
            Segment("res", 4 * cfg.out_elem_bytes, output=True)]

    def insns(seg):
        def eb(name, mt):
            return seg[name].addr // elem_bytes(cfg, mt)
        return [MemInsn(opcode=Opcode.LOAD, memory_type=MemType.ACC,
                        dram_base=eb("acc", MemType.ACC), y_size=1, x_size=4, x_stride=4),
                MemInsn(opcode=Opcode.STORE, memory_type=MemType.OUT,
                        dram_base=eb("uop", MemType.OUT), y_size=1, x_size=1, x_stride=1,
                        push_prev=1),
                MemInsn(opcode=Opcode.LOAD, memory_type=MemType.UOP,
                        dram_base=eb("uop", MemType.UOP), y_size=1, x_size=1, x_stride=1,
                        pop_next=1),
                AluInsn(uop_bgn=0, uop_end=1, alu_opcode=AluOp.ADD, use_imm=1, imm=2,
                        push_next=1),
                MemInsn(opcode=Opcode.STORE, memory_type=MemType.OUT,
                        dram_base=eb("res", MemType.OUT), y_size=1, x_size=4, x_stride=4,
                        pop_prev=1),
                FinishInsn()]
    return build_program(cfg, segs, insns)


def test_a_program_storing_into_its_own_micro_ops_is_not_replayed(replays):
    assert TINY.out_elem_bytes == 4  # out row 0 is exactly one micro-op
    prog = _store_into_own_uops(TINY)
    outs = []
    for fast in (True, False):
        dev = open_device("fsim", TINY, fast=fast)
        prog.place(dev)
        runs = []
        for _ in range(4):
            stats = dev.run(prog.insn_addr, prog.insn_count)
            runs.append(_state(dev, prog, stats))
        outs.append(runs)
    for a, b in zip(*outs):
        _same(a, b)
    assert outs[1][0][0] != outs[1][1][0]  # the second run's kernel is another: a real test
    assert replays[0] == 0


def test_freed_memory_is_refused_after_replays(replays):
    prog = random_program(TINY, np.random.default_rng(2), rounds=3)
    dev = open_device("fsim", TINY)
    prog.place(dev)
    for _ in range(3):
        dev.run(prog.insn_addr, prog.insn_count)
    assert replays[0] >= 1
    dev.free(next(s for s in prog.segments if s.output).addr)
    with pytest.raises(DeviceError, match="not inside allocated device memory"):
        dev.run(prog.insn_addr, prog.insn_count)
