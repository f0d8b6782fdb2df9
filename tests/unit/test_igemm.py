"""The AVX-512 VNNI int8 kernel (runtime/cpu/igemm.py) computes exactly the wrapped int32
lanes of the exact products, and the compiler's int32-lane products use it (or say they did
not)."""

import numpy as np
import pytest

from tessera.compiler import reference
from tessera.errors import KernelError
from tessera.runtime.cpu import igemm

vnni = pytest.mark.skipif(not igemm.available(),
                          reason="host CPU has no AVX-512 VNNI (or TESSERA_IGEMM=0)")


def _wrapped_conv(x, w, strides, pads, dilations):
    exact = np.rint(reference.conv2d_nchw(x.astype(np.float64), w.astype(np.float64), strides,
                                          pads, dilations)).astype(np.int64)
    return reference.wrap32(exact).astype(np.int32).transpose(1, 0, 2, 3)


def _values(rng, dtype, shape, extreme=None):
    info = np.iinfo(dtype)
    if extreme is not None:
        return np.full(shape, info.min if extreme == "min" else info.max, dtype)
    return rng.integers(info.min, int(info.max) + 1, shape).astype(dtype)


CONVS = [  # (n, c, h, w, o, kh, kw, stride, pads, dilation)
    (1, 3, 9, 11, 5, 3, 3, 1, (1, 1, 1, 1), 1),       # C, O, M all ragged
    (2, 13, 10, 7, 19, 3, 3, 2, (1, 0, 2, 1), 1),     # batch 2, stride 2, asymmetric pads
    (1, 64, 14, 14, 70, 3, 3, 1, (1, 1, 1, 1), 2),    # dilated
    (3, 8, 5, 5, 3, 1, 1, 1, (0, 0, 0, 0), 1),        # pointwise, fewer rows than a block
    (1, 1, 4, 33, 1, 1, 3, 1, (0, 2, 0, 2), 1),       # one channel, one output channel
    (1, 5, 20, 20, 16, 5, 3, 2, (2, 1, 2, 1), 1),     # non-square kernel, stride 2
    (2, 16, 3, 3, 33, 3, 3, 1, (1, 1, 1, 1), 1),      # M = 18: one block wider than M
    (1, 7, 2, 2, 40, 2, 2, 1, (0, 0, 0, 0), 1),       # M = 1: the 16 x 1 blocking
]


@vnni
@pytest.mark.parametrize("case", CONVS)
@pytest.mark.parametrize("x_dtype", [np.int8, np.uint8])
def test_conv_lanes_equal_the_wrapped_exact_products(case, x_dtype):
    n, c, h, wd, o, kh, kw, s, pads, d = case
    rng = np.random.default_rng(2 * CONVS.index(case) + (x_dtype == np.int8))
    for extreme in (None, "min", "max"):
        x = _values(rng, x_dtype, (n, c, h, wd), extreme)
        w = _values(rng, np.int8, (o, c, kh, kw), extreme)
        geo = ((s, s), pads, (d, d))
        got = igemm.conv2d_cnhw(x, w, *geo)
        assert got.dtype == np.int32 and got.flags.c_contiguous
        np.testing.assert_array_equal(got, _wrapped_conv(x, w, *geo))


@vnni
def test_sums_beyond_int32_wrap_as_the_accumulator():
    # 1x1 conv / dense over 140000 terms of (-128) * (-128): 2293760000 > 2**31 - 1
    k = 140000
    x = np.full((1, k, 2, 1), -128, np.int8)
    w = np.full((3, k, 1, 1), -128, np.int8)
    w[1] = 127
    want = reference.wrap32(np.array([k * 128 * 128, -k * 128 * 127, k * 128 * 128]))
    got = igemm.conv2d_cnhw(x, w)
    np.testing.assert_array_equal(got[:, 0, 0, 0], want)
    got = igemm.matmul(x.reshape(1, k, 2)[:, :, 0], w.reshape(3, k))
    np.testing.assert_array_equal(got[0], want)
    assert want[0] < 0 < want[1]  # both sums left int32 and wrapped


@vnni
@pytest.mark.parametrize("x_dtype", [np.int8, np.uint8])
def test_matmul_lanes_equal_the_exact_products(x_dtype):
    rng = np.random.default_rng(7 if x_dtype == np.int8 else 8)
    for m, k, o in [(1, 7, 3), (9, 100, 33), (8, 4096, 130), (40, 64, 17), (17, 1, 1),
                    (3, 1030, 16)]:
        for extreme in (None, "min", "max"):
            a = _values(rng, x_dtype, (m, k), extreme)
            w = _values(rng, np.int8, (o, k), extreme)
            want = reference.wrap32(a.astype(np.int64) @ w.astype(np.int64).T)
            np.testing.assert_array_equal(igemm.matmul(a, w), want)
            wt = np.asfortranarray(w)  # not C-contiguous: packed on the way in
            np.testing.assert_array_equal(igemm.matmul(a, wt), want)


@vnni
def test_reference_int32_lanes_take_the_kernel_and_equal_the_float32_path():
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (2, 37, 12, 12)).astype(np.int8)
    w = np.full((21, 37, 3, 3), 127, np.int8)  # all-equal weights: five float32 chunks
    geo = ((1, 1), (1, 1, 1, 1), (1, 1), 1)
    before = igemm.stats.vnni
    got = reference.int_conv2d_cnhw(x, w, *geo, dtype=np.int32,
                                    packed=reference.packed_conv_weights(x.dtype, w))
    assert igemm.stats.vnni == before + 1
    with igemm.disabled():
        assert reference.packed_conv_weights(x.dtype, w) is None
        fallbacks = igemm.stats.fallback
        old = reference.int_conv2d_cnhw(x, w, *geo, dtype=np.int32,
                                        splits=reference.exact_splits(x.dtype, w))
        assert igemm.stats.fallback == fallbacks + 1
        assert "disabled" in igemm.stats.last_fallback
    np.testing.assert_array_equal(got, old)
    a = rng.integers(0, 256, (5, 900)).astype(np.uint8)
    b = rng.integers(-128, 128, (900, 11)).astype(np.int8)
    got = reference.int_matmul(a, b, dtype=np.int32)
    with igemm.disabled():
        np.testing.assert_array_equal(got, reference.int_matmul(a, b, dtype=np.int32))
    # int64 results and grouped convs keep the float path
    fallbacks = igemm.stats.fallback
    wg = rng.integers(-128, 128, (6, 1, 3, 3)).astype(np.int8)
    xg = rng.integers(-128, 128, (1, 6, 5, 5)).astype(np.int8)
    grouped = reference.int_conv2d_cnhw(xg, wg, (1, 1), (0, 0, 0, 0), (1, 1), 6,
                                        dtype=np.int32)
    assert igemm.stats.fallback == fallbacks + 1 and "groups=6" in igemm.stats.last_fallback
    np.testing.assert_array_equal(
        grouped, reference.wrap32(reference.int_conv2d_cnhw(xg, wg, (1, 1), (0, 0, 0, 0),
                                                            (1, 1), 6)))


def test_disabling_by_environment_and_context(monkeypatch):
    monkeypatch.setenv("TESSERA_IGEMM", "0")
    assert not igemm.available()
    assert "no AVX-512 VNNI" in igemm.supports_conv(np.zeros(1, np.int8),
                                                     np.zeros((1, 1, 1, 1), np.int8), 1)
    monkeypatch.delenv("TESSERA_IGEMM")
    with igemm.disabled():
        assert not igemm.available()
        with pytest.raises(KernelError, match="igemm matmul: no AVX-512 VNNI"):
            igemm.matmul(np.zeros((1, 4), np.int8), np.zeros((1, 4), np.int8))


@vnni
def test_bad_operands_are_refused_before_running():
    x4 = np.zeros((3, 64), np.uint32)
    w4 = np.zeros((2, 3), np.uint32)
    corr = np.zeros(2, np.int32)
    out = np.zeros((2, 10), np.int32)
    igemm.gemm(x4, 10, w4, corr, out)  # consistent: runs
    with pytest.raises(KernelError, match="operands must be"):
        igemm.gemm(x4.view(np.int32), 10, w4, corr, out)
    with pytest.raises(KernelError, match="inconsistent shapes"):
        igemm.gemm(x4[:, :16], 20, w4, corr, out)  # rows shorter than the blocks read
    with pytest.raises(KernelError, match="inconsistent shapes"):
        igemm.gemm(x4, 11, w4, corr, out)  # out rows too short
    with pytest.raises(KernelError, match="C-contiguous"):
        igemm.gemm(x4, 10, np.zeros((2, 6), np.uint32)[:, ::2], corr, out)
    with pytest.raises(KernelError, match="int8/uint8 x int8"):
        igemm.conv2d_cnhw(np.zeros((1, 1, 2, 2), np.int16), np.zeros((1, 1, 1, 1), np.int8))
    with pytest.raises(KernelError, match="input channels"):
        igemm.conv2d_cnhw(np.zeros((1, 2, 2, 2), np.int8), np.zeros((1, 3, 1, 1), np.int8))
    packed = igemm.pack_conv_weights(np.zeros((1, 2, 1, 1), np.int8), np.uint8)
    with pytest.raises(KernelError, match="packed for"):
        igemm.conv2d_cnhw(np.zeros((1, 2, 2, 2), np.int8), np.zeros((1, 2, 1, 1), np.int8),
                          packed=packed)


@vnni
def test_the_kernel_is_built_without_the_ir_pipeline_and_cached_apart(tmp_path):
    from tessera.runtime.cpu.jit import Engine
    eng = Engine(cache_dir=tmp_path)
    ir = igemm._ir(6, 4)
    raw = eng.compile(ir, "igemm_r6v4", 5, description="t", optimise=False)
    opt = eng.compile(ir, "igemm_r6v4", 5, description="t")
    assert raw.key != opt.key and eng.stats.compiles == 2
    assert Engine(cache_dir=tmp_path).compile(ir, "igemm_r6v4", 5, description="t",
                                              optimise=False).key == raw.key
    x4 = np.random.default_rng(5).integers(0, 2**32, (3, 64), dtype=np.uint32)
    w4 = np.random.default_rng(6).integers(0, 2**32, (7, 3), dtype=np.uint32)
    outs = []
    for fn in (raw, opt):
        out = np.zeros((7, 50), np.int32)
        fn(x4, w4, np.arange(7, dtype=np.int32), out, np.array([50, 64, 7, 3, 3, 50], np.int64))
        outs.append(out)
    want = (x4[:, :50].view(np.uint8).reshape(3, 50, 4).astype(np.int64)[None]
            * w4.view(np.int8).reshape(7, 3, 1, 4)).sum(axis=(1, 3)) + np.arange(7)[:, None]
    np.testing.assert_array_equal(outs[0], reference.wrap32(want))
    np.testing.assert_array_equal(outs[1], outs[0])
