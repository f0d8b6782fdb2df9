"""Tiled int8 matmul (the accelerator library's dense operator) on fsim, exactly equal to the
numpy integer reference."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.config import Config
from tessera.driver import open_device
from tessera.runtime.accel import (
    Epilogue,
    LayerAddrs,
    dense_shape,
    emit_dense,
    lower_epilogue,
    matmul,
    matmul_reference,
    plan_dense,
)
from tessera.runtime.accel.tiling import measure
from tessera.runtime.builder import CommandBuilder
from tessera.runtime.layout import pack_matrix_a, pack_matrix_b, unpack_matrix

TINY = Config.preset("tiny")
BATCH2 = Config(**{**TINY.to_dict(), "log_batch": 1})


def _operands(rng, m, k, n, bias):
    a = rng.integers(-128, 128, (m, k), dtype=np.int8)
    bm = rng.integers(-128, 128, (k, n), dtype=np.int8)
    b = rng.integers(-20000, 20000, n) if bias else None
    return a, bm, b


@pytest.mark.parametrize("double_buffer", [False, True])
def test_random_shapes_tiny(double_buffer):
    rng = np.random.default_rng(10)
    dev = open_device("fsim", TINY)
    shapes = [(1, 1, 1), (5, 7, 9), (33, 70, 21), (64, 64, 64), (17, 130, 3), (40, 9, 75),
              (100, 200, 50)]
    requants = [Epilogue(), Epilogue(3, 9), Epilogue(1, 7, lo=0, rounding=False),
                Epilogue(-5, 18, lo=-100, hi=100), Epilogue(1000, 20)]
    for i, (m, k, n) in enumerate(shapes):
        rq = requants[i % len(requants)]
        a, bm, bias = _operands(rng, m, k, n, bias=i % 2 == 1)
        got, stats, run = matmul(dev, a, bm, bias, rq, double_buffer=double_buffer)
        assert np.array_equal(got, matmul_reference(a, bm, bias, rq)), (m, k, n)
        assert run.counters["gemm_steps"] * TINY.macs_per_gemm_step == stats.hw_macs
        assert stats.insns + 1 == run.counters["insns_retired"]  # + FINISH
        assert stats.tiles.double_buffer is double_buffer


def test_batched_config():
    rng = np.random.default_rng(11)
    dev = open_device("fsim", BATCH2)
    for m, k, n in [(7, 13, 10), (30, 40, 20)]:
        a, bm, bias = _operands(rng, m, k, n, bias=True)
        rq = Epilogue(7, 12)
        for db in (False, True):
            got, _, _ = matmul(dev, a, bm, bias, rq, double_buffer=db)
            assert np.array_equal(got, matmul_reference(a, bm, bias, rq))


def test_tile_chooser_fits_and_prefers_long_gemms():
    cfg = Config.preset("default")
    for db in (False, True):
        prog = lower_epilogue(Epilogue(5, 18), None, 512)
        p = plan_dense(cfg, 256, 1024, 512, prog, double_buffer=db)
        threads = 2 if db else 1
        assert p.tn * p.kc <= cfg.inp_depth // threads
        assert p.to * p.kc <= cfg.wgt_depth // threads
        assert p.tn * p.to <= cfg.acc_depth // threads
        if db:  # the RTL (cycle model) runs it within 15% of one GEMM step per cycle
            cycles = measure(cfg, dense_shape(256, 1024, 512), prog, p)
            assert cycles <= 1.15 * 256 * 64 * 32


@pytest.mark.parametrize("double_buffer", [False, True])
def test_issue_size_default(double_buffer):
    """256x1024 @ 1024x512 on `default`: A, B and C exceed the SRAMs, K is tiled."""
    cfg = Config.preset("default")
    rng = np.random.default_rng(12)
    dev = open_device("fsim", cfg)
    a, bm, bias = _operands(rng, 256, 1024, 512, bias=True)
    assert a.nbytes > cfg.inp_depth * cfg.inp_elem_bytes
    assert bm.nbytes > cfg.wgt_depth * cfg.wgt_elem_bytes
    rq = Epilogue(5, 18)
    got, stats, run = matmul(dev, a, bm, bias, rq, double_buffer=double_buffer)
    assert np.array_equal(got, matmul_reference(a, bm, bias, rq))
    assert stats.macs == 256 * 1024 * 512
    assert stats.tiles.kc < 1024 // cfg.block_in  # K really accumulated across tiles
    assert stats.counts["gemm"] <= 256 and stats.insns < 1200  # few, long instructions


def test_two_layers_in_one_stream():
    """C2 = requant(requant(A @ B1) @ B2) as one stream: the barrier orders layer 2's loads
    after layer 1's stores (fsim rejects the DRAM race otherwise)."""
    rng = np.random.default_rng(13)
    dev = open_device("fsim", TINY)
    a, b1, _ = _operands(rng, 24, 40, 36, bias=False)
    b2 = rng.integers(-128, 128, (36, 20), dtype=np.int8)
    rq = Epilogue(3, 10)
    pa, p1, p2 = pack_matrix_a(a, TINY), pack_matrix_b(b1, TINY), pack_matrix_b(b2, TINY)
    bufs = [dev.alloc(x.nbytes) for x in (pa, p1, p2)]
    for buf, x in zip(bufs, (pa, p1, p2)):
        dev.write(buf.addr, x)
    mid, out = dev.alloc(24 * 36), dev.alloc(24 * 20)
    b = CommandBuilder(TINY, dev)
    s1 = emit_dense(b, 24, 40, 36, LayerAddrs(bufs[0].addr, bufs[1].addr, mid.addr), rq)
    s2 = emit_dense(b, 24, 36, 20, LayerAddrs(mid.addr, bufs[2].addr, out.addr), rq)
    run = b.synchronize()
    assert run.counters["insns_retired"] > s1.insns + s2.insns  # + barrier + FINISH
    got = unpack_matrix(dev.read_array(out.addr, (24, 5, 1, 4), np.int8), 24, 20)
    want = matmul_reference(matmul_reference(a, b1, None, rq), b2, None, rq)
    assert np.array_equal(got, want)
