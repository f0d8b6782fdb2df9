"""Grouped convolutions (1 < groups, depthwise included) on the accelerator: windows of input
blocks per output block, weights zero off the groups, bit-exact on fsim against the numpy
integer reference; the partition's per-layer cost choice; a grouped model end to end."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.compiler import reference, zoo
from tessera.compiler.api import compile as tcompile
from tessera.compiler.lower import HostModel
from tessera.config import Config
from tessera.driver import open_device
from tessera.errors import ProgramError
from tessera.runtime.accel import ConvGeom, ConvShape, ConvTiles, Epilogue, conv2d, conv2d_reference
from tessera.runtime.accel.conv2d import group_blocks
from tessera.runtime.layout import pack_grouped

TINY = Config.preset("tiny")  # 4-channel blocks
DEFAULT = Config.preset("default")  # 16-channel blocks
BATCH2 = Config(**{**TINY.to_dict(), "log_batch": 1})

# (N, C, H, W, O, K, groups, stride, pad, dilation): group widths 4, 8, 16, 24, 48, channel
# multipliers above and below 1, padded channel blocks, strides, asymmetric pads, dilation
CASES = [
    (1, 128, 5, 5, 128, 3, 32, 1, 1, 1),  # ResNeXt 32x4d: 4 channels a group
    (1, 64, 6, 7, 64, 3, 8, 2, 1, 1),  # 8 a group, stride 2
    (1, 32, 6, 6, 32, 3, 2, (1, 2), (1, 0, 2, 1), 1),  # 16 a group, asymmetric
    (1, 48, 7, 5, 48, 3, 2, 1, 2, 2),  # 24 a group (straddles 16-blocks), dilation 2
    (1, 96, 5, 5, 96, 3, 2, 1, 1, 1),  # 48 a group
    (1, 72, 5, 6, 72, 3, 3, 1, 1, 1),  # 24 a group, a partial last window
    (2, 64, 4, 4, 32, 1, 32, 1, 0, 1),  # 2 input channels per output channel
    (1, 32, 5, 5, 64, 3, 32, 2, 1, 1),  # channel multiplier 2
    (1, 40, 5, 5, 20, 3, 4, 1, 1, 1),  # 10 in / 5 out a group, padded blocks
]


def _run(dev, case, rng, tiles=None, db=True):
    n, c, h, w, o, k, g, s, p, d = case
    x = rng.integers(-128, 128, (n, c, h, w), dtype=np.int8)
    wt = rng.integers(-128, 128, (o, c // g, k, k), dtype=np.int8)
    bias = rng.integers(-3000, 3000, o)
    epi = Epilogue(rng.integers(100, 3000, o), 14, lo=-100)
    got, stats, run = conv2d(dev, x, wt, bias, s, p, epi, db, tiles=tiles, dilation=d, groups=g)
    want = conv2d_reference(x, wt, bias, s, p, epi, dilation=d, groups=g)
    return got, want, stats, run


@pytest.mark.parametrize("cfg", [TINY, DEFAULT], ids=["tiny", "default"])
def test_grouped_convs_bit_exact(cfg):
    rng = np.random.default_rng(90)
    dev = open_device("fsim", cfg)
    for case in CASES:
        for db in (False, True):
            got, want, stats, run = _run(dev, case, rng, db=db)
            assert np.array_equal(got, want), (case, db)
            # useful MACs beside the MACs the GEMMs execute (zeros off the groups included)
            assert stats.macs == want.size * (case[1] // case[6]) * case[5] ** 2
            assert run.counters["gemm_steps"] * cfg.macs_per_gemm_step <= stats.hw_macs
            assert stats.hw_macs >= stats.macs


def test_batch_groups_and_tiles_across_windows():
    """Batch lanes, and tile shapes that cut windows (several loop nests per stage)."""
    rng = np.random.default_rng(91)
    dev = open_device("fsim", BATCH2)
    for case in [(3, 24, 5, 5, 24, 3, 2, 1, 1, 1), (2, 40, 4, 5, 40, 3, 4, 2, 1, 1)]:
        got, want, _, _ = _run(dev, case, rng)
        assert np.array_equal(got, want), case
    dev = open_device("fsim", TINY)
    case = (1, 48, 5, 5, 48, 3, 2, 1, 1, 1)  # 24 a group: windows of 6 blocks on tiny
    g = ConvGeom.of(TINY, ConvShape.make((1, 48, 5, 5), (48, 24, 3, 3), 1, 1, 1, 2))
    assert (g.period, g.span) == (6, 6)
    # tiles over 1-3 windows, chunks of them
    for to, kc, db in [(4, 2, False), (5, 3, True), (7, 1, True), (12, 2, False)]:
        tiles = ConvTiles(to, 1, kc, db, tw=2, tkh=1)
        got, want, _, _ = _run(dev, case, rng, tiles=tiles, db=db)
        assert np.array_equal(got, want), (to, kc, db)


def test_group_blocks_windows():
    # (config, C, O, groups) -> (period, span); (0, 0): every output block reads every block
    assert group_blocks(DEFAULT, 64, 64, 1) == (0, 0)
    assert group_blocks(DEFAULT, 64, 64, 64) == (1, 1)  # depthwise: block o reads block o
    assert group_blocks(DEFAULT, 128, 128, 32) == (1, 1)  # width 4: block-diagonal
    assert group_blocks(DEFAULT, 128, 128, 8) == (1, 1)  # width 16: one block a group
    assert group_blocks(DEFAULT, 128, 128, 4) == (2, 2)  # width 32: two blocks a group
    assert group_blocks(DEFAULT, 96, 96, 4) == (3, 3)  # width 24: two groups in 3 blocks
    assert group_blocks(DEFAULT, 96, 96, 2) == (3, 3)  # width 48: three blocks a group
    assert group_blocks(DEFAULT, 48, 48, 2) == (0, 0)  # 24 of 48: no window below all 3
    assert group_blocks(DEFAULT, 64, 32, 32) == (1, 2)
    assert group_blocks(TINY, 48, 48, 2) == (6, 6)
    g = ConvGeom.of(DEFAULT, ConvShape.make((1, 72, 4, 4), (72, 24, 3, 3), 1, 1, 1, 3))
    assert (g.cb, g.period, g.span) == (5, 3, 3)
    assert [g.lo(o) for o in range(5)] == [0, 0, 0, 2, 2]  # the last window kept inside
    assert g.windows(2, 3) == [(0, 1, 0), (1, 2, 2)]
    assert g.gemm_steps() == 5 * 3 * 16 * 9


def test_pack_grouped_zeros_off_the_groups():
    rng = np.random.default_rng(92)
    cfg = DEFAULT
    c, o, groups = 48, 48, 2  # 24 a group: windows of 3 blocks
    wt = rng.integers(1, 128, (o, c // groups, 3, 3), dtype=np.int8)  # no zero weights
    packed = pack_grouped(wt, cfg, groups, [0, 0, 0], 3)
    dense = packed.transpose(0, 4, 1, 5, 2, 3).reshape(48, 48, 3, 3)  # O x window channels
    for oc in range(o):
        grp = oc // 24
        for ic in range(c):
            if ic // 24 == grp:
                assert np.array_equal(dense[oc, ic], wt[oc, ic - grp * 24])
            else:
                assert not dense[oc, ic].any()
    dw = rng.integers(1, 128, (32, 1, 3, 3), dtype=np.int8)
    p = pack_grouped(dw, cfg, 32, [0, 1], 1)  # depthwise: diagonal blocks
    for b in range(2):
        for i in range(16):
            assert np.array_equal(p[b, 0, :, :, i, i], dw[b * 16 + i, 0])
        off = p[b, 0].copy()
        off[:, :, np.arange(16), np.arange(16)] = 0
        assert not off.any()
    with pytest.raises(ProgramError, match="window"):
        pack_grouped(wt, cfg, groups, [0, 1, 2], 1)


def _io(proto, n=4, seed=0):
    inp = proto.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    cal = [{inp.name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]
    return cal, {inp.name: rng.standard_normal(shape).astype(np.float32)}


@pytest.mark.parametrize("config, size", [("tiny", 12), ("default", 32)])
def test_grouped_model_on_the_accelerator_equals_reference(config, size):
    """ResNeXt-style blocks (group widths 4, 8, 16, 24): every grouped conv on the
    accelerator, saying why; outputs bit-exact with the quantiser's integer reference."""
    proto = zoo.resnext_tiny(size)
    cal, x = _io(proto)
    model = tcompile(proto, config=config, calibration=cal)
    grouped = [r for r in model.meta["partition"] if "grouped (" in r[2]]
    assert len(grouped) == 4
    assert all(r[2].startswith("accelerator (grouped") and "useful" in r[2] for r in grouped)
    got = model.run(x, device="fsim")
    want = reference.run(model.quantized.graph, x)
    want = want if isinstance(want, list) else [want[k] for k in model.output_names]
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-7)
    _, prof = model.run(x, device="fsim", profile=True)
    t = prof.totals()
    assert t["cpu_macs"] == 0 and t["accel_macs"] > 0
    convs = {p.name: p for p in prof.layers if p.kind == "accel"}
    for name, _, _ in grouped:  # executed MACs above the useful ones, utilisation of useful
        p = convs[name]
        assert p.gemm_steps * model.config.macs_per_gemm_step >= p.macs
        assert p.utilisation(model.config) == p.macs / (p.cycles * model.config.macs_per_gemm_step)
    model.close()


def test_partition_sends_grouped_convs_to_a_faster_host():
    proto = zoo.resnext_tiny()
    cal, x = _io(proto, n=2)
    fast = HostModel(macs_per_s=1e15, convert_bytes_per_s=1e15, link_bytes_per_s=float("inf"))
    model = tcompile(proto, config="default", calibration=cal, host=fast)
    grouped = [r for r in model.meta["partition"] if "grouped (" in r[2]]
    assert len(grouped) == 4
    assert all(r[2].startswith("cpu (grouped") and "the host is faster" in r[2]
               for r in grouped)
    got = model.run(x, device="fsim")
    want = reference.run(model.quantized.graph, x)
    want = want if isinstance(want, list) else [want[k] for k in model.output_names]
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-7)
    model.close()


def test_grouped_model_int8_error_beside_onnxruntime():
    """The compiled grouped model's error against onnxruntime's float output (relative to the
    output's input-dependent spread) is at most onnxruntime's own static int8 quantiser's."""
    from test_quant import compiled_errors

    err_ours, err_theirs, model = compiled_errors(zoo.resnext_tiny(), 8, 8)
    assert err_ours <= err_theirs
    model.close()
