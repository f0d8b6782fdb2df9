"""Config fuzz: a small network compiled for random valid configs gives, on fsim, exactly the
int8 outputs it gives on ``default`` — the results must not depend on the array size, batch,
bus width, buffer depths or queue depths (issue 10 part 2). The RTL side is
tests/rtl/test_config_fuzz_rtl.py.

The network (``zoo.small_cnn``, batch 3 so that every BATCH > 1 pads) has odd channel counts,
strides, a residual add, a concat, pooling and a dense layer. ``-m slow`` adds 40 more configs.
"""

from __future__ import annotations

import numpy as np
import pytest

import tessera
from tessera.compiler import zoo
from tessera.compiler.explore import config_label, random_configs
from tessera.config import Config
from tessera.errors import CompileError, ConfigError

SHAPE = (3, 3, 27, 27)
SEED = 2026
FAST, SLOW = 5, 40


def _with(**fields) -> Config:
    return Config(**{**Config.preset("default").to_dict(), **fields})


# Configs named in issue 10: the 32x32 array with a 256-bit bus (failed on a hard-wired 256-byte
# alignment), batch 2, 128- and 32-bit buses, 8x8; and the largest elements (64x64 x batch 16:
# 4 KiB accumulator rows).
NAMED = {
    "32x32-256b": _with(log_block=5, mem_bus_bits=256),
    "batch2-128b": _with(log_batch=1, mem_bus_bits=128),
    "8x8-32b": Config(**{**Config.preset("ulx3s").to_dict(), "mem_bus_bits": 32}),
    "64x64-b16-512b": Config(**{**Config.preset("tiny").to_dict(), "log_block": 6,
                                "log_batch": 4, "mem_bus_bits": 512, "log_inp_buff_size": 16,
                                "log_wgt_buff_size": 18, "log_acc_buff_size": 19,
                                "log_uop_buff_size": 12}),
    # Token queues of depth 2 (found by bench/cycle_model_heldout.py): four accumulator tile
    # regions need three STORE->COMPUTE tokens in flight, so these configs must use two.
    "16x16-b4-512b-q2": _with(log_batch=2, log_uop_buff_size=14, log_inp_buff_size=18,
                              log_wgt_buff_size=14, log_acc_buff_size=16, mem_bus_bits=512,
                              dep_queue_depth=2),
    "4x4-512b-q2": _with(log_block=2, log_uop_buff_size=10, log_inp_buff_size=9,
                         log_wgt_buff_size=9, log_acc_buff_size=15, mem_bus_bits=512,
                         dep_queue_depth=2),
}


@pytest.fixture(scope="module")
def net():
    """(onnx model, calibration batches, feeds, the default config's fsim output)."""
    proto = zoo.small_cnn()
    rng = np.random.default_rng(SEED)
    cal = [{"input": rng.standard_normal(SHAPE).astype(np.float32)} for _ in range(2)]
    feeds = {"input": rng.standard_normal(SHAPE).astype(np.float32)}
    ref = _run(proto, cal, feeds, Config.preset("default"))
    return proto, cal, feeds, ref


def _run(proto, cal, feeds, cfg: Config) -> np.ndarray:
    model = tessera.compile(proto, config=cfg, calibration=cal,
                            input_shapes={"input": SHAPE})
    where = {p[2] for p in model.meta["partition"] if p[1] in ("qconv2d", "qdense")}
    assert where == {"accelerator"}, (cfg.summary(), model.meta["partition"])
    try:
        (y,) = model.run(feeds, device="fsim")
    finally:
        model.close()
    return y


def _check(net, cfg: Config) -> None:
    proto, cal, feeds, ref = net
    y = _run(proto, cal, feeds, cfg)
    assert y.shape == ref.shape
    assert np.array_equal(y, ref), f"{config_label(cfg)}: outputs differ from default"


@pytest.mark.parametrize("name", list(NAMED))
def test_named_configs_equal_default(net, name):
    _check(net, NAMED[name])


@pytest.mark.parametrize("k", range(FAST))
def test_random_configs_equal_default(net, k):
    _check(net, random_configs(FAST, SEED)[k])


@pytest.mark.slow
@pytest.mark.parametrize("k", range(SLOW))
def test_more_random_configs_equal_default(net, k):
    _check(net, random_configs(SLOW, SEED + 1)[k])


def test_a_config_that_cannot_run_any_layer_is_a_config_error_before_compiling():
    # an accumulator of 2 rows: no room for a bias row beside one accumulator row per region
    cfg = Config(**{**Config.preset("tiny").to_dict(), "log_acc_buff_size": 5})
    with pytest.raises(ConfigError, match="smallest accelerator layer"):
        tessera.compile(zoo.mlp(), config=cfg)


def test_a_layer_too_large_for_the_buffers_names_the_layer():
    # 4 accumulator rows run a layer with a bias, not one with per-channel multipliers too
    cfg = Config(**{**Config.preset("tiny").to_dict(), "log_acc_buff_size": 6})
    with pytest.raises(CompileError, match=r"node 'Conv\d+' \(qconv2d\): no conv2d tiling fits"
                                           r".*epilogue constants exceed the accumulator"):
        tessera.compile(zoo.resnet_tiny(), config=cfg)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet_tiny", "mobilenet_tiny", "mlp"])
def test_zoo_models_on_random_configs_equal_default(name):
    proto = getattr(zoo, name)()
    inp = proto.graph.input[0]
    shape = tuple(d.dim_value for d in inp.type.tensor_type.shape.dim)
    rng = np.random.default_rng(SEED)
    cal = [{inp.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(2)]
    feeds = {inp.name: rng.standard_normal(shape).astype(np.float32)}
    outs = []
    for cfg in [Config.preset("default"), *random_configs(6, SEED + 2)]:
        model = tessera.compile(proto, config=cfg, calibration=cal)
        try:
            (y,) = model.run(feeds, device="fsim")
        finally:
            model.close()
        outs.append((config_label(cfg), y))
    for label, y in outs[1:]:
        assert np.array_equal(y, outs[0][1]), f"{name} on {label} differs from default"
