"""The accelerator kernel library as one piece: epilogues with residual branches and
per-channel multipliers through the JIT entry points, resident-load skipping, the tile search's
fallback to split widths and kernel rows, and the one epilogue type."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.config import Config
from tessera.driver import open_device
from tessera.errors import ProgramError
from tessera.isa import AluOp
from tessera.runtime.accel import (
    ConvGeom,
    ConvShape,
    ConvTiles,
    Epilogue,
    apply_epilogue,
    conv2d,
    conv2d_reference,
    matmul,
    matmul_reference,
    plan_conv2d,
)
from tessera.sim.fsim import alu_apply

TINY = Config.preset("tiny")


def _i8(rng, *shape):
    return rng.integers(-128, 128, shape, dtype=np.int8)


@pytest.mark.parametrize("double_buffer", [False, True])
def test_conv_residual_and_per_channel_epilogue(double_buffer):
    rng = np.random.default_rng(50)
    dev = open_device("fsim", TINY)
    x, w = _i8(rng, 1, 6, 9, 9), _i8(rng, 7, 6, 3, 3)
    bias = rng.integers(-5000, 5000, 7)
    res = _i8(rng, 1, 7, 9, 9)
    epi = Epilogue(rng.integers(100, 3000, 7), 17, pre_shift=1, lo=-100, hi=120, res_mult=900,
                   res_shift=10, final_shift=2)
    assert epi.per_channel and epi.residual
    got, stats, _ = conv2d(dev, x, w, bias, 1, 1, epi, double_buffer, residual=res)
    assert np.array_equal(got, conv2d_reference(x, w, bias, 1, 1, epi, res))
    assert stats.counts["acc_load"] >= 3  # constant rows (bias, multiplier) and residual rows


def test_matmul_residual_and_per_channel_epilogue():
    rng = np.random.default_rng(52)
    dev = open_device("fsim", TINY)
    a, b = _i8(rng, 13, 30), _i8(rng, 30, 10)
    bias = rng.integers(-900, 900, 10)
    res = _i8(rng, 13, 10)
    epi = Epilogue(rng.integers(-2000, 2000, 10), 12, res_mult=-700, res_shift=9)
    for db in (False, True):
        got, _, _ = matmul(dev, a, b, bias, epi, db, residual=res)
        assert np.array_equal(got, matmul_reference(a, b, bias, epi, res))


def test_resident_weight_loads_are_skipped():
    """Weights of one output-channel tile are loaded once for all its spatial tiles."""
    rng = np.random.default_rng(53)
    dev = open_device("fsim", TINY)
    x, w = _i8(rng, 1, 4, 12, 12), _i8(rng, 4, 4, 3, 3)
    tiles = ConvTiles(to=1, th=2, kc=1, double_buffer=True)  # 6 spatial tiles, 1 stage each
    got, stats, run = conv2d(dev, x, w, None, 1, 1, Epilogue(1, 8), tiles=tiles)
    assert np.array_equal(got, conv2d_reference(x, w, None, 1, 1, Epilogue(1, 8)))
    # 6 tiles alternate two halves: each half keeps its weights after its first load
    assert stats.pipeline["loads_skipped"] == 6 - 2
    assert stats.counts["load"] == 6 + 2  # one input load per tile, two weight loads


def test_search_splits_width_and_kernel_rows_only_when_full_width_does_not_fit():
    wide = ConvGeom.of(TINY, ConvShape.make((1, 4, 9, 300), (4, 4, 7, 7), 1, 3))
    t = plan_conv2d(TINY, wide, double_buffer=True).resolved(wide)
    assert t.tw < wide.ow  # a full-width row of 300 columns cannot fit 256 input elements
    narrow = ConvGeom.of(TINY, ConvShape.make((1, 4, 9, 20), (4, 4, 3, 3), 1, 1))
    t2 = plan_conv2d(TINY, narrow).resolved(narrow)
    assert t2.tw == narrow.ow and t2.tkh == narrow.kh
    rng = np.random.default_rng(54)
    x, w = _i8(rng, 1, 4, 9, 300), _i8(rng, 4, 4, 7, 7)
    got, stats, _ = conv2d(open_device("fsim", TINY), x, w, None, 1, 3, Epilogue(1, 10))
    assert np.array_equal(got, conv2d_reference(x, w, None, 1, 3, Epilogue(1, 10)))


def test_all_padding_stages_are_dropped_and_the_tile_still_gets_its_epilogue():
    rng = np.random.default_rng(55)
    dev = open_device("fsim", TINY)
    x, w = _i8(rng, 1, 4, 2, 6), _i8(rng, 4, 4, 3, 3)
    bias = rng.integers(-300, 300, 4)
    tiles = ConvTiles(to=1, th=1, kc=1, tkh=1)
    got, _, _ = conv2d(dev, x, w, bias, 1, (4, 1), Epilogue(1, 2), tiles=tiles)
    want = conv2d_reference(x, w, bias, 1, (4, 1), Epilogue(1, 2))
    assert np.array_equal(got, want)
    # output row 0 sees only padding: it is the epilogue of the bias alone
    only_bias = apply_epilogue(np.broadcast_to(bias[:, None], (4, 6)), Epilogue(1, 2), None, 0)
    assert np.array_equal(got[0, :, 0], only_bias)


def test_epilogue_program_is_fsims_alu():
    rng = np.random.default_rng(56)
    epi = Epilogue(rng.integers(-3000, 3000, 5), 20, pre_shift=3, lo=-90, hi=100)
    acc = rng.integers(-(1 << 31), 1 << 31, (7, 5), dtype=np.int64)
    v = acc.copy()
    for st in epi.alu_steps():
        op = st.operand.reshape(1, -1) if isinstance(st.operand, np.ndarray) else st.operand
        v = alu_apply(AluOp[st.opcode], v, np.asarray(op, np.int64)).astype(np.int64)
    assert np.array_equal(apply_epilogue(acc, epi), v.astype(np.int8))
    assert [s.opcode for s in Epilogue().alu_steps()] == ["MIN", "MAX"]  # MUL by 1 omitted
    with pytest.raises(ProgramError, match="clip bounds"):
        Epilogue(lo=5, hi=4)
    with pytest.raises(ProgramError, match="res_mult"):
        Epilogue(res_mult=1 << 20)


def test_explicit_tiles_are_checked():
    x = np.zeros((1, 4, 6, 6), np.int8)
    w = np.zeros((4, 4, 3, 3), np.int8)
    dev = open_device("fsim", TINY)
    with pytest.raises(ProgramError, match="tile th must be an integer in"):
        conv2d(dev, x, w, tiles=ConvTiles(to=1, th=99, kc=1))
    with pytest.raises(ProgramError, match="tile tn must be"):
        conv2d(dev, x, w, tiles=ConvTiles(to=1, th=1, kc=1, tn=2))
    with pytest.raises(ProgramError, match="do not fit"):
        conv2d(dev, np.zeros((1, 4, 60, 60), np.int8), w, tiles=ConvTiles(1, 58, 1, True))


@pytest.mark.parametrize("shape, dtype", [((3000, 200), np.int8), ((64, 3, 7, 7), np.int8),
                                          ((40, 300), np.int32)])
def test_acc_bounds_are_the_extreme_dot_products(shape, dtype):
    """Per output channel, the accumulator range over int8 inputs is reached by an input of
    in_hi where the weight is positive and in_lo where it is negative (and the other way round),
    -128 weights and row counts beyond one summation slab included."""
    from tessera.runtime.accel.requant import acc_bounds

    rng = np.random.default_rng(3)
    top = 128 if dtype == np.int8 else 1 << 20
    w = rng.integers(-top, top, shape).astype(dtype)
    w.reshape(shape[0], -1)[0, :5] = -top  # the most negative weight
    flat = w.reshape(shape[0], -1).astype(np.int64)
    for in_lo, in_hi in ((-128, 127), (0, 255), (-3, 5)):
        lo, hi = acc_bounds(w, in_lo, in_hi)
        big = np.where(flat > 0, in_hi, in_lo) * flat
        small = np.where(flat > 0, in_lo, in_hi) * flat
        assert np.array_equal(hi, big.sum(axis=1)) and np.array_equal(lo, small.sum(axis=1))
        assert lo.dtype == hi.dtype == np.int64


def test_pack_weights_of_whole_blocks_is_a_fresh_array():
    from tessera.runtime.layout import pack_weights

    cfg = Config.preset("default")
    rng = np.random.default_rng(4)
    w = rng.integers(-128, 128, (32, 48, 3, 3), dtype=np.int8)
    packed = pack_weights(w, cfg)
    assert not np.may_share_memory(packed, w) and packed.flags.c_contiguous
    padded = np.zeros((48, 48, 3, 3), np.int8)
    padded[:32] = w
    assert np.array_equal(pack_weights(padded, cfg)[:2], packed)  # whole vs padded path
    o, i = cfg.block_out, cfg.block_in
    want = w.reshape(32 // o, o, 48 // i, i, 3, 3).transpose(0, 2, 4, 5, 1, 3)
    assert np.array_equal(packed, want)


@pytest.mark.parametrize("preset", ["tiny", "default"])
@pytest.mark.parametrize("shape", [(64, 96, 1, 1), (40, 20, 1, 1), (3, 5, 1, 1), (32, 16, 2, 2)])
def test_pack_weights_moves_whole_rows_like_the_element_transpose(preset, shape):
    """The 1x1 fast path (rows of BLOCK_IN moved as one element) equals the plain transpose,
    padded or not, from a contiguous or a strided view."""
    from tessera.runtime.layout import pack_weights

    cfg = Config.preset(preset)
    rng = np.random.default_rng(sum(shape))
    o, i, kh, kw = shape
    bo, bi = cfg.block_out, cfg.block_in
    ob, ib = -(-o // bo), -(-i // bi)
    for w in (rng.integers(-128, 128, shape, dtype=np.int8),
              rng.integers(-128, 128, (i, o, kh, kw), dtype=np.int8).transpose(1, 0, 2, 3)):
        full = np.zeros((ob * bo, ib * bi, kh, kw), np.int8)
        full[:o, :i] = w
        want = full.reshape(ob, bo, ib, bi, kh, kw).transpose(0, 2, 4, 5, 1, 3)
        got = pack_weights(w, cfg)
        assert got.dtype == np.int8 and got.shape == want.shape and np.array_equal(got, want)
        assert got.flags.c_contiguous and got.flags.writeable
        assert not np.may_share_memory(got, w)
