"""Config fuzz on the RTL: the small network compiled for non-preset configs gives the same
bytes on Verilator as on fsim, and the same outputs as on ``default`` (issue 10 part 2; the
fsim side over many more configs is tests/unit/test_config_fuzz.py).

Every config is a Verilator build. The default run takes one: the non-preset config that
tests/rtl/test_timing_model.py builds too (same Verilog, so the cached build is shared): batch 2,
an 8x8 array, a 128-bit bus, small buffers, 4-token queues. ``-m slow`` adds the configs named
in issue 10 and seeded random ones.
"""

from __future__ import annotations

import numpy as np
import pytest

import tessera
from tessera.compiler import zoo
from tessera.compiler.explore import config_label, random_configs
from tessera.config import Config

SHAPE = (3, 3, 27, 27)
SEED = 2026
# == tests/rtl/test_timing_model.py ODD_CONFIG over the tiny preset (shared Verilator build)
ODD = Config(**{**Config.preset("tiny").to_dict(), **dict(
    mem_bus_bits=128, log_batch=1, log_block=3, log_uop_buff_size=11, log_inp_buff_size=13,
    log_wgt_buff_size=14, log_acc_buff_size=14, dep_queue_depth=4)})


def _with(base: str, **fields) -> Config:
    return Config(**{**Config.preset(base).to_dict(), **fields})


SLOW_NAMED = {
    "32x32-256b": _with("default", log_block=5, mem_bus_bits=256),
    "batch2-128b": _with("tiny", log_batch=1, mem_bus_bits=128),
    "8x8-32b": _with("ulx3s", mem_bus_bits=32),
    "2x2-b4-512b-q1": _with("tiny", log_block=1, log_batch=2, mem_bus_bits=512,
                            dep_queue_depth=1),
}


def _small_random(n: int) -> list[Config]:
    """Random configs whose SRAM (all buffers) is at most 256 KiB, so that each Verilator build
    stays within a few minutes."""
    out = []
    for cfg in random_configs(200, SEED + 7):
        total = sum(1 << getattr(cfg, f"log_{b}_buff_size") for b in ("uop", "inp", "wgt", "acc"))
        if total <= 256 << 10 and cfg.block_in <= 16:
            out.append(cfg)
        if len(out) == n:
            return out
    raise AssertionError("too few small random configs")


@pytest.fixture(scope="module")
def net():
    proto = zoo.small_cnn()
    rng = np.random.default_rng(SEED)
    cal = [{"input": rng.standard_normal(SHAPE).astype(np.float32)} for _ in range(2)]
    feeds = {"input": rng.standard_normal(SHAPE).astype(np.float32)}
    ref = tessera.compile(proto, config="default", calibration=cal,
                          input_shapes={"input": SHAPE})
    try:
        (y,) = ref.run(feeds, device="fsim")
    finally:
        ref.close()
    return proto, cal, feeds, y


def _check(net, cfg: Config) -> None:
    proto, cal, feeds, ref = net
    model = tessera.compile(proto, config=cfg, calibration=cal, input_shapes={"input": SHAPE})
    try:
        (on_fsim,), prof_f = model.run(feeds, device="fsim", profile=True)
        (on_rtl,), prof_r = model.run(feeds, device="verilator", profile=True)
    finally:
        model.close()
    label = config_label(cfg)
    assert np.array_equal(on_rtl, on_fsim), f"{label}: RTL differs from fsim"
    assert np.array_equal(on_fsim, ref), f"{label}: outputs differ from default"
    accel = [(f, r) for f, r in zip(prof_f.layers, prof_r.layers) if f.kind == "accel"]
    assert len(accel) >= 5
    for f, r in accel:  # the same work, and the cycle model within issue 10's 5% per layer
        for key in ("gemm_steps", "alu_steps", "dram_read_bytes", "dram_write_bytes",
                    "insns_retired"):
            assert f.counters[key] == r.counters[key], (label, f.name, key)
        assert abs(f.cycles - r.cycles) <= 0.05 * r.cycles, (label, f.name, f.cycles, r.cycles)


def test_non_preset_config_on_rtl_equals_fsim_and_default(net):
    _check(net, ODD)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SLOW_NAMED))
def test_named_configs_on_rtl(net, name):
    _check(net, SLOW_NAMED[name])


@pytest.mark.slow
@pytest.mark.parametrize("k", range(4))
def test_random_configs_on_rtl(net, k):
    _check(net, _small_random(4)[k])
