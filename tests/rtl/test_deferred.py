"""The compute module's ALU engine (spec-notes 16) on the RTL: a deferred ALU overlaps the GEMM
after it, with the sequential result, and the cycle model predicts the RTL exactly."""

from __future__ import annotations

import pytest
from rtlutil import memory_diff, open_pair

from tessera.config import Config
from tessera.sim import timing
from tessera.sim.progen import overlap_program

CFGS = [Config.preset("tiny"), Config.preset("default")]


@pytest.mark.parametrize("cfg", CFGS, ids=lambda c: c.summary().split(" depths")[0])
def test_deferred_alu_overlaps_the_following_gemm(cfg):
    half = cfg.acc_depth // 2
    cycles = {}
    for deferred in (False, True):
        prog = overlap_program(cfg, half + 3, deferred=deferred, steps=60)
        rtl, fsim = open_pair(cfg)
        with rtl, fsim:
            for dev in (rtl, fsim):
                prog.place(dev)
            got = rtl.run(prog.insn_addr, prog.insn_count)
            want = fsim.run(prog.insn_addr, prog.insn_count)
            assert memory_diff(rtl, fsim) == []
            assert got.cycles == want.cycles  # the model (fsim's cycles) is exact
            code = rtl.read(prog.insn_addr, prog.insn_count * 16)
            pred = timing.predict(timing.decode_stream(code, cfg), cfg, insn_addr=prog.insn_addr,
                                  insn_count=prog.insn_count)
            assert pred.cycles == got.cycles
        cycles[deferred] = got.cycles
    steps = 60 * 8
    assert cycles[False] - cycles[True] >= steps - 20  # the ALU's steps are hidden
