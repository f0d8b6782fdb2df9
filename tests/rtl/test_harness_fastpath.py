"""The harness's one-evaluation-per-cycle fast path (``sim/native/harness.cpp``, ``kOneEval``)
is invisible: built with ``TH_VERIFY_ONE_EVAL``, the harness also runs the skipped evaluation
and stops the run if any output it sampled would have differed."""

from __future__ import annotations

import numpy as np
from rtlutil import free_all

from tessera.config import Config
from tessera.driver.verilator import VerilatorDevice
from tessera.sim.progen import random_program
from tessera.sim.verilator_build import BuildOptions

VERIFY = BuildOptions(defines=(("TH_VERIFY_ONE_EVAL", "1"),))


def test_one_eval_fast_path_is_on_and_changes_nothing():
    cfg = Config.preset("tiny")
    with VerilatorDevice(cfg, 1 << 24, build_options=VERIFY, read_latency=3) as dev:
        assert dev._lib.th_one_eval() == 1, "this Verilator's model cannot use the fast path"
        for seed in range(8):
            prog = random_program(cfg, np.random.default_rng(4000 + seed), rounds=4)
            prog.place(dev)
            stats = dev.run(prog.insn_addr, prog.insn_count)  # raises on a mismatch
            assert stats.counters["insns_retired"] == prog.insn_count
            free_all(dev)
