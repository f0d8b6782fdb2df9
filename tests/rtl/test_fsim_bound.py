"""fsim's timeout bound (``sim/bound.py``) never exceeds the cycles the RTL really takes.

The bound must be conservative for every program and DRAM timing, so that fsim never times out
a run the RTL completes within the limit; the tightest case is the fastest DRAM (latency 1, one
beat per cycle). Random programs from ``sim/progen`` mix DMA-bound and GEMM-bound rounds.
"""

from __future__ import annotations

import numpy as np
import pytest
from rtlutil import free_all, open_pair

from tessera.config import Config
from tessera.errors import DeviceError
from tessera.sim.bound import cycles_lower_bound
from tessera.sim.progen import random_program


@pytest.mark.parametrize("name, seeds", [("tiny", range(12)), ("default", range(2))])
def test_bound_is_below_rtl_cycles(name, seeds):
    cfg = Config.preset(name)
    vdev, fdev = open_pair(cfg, read_latency=1, beats_per_cycle=1.0)
    ratios = []
    with vdev, fdev:
        for seed in seeds:
            prog = random_program(cfg, np.random.default_rng(3000 + seed), rounds=2 + seed % 7)
            prog.place(vdev)
            prog.place(fdev)
            need = cycles_lower_bound(fdev.sim.prepare(prog.insn_addr, prog.insn_count), cfg)
            cycles = vdev.run(prog.insn_addr, prog.insn_count).cycles
            assert 0 < need <= cycles, f"{name} seed {seed}: bound {need} > RTL {cycles}"
            # the fsim device times out against the cycle model, which predicts the RTL's
            # cycles: it accepts the run at exactly those, and refuses it one cycle below
            fdev.run(prog.insn_addr, prog.insn_count, timeout_cycles=cycles)
            with pytest.raises(DeviceError, match=f"would take {cycles} cycles"):
                fdev.run(prog.insn_addr, prog.insn_count, timeout_cycles=cycles - 1)
            ratios.append(need / cycles)
            free_all(vdev)
            free_all(fdev)
    print(f"{name}: bound / RTL cycles min {min(ratios):.2f} max {max(ratios):.2f}")
    assert max(ratios) > 0.2, ratios  # the bound is not vacuous
