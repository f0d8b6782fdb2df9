"""Tiled int8 conv2d (the accelerator library's conv operator) on fsim, exactly equal to the
numpy integer reference."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.config import Config
from tessera.driver import open_device
from tessera.runtime.accel import (
    ConvGeom,
    ConvShape,
    ConvTiles,
    Epilogue,
    LayerAddrs,
    conv2d,
    conv2d_params,
    conv2d_reference,
    emit_conv2d,
    plan_conv2d,
)
from tessera.runtime.builder import CommandBuilder
from tessera.runtime.layout import pack_activation, unpack_activation

TINY = Config.preset("tiny")
BATCH2 = Config(**{**TINY.to_dict(), "log_batch": 1})

# (N, C, H, W, O, KH, KW, stride, pad)
TINY_CASES = [
    (1, 3, 7, 9, 5, 3, 3, 1, 1),
    (2, 6, 11, 10, 7, 3, 3, 2, 1),
    (1, 5, 9, 9, 6, 5, 5, 1, 2),
    (1, 4, 12, 12, 4, 1, 1, 1, 0),
    (1, 2, 16, 20, 3, 7, 7, 2, 3),  # kernel rows split across reduction steps
    (1, 2, 1, 5, 3, 3, 3, 1, 1),  # some kernel-row chunks see only padding
    (3, 9, 6, 13, 10, 1, 3, (2, 1), (0, 1)),  # 1x3 kernel, per-axis stride and padding
    (1, 16, 20, 20, 12, 3, 3, 1, 1),  # several channel and output-channel tiles
]


def _case(rng, case):
    n, c, h, w, o, kh, kw = case[:7]
    x = rng.integers(-128, 128, (n, c, h, w), dtype=np.int8)
    wt = rng.integers(-128, 128, (o, c, kh, kw), dtype=np.int8)
    return x, wt, rng.integers(-30000, 30000, o)


def _unpack_case(case):
    return case[:7], case[7], case[8]


@pytest.mark.parametrize("double_buffer", [False, True])
def test_random_shapes_tiny(double_buffer):
    rng = np.random.default_rng(20)
    dev = open_device("fsim", TINY)
    requants = [Epilogue(7, 10), Epilogue(1, 8, lo=0, rounding=False),
                Epilogue(-3, 17, lo=-90, hi=120)]
    for i, raw in enumerate(TINY_CASES):
        dims, stride, pad = _unpack_case(raw)
        x, wt, bias = _case(rng, dims)
        bias = bias if i % 2 == 0 else None
        rq = requants[i % len(requants)]
        got, stats, run = conv2d(dev, x, wt, bias, stride, pad, rq, double_buffer)
        want = conv2d_reference(x, wt, bias, stride, pad, rq)
        assert np.array_equal(got, want), raw
        assert stats.insns + 1 == run.counters["insns_retired"]
        assert run.counters["gemm_steps"] * TINY.macs_per_gemm_step <= stats.hw_macs


def test_batched_config():
    rng = np.random.default_rng(21)
    dev = open_device("fsim", BATCH2)
    x, wt, bias = _case(rng, (3, 5, 8, 7, 6, 3, 3))
    rq = Epilogue(5, 11)
    for db in (False, True):
        got, _, _ = conv2d(dev, x, wt, bias, 1, 1, rq, db)
        assert np.array_equal(got, conv2d_reference(x, wt, bias, 1, 1, rq))


def test_explicit_plan_and_chooser_limits():
    cfg = Config.preset("default")
    s = ConvShape.make((1, 64, 56, 56), (128, 64, 3, 3), 1, 1)
    for db in (False, True):
        p = plan_conv2d(cfg, ConvGeom.of(cfg, s), double_buffer=db).resolved(
            ConvGeom.of(cfg, s))
        t = 2 if p.double_buffer else 1
        ih, iw = (p.th - 1) + p.tkh, (p.tw - 1) + 3
        assert p.kc * ih * iw <= cfg.inp_depth // t
        assert p.to * p.kc * p.tkh * 3 <= cfg.wgt_depth // t
        assert p.to * p.th * p.tw <= cfg.acc_depth // t
    rng = np.random.default_rng(22)
    dev = open_device("fsim", TINY)
    x, wt, bias = _case(rng, (1, 8, 9, 11, 8, 3, 3))
    rq = Epilogue(1, 6, rounding=False)
    for db in (True, False):  # ragged everywhere: kernel rows and width split
        plan = ConvTiles(to=1, th=2, kc=1, double_buffer=db, tw=3, tkh=2)
        got, stats, _ = conv2d(dev, x, wt, bias, 1, 1, rq, tiles=plan)
        assert np.array_equal(got, conv2d_reference(x, wt, bias, 1, 1, rq))
        assert stats.tiles == plan


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("double_buffer", [False, True])
def test_issue_size_default(stride, double_buffer):
    """1x64x56x56, 3x3, 64->128, padding 1, on `default`."""
    rng = np.random.default_rng(23 + stride)
    dev = open_device("fsim", "default")
    x, wt, bias = _case(rng, (1, 64, 56, 56, 128, 3, 3))
    rq = Epilogue(3, 12)
    got, stats, run = conv2d(dev, x, wt, bias, stride, 1, rq, double_buffer)
    assert np.array_equal(got, conv2d_reference(x, wt, bias, stride, 1, rq))
    oh = 56 // stride
    assert stats.macs == 128 * oh * oh * 64 * 9 == stats.hw_macs
    assert stats.macs_per_insn > 100_000


def test_network_of_two_convs_in_one_stream():
    """conv(3x3, s1) -> conv(3x3, s2) in one stream: the first layer's packed output is the
    second layer's packed input."""
    rng = np.random.default_rng(24)
    dev = open_device("fsim", TINY)
    x, w1, b1 = _case(rng, (1, 6, 10, 10, 7, 3, 3))
    w2 = rng.integers(-128, 128, (5, 7, 3, 3), dtype=np.int8)
    rq = Epilogue(3, 10)
    s1 = ConvShape.make(x.shape, w1.shape, 1, 1)
    s2 = ConvShape.make((1, 7, 10, 10), w2.shape, 2, 1)
    p1, p2 = conv2d_params(TINY, w1, b1, rq), conv2d_params(TINY, w2, None, rq)
    arrays = [pack_activation(x, TINY), p1.arrays["w"], p1.arrays["consts"], p2.arrays["w"]]
    bufs = [dev.alloc(a.nbytes) for a in arrays]
    for buf, a in zip(bufs, arrays):
        dev.write(buf.addr, a)
    mid = dev.alloc(2 * 10 * 10 * 4)
    out_shape = (1, 2, 5, 5, 1, 4)
    out = dev.alloc(int(np.prod(out_shape)))
    b = CommandBuilder(TINY, dev)
    emit_conv2d(b, s1, LayerAddrs(bufs[0].addr, bufs[1].addr, mid.addr, bufs[2].addr),
                p1.program)
    emit_conv2d(b, s2, LayerAddrs(mid.addr, bufs[3].addr, out.addr), p2.program)
    b.synchronize()
    got = unpack_activation(dev.read_array(out.addr, out_shape, np.int8), (1, 5, 5, 5))
    want = conv2d_reference(conv2d_reference(x, w1, b1, 1, 1, rq), w2, None, 2, 1, rq)
    assert np.array_equal(got, want)


def test_dilation_and_asymmetric_padding():
    rng = np.random.default_rng(25)
    dev = open_device("fsim", TINY)
    rq = Epilogue(3, 11, lo=-100)
    for dims, stride, pad, dil in [((1, 5, 13, 11, 6, 3, 3), 1, (2, 1, 0, 3), (2, 3)),
                                   ((2, 4, 9, 10, 3, 2, 3), (2, 1), (1, 0, 2, 1), 2),
                                   ((1, 3, 8, 8, 5, 1, 1), 2, 0, 1)]:  # strided 1x1
        x, wt, bias = _case(rng, dims)
        for db in (False, True):
            got, _, _ = conv2d(dev, x, wt, bias, stride, pad, rq, db, dilation=dil)
            assert np.array_equal(got, conv2d_reference(x, wt, bias, stride, pad, rq,
                                                        dilation=dil)), (dims, db)


@pytest.mark.parametrize("cfg", [TINY, BATCH2], ids=["tiny", "batch2"])
def test_depthwise_on_channel_diagonal_blocks(cfg):
    rng = np.random.default_rng(26)
    dev = open_device("fsim", cfg)
    for (n, c, h, w, kh, kw), stride, pad, dil in [((1, 10, 9, 11, 3, 3), 1, 1, 1),
                                                   ((3, 8, 12, 10, 3, 3), 2, (1, 0, 1, 1), 1),
                                                   ((1, 6, 10, 10, 5, 3), (1, 2), 2, (2, 1))]:
        x = rng.integers(-128, 128, (n, c, h, w), dtype=np.int8)
        wt = rng.integers(-128, 128, (c, 1, kh, kw), dtype=np.int8)
        bias = rng.integers(-3000, 3000, c)
        epi = Epilogue(rng.integers(100, 3000, c), 12, pre_shift=1, lo=0)
        for db in (False, True):
            got, stats, _ = conv2d(dev, x, wt, bias, stride, pad, epi, db, dilation=dil,
                                   groups=c)
            want = conv2d_reference(x, wt, bias, stride, pad, epi, dilation=dil, groups=c)
            assert np.array_equal(got, want), (n, c, h, w, db)
            assert stats.macs == want.size // n * n * kh * kw
