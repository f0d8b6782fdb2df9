"""Grouped convolutions on the RTL: outputs, cycles and counters equal the functional
simulator's (whose outputs equal the numpy integer reference)."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.compiler import zoo
from tessera.config import Config
from tessera.driver import open_device
from tessera.runtime.accel import Epilogue, conv2d, conv2d_reference

# (N, C, H, W, O, K, groups, stride, pad) on 4-channel blocks: group width 2 (block-diagonal,
# two groups a block), 4 (one block), 24 (windows of 6 blocks), 8 in / 16 out
CASES = [(1, 16, 6, 6, 16, 3, 8, 1, 1), (1, 16, 6, 6, 16, 3, 4, 1, 1),
         (1, 48, 5, 5, 48, 3, 2, 2, 1), (1, 32, 5, 4, 64, 3, 4, 1, (1, 0, 1, 2))]


def test_grouped_convs_rtl_equals_fsim():
    cfg = Config.preset("tiny")
    rng = np.random.default_rng(93)
    with open_device("verilator", cfg) as rtl, open_device("fsim", cfg) as fsim:
        for n, c, h, w, o, k, g, s, p in CASES:
            x = rng.integers(-128, 128, (n, c, h, w), dtype=np.int8)
            wt = rng.integers(-128, 128, (o, c // g, k, k), dtype=np.int8)
            bias = rng.integers(-3000, 3000, o)
            epi = Epilogue(rng.integers(100, 3000, o), 14, lo=-100)
            got, _, run_r = conv2d(rtl, x, wt, bias, s, p, epi, groups=g)
            want, _, run_f = conv2d(fsim, x, wt, bias, s, p, epi, groups=g)
            assert np.array_equal(got, want), (c, g)
            assert np.array_equal(want, conv2d_reference(x, wt, bias, s, p, epi, groups=g))
            assert run_r.cycles == run_f.cycles, (c, g)  # the cycle model is exact
            for key in ("gemm_steps", "alu_steps", "dram_read_bytes", "dram_write_bytes"):
                assert run_r.counters[key] == run_f.counters[key], (c, g, key)


@pytest.mark.parametrize("config, size", [("tiny", 12), ("default", 32)])
def test_grouped_model_rtl_equals_fsim(config, size):
    from test_compile_rtl import run_both

    model, prof_f, prof_r = run_both(zoo.resnext_tiny(size), config, 2)
    assert sum("accelerator (grouped" in r[2] for r in model.meta["partition"]) == 4
    for pf, pr in zip(prof_f.layers, prof_r.layers):
        if pf.kind == "accel":
            assert pf.cycles == pr.cycles, pf.name
            assert pf.counters["gemm_steps"] == pr.counters["gemm_steps"], pf.name
    model.close()
