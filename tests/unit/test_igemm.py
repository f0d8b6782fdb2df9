"""The int8 kernels (runtime/cpu/igemm.py: AVX-512 VNNI, AVX2) compute exactly the wrapped
int32 lanes of the exact products, and the compiler's int32-lane products use them (or say they
did not). Every test that runs a kernel runs once per instruction set the host has."""

import numpy as np
import pytest

from tessera.compiler import reference
from tessera.errors import KernelError
from tessera.runtime.cpu import igemm, igemm_ir

HOST = igemm.host_isas()


@pytest.fixture(params=igemm.ISAS)
def isa(request, monkeypatch):
    """Each instruction set the host has, selected through ``TESSERA_IGEMM``."""
    if request.param not in HOST:
        pytest.skip(f"host CPU has no {request.param}")
    monkeypatch.setenv("TESSERA_IGEMM", request.param)
    assert igemm.available() == request.param
    return request.param


def _count(isa):
    return igemm.stats.vnni if isa == "avx512vnni" else igemm.stats.avx2


def _wrapped_conv(x, w, strides, pads, dilations):
    exact = reference.int_conv2d(x, w, strides, pads, dilations)  # int64, no kernel
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
    (1, 7, 2, 2, 40, 2, 2, 1, (0, 0, 0, 0), 1),       # M = 1: the one-vector blocking
    (2, 2, 2, 2, 9, 1, 1, 1, (0, 0, 0, 0), 1),        # M = 8: one AVX2 vector, O = 8 + 1
    (1, 9, 3, 3, 13, 1, 1, 1, (0, 0, 0, 0), 1),       # M = 9: past one AVX2 vector, odd C
    (1, 6, 7, 5, 7, 2, 3, 1, (1, 0, 0, 2), (2, 1)),   # per-axis dilation, even C
]


@pytest.mark.parametrize("case", CONVS)
@pytest.mark.parametrize("x_dtype", [np.int8, np.uint8])
def test_conv_lanes_equal_the_wrapped_exact_products(isa, case, x_dtype):
    n, c, h, wd, o, kh, kw, s, pads, d = case
    rng = np.random.default_rng(2 * CONVS.index(case) + (x_dtype == np.int8))
    dil = d if isinstance(d, tuple) else (d, d)
    for extreme in (None, "min", "max"):
        x = _values(rng, x_dtype, (n, c, h, wd), extreme)
        w = _values(rng, np.int8, (o, c, kh, kw), extreme)
        geo = ((s, s), pads, dil)
        before = _count(isa)
        got = igemm.conv2d_cnhw(x, w, *geo)
        assert _count(isa) == before + 1
        assert got.dtype == np.int32 and got.flags.c_contiguous
        np.testing.assert_array_equal(got, _wrapped_conv(x, w, *geo))


@pytest.mark.parametrize("x_dtype", [np.int8, np.uint8])
def test_reduction_blocks_add_up_to_the_whole_product(isa, x_dtype, monkeypatch):
    # the kernel runs a few reduction words at a time (rows layout: dense layers, VNNI convs)
    monkeypatch.setitem(igemm._Q_BLOCK, isa, 5)
    monkeypatch.setattr(igemm, "_Q_SPLIT", 0)
    rng = np.random.default_rng(11 + (x_dtype == np.int8))
    for extreme in (None, "min", "max"):
        x = _values(rng, x_dtype, (2, 13, 20, 17), extreme)  # M = 680, Q = 7 or 4 words x 9
        w = _values(rng, np.int8, (11, 13, 3, 3), extreme)
        geo = ((1, 1), (1, 1, 1, 1), (1, 1))
        np.testing.assert_array_equal(igemm.conv2d_cnhw(x, w, *geo), _wrapped_conv(x, w, *geo))
        a = _values(rng, x_dtype, (37, 130), extreme)  # Q = 33 or 65 words
        wd = _values(rng, np.int8, (11, 130), extreme)
        np.testing.assert_array_equal(igemm.matmul(a, wd), reference.wrap32(
            a.astype(np.int64) @ wd.astype(np.int64).T))


@pytest.mark.parametrize("m", [9, 16, 50, 161])
def test_panels_give_the_rows_layouts_products(isa, m):
    # the same activations as (Q, ldx) rows and as (B, Q, cols) panels
    rng = np.random.default_rng(m)
    cols = igemm_ir.LANES[isa] * igemm._blocking(m, isa)[1]
    nb, q, o = -(-m // cols), 7, 13
    g = 4 if isa == "avx512vnni" else 2
    dt = np.uint8 if g == 4 else np.int16
    hi = 256 if g == 4 else 128
    rows = rng.integers(-128 if g == 2 else 0, hi, (q, nb * cols, g)).astype(dt).view(
        np.uint32)[..., 0]
    w4 = rng.integers(-128, 128, (o, q, g)).astype(np.int8 if g == 4 else np.int16).view(
        np.uint32)[..., 0]
    corr = rng.integers(-1000, 1000, o).astype(np.int32)
    panels = np.ascontiguousarray(rows.reshape(q, nb, cols).transpose(1, 0, 2))
    want, got = np.zeros((o, m), np.int32), np.zeros((o, m), np.int32)
    igemm.gemm(np.ascontiguousarray(rows), m, np.ascontiguousarray(w4), corr, want)
    igemm.gemm(panels, m, np.ascontiguousarray(w4), corr, got)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(want, reference.wrap32(
        _dot_words(isa, np.ascontiguousarray(rows), w4, m) + corr[:, None]))
    with pytest.raises(KernelError, match="inconsistent shapes"):
        igemm.gemm(panels[:, :, :cols // 2].copy(), m, np.ascontiguousarray(w4), corr, got)


def test_sums_beyond_int32_wrap_as_the_accumulator(isa):
    # 1x1 conv / dense over 140001 terms of (-128) * (-128): 2293776384 > 2**31 - 1
    k = 140001  # odd: the last AVX2 pair is half padding
    x = np.full((1, k, 2, 1), -128, np.int8)
    w = np.full((3, k, 1, 1), -128, np.int8)
    w[1] = 127
    want = reference.wrap32(np.array([k * 128 * 128, -k * 128 * 127, k * 128 * 128]))
    got = igemm.conv2d_cnhw(x, w)
    np.testing.assert_array_equal(got[:, 0, 0, 0], want)
    got = igemm.matmul(x.reshape(1, k, 2)[:, :, 0], w.reshape(3, k))
    np.testing.assert_array_equal(got[0], want)
    assert want[0] < 0 < want[1]  # both sums left int32 and wrapped
    xu = np.full((1, k, 1, 1), 255, np.uint8)  # 255 * 127 and 255 * -128 terms
    got = igemm.conv2d_cnhw(xu, w)
    np.testing.assert_array_equal(
        got[:, 0, 0, 0], reference.wrap32(np.array([-k * 255 * 128, k * 255 * 127,
                                                    -k * 255 * 128])))


@pytest.mark.parametrize("x_dtype", [np.int8, np.uint8])
def test_matmul_lanes_equal_the_exact_products(isa, x_dtype, monkeypatch):
    rng = np.random.default_rng(7 if x_dtype == np.int8 else 8)
    monkeypatch.setattr(igemm, "_WEIGHT_BLOCK", 4096)  # weights packed in several blocks
    for m, k, o in [(1, 7, 3), (9, 100, 33), (8, 4096, 130), (40, 64, 17), (17, 1, 1),
                    (3, 1030, 16), (16, 33, 29), (7, 2, 8)]:
        for extreme in (None, "min", "max"):
            a = _values(rng, x_dtype, (m, k), extreme)
            w = _values(rng, np.int8, (o, k), extreme)
            want = reference.wrap32(a.astype(np.int64) @ w.astype(np.int64).T)
            before = _count(isa)
            np.testing.assert_array_equal(igemm.matmul(a, w), want)
            assert _count(isa) == before + 1  # one product, however many weight blocks
            wt = np.asfortranarray(w)  # not C-contiguous: packed on the way in
            np.testing.assert_array_equal(igemm.matmul(a, wt), want)


def test_reference_int32_lanes_take_the_kernel_and_equal_the_float32_path(isa):
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (2, 37, 12, 12)).astype(np.int8)
    w = np.full((21, 37, 3, 3), 127, np.int8)  # all-equal weights: five float32 chunks
    geo = ((1, 1), (1, 1, 1, 1), (1, 1), 1)
    before = _count(isa)
    packed = reference.packed_conv_weights(x.dtype, w)
    assert packed.isa == isa
    got = reference.int_conv2d_cnhw(x, w, *geo, dtype=np.int32, packed=packed)
    assert _count(isa) == before + 1
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
    conv = (np.zeros(1, np.int8), np.zeros((1, 1, 1, 1), np.int8), 1)
    monkeypatch.setenv("TESSERA_IGEMM", "0")
    assert igemm.available() is None
    assert "no int8 kernel on this host" in igemm.supports_conv(*conv)
    monkeypatch.delenv("TESSERA_IGEMM")
    assert igemm.available() == (HOST[0] if HOST else None)
    with igemm.disabled():
        assert igemm.available() is None
        assert igemm.supports_matmul(np.zeros((1, 4), np.int8), np.zeros((1, 4), np.int8))
        with pytest.raises(KernelError, match="igemm matmul: no int8 kernel"):
            igemm.matmul(np.zeros((1, 4), np.int8), np.zeros((1, 4), np.int8))
        with pytest.raises(KernelError, match="igemm: no int8 kernel"):
            igemm.gemm(np.zeros((1, 16), np.uint32), 1, np.zeros((1, 1), np.uint32),
                       np.zeros(1, np.int32), np.zeros((1, 1), np.int32))
    for name in igemm.ISAS:  # an instruction set the host lacks is never taken
        monkeypatch.setenv("TESSERA_IGEMM", name)
        assert igemm.available() == (name if name in HOST else None)


def test_bad_operands_are_refused_before_running(isa):
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
    with pytest.raises(KernelError, match="isa must be one of"):
        igemm.gemm(x4, 10, w4, corr, out, isa="sse2")
    with pytest.raises(KernelError, match="int8/uint8 x int8"):
        igemm.conv2d_cnhw(np.zeros((1, 1, 2, 2), np.int16), np.zeros((1, 1, 1, 1), np.int8))
    with pytest.raises(KernelError, match="input channels"):
        igemm.conv2d_cnhw(np.zeros((1, 2, 2, 2), np.int8), np.zeros((1, 3, 1, 1), np.int8))
    packed = igemm.pack_conv_weights(np.zeros((1, 2, 1, 1), np.int8), np.uint8)
    with pytest.raises(KernelError, match="packed for"):
        igemm.conv2d_cnhw(np.zeros((1, 2, 2, 2), np.int8), np.zeros((1, 2, 1, 1), np.int8),
                          packed=packed)
    other = next(i for i in igemm.ISAS if i != isa)  # another kernel's words
    packed = igemm.pack_conv_weights(np.zeros((1, 2, 1, 1), np.int8), np.int8, other)
    with pytest.raises(KernelError, match=f"on {other}, not"):
        igemm.conv2d_cnhw(np.zeros((1, 2, 2, 2), np.int8), np.zeros((1, 2, 1, 1), np.int8),
                          packed=packed)


def _dot_words(isa, x4, w4, m):
    """int64 ``sum_q dot(x4[q, :m], w4[o, q])`` of the raw words, per the ISA's layout."""
    if isa == "avx512vnni":
        xe = x4[:, :m].view(np.uint8).reshape(x4.shape[0], m, 4)
        we = w4.view(np.int8).reshape(w4.shape[0], w4.shape[1], 4)
    else:
        xe = x4[:, :m].view(np.int16).reshape(x4.shape[0], m, 2)
        we = w4.view(np.int16).reshape(w4.shape[0], w4.shape[1], 2)
    return np.einsum("qmg,oqg->om", xe.astype(np.int64), we.astype(np.int64))


def test_the_kernel_is_built_without_the_ir_pipeline_and_cached_apart(isa, tmp_path):
    from tessera.runtime.cpu.jit import Engine
    eng = Engine(cache_dir=tmp_path)
    rb, vb = igemm._blocking(50, isa)
    ir, name = igemm_ir.ir(isa, rb, vb), igemm_ir.symbol(isa, rb, vb)
    raw = eng.compile(ir, name, 5, description="t", optimise=False)
    opt = eng.compile(ir, name, 5, description="t")
    assert raw.key != opt.key and eng.stats.compiles == 2
    assert Engine(cache_dir=tmp_path).compile(ir, name, 5, description="t",
                                              optimise=False).key == raw.key
    rng = np.random.default_rng(5)
    x4 = rng.integers(0, 2**32, (3, 64), dtype=np.uint32)
    w4 = rng.integers(0, 2**32, (7, 3), dtype=np.uint32)
    if isa == "avx2":  # int16 elements within int8 / uint8 range, as the packing makes them
        x4 = (rng.integers(-128, 256, (3, 64, 2)).astype(np.int16)).view(np.uint32)[..., 0]
        w4 = (rng.integers(-128, 128, (7, 3, 2)).astype(np.int16)).view(np.uint32)[..., 0]
    outs = []
    for fn in (raw, opt):
        out = np.zeros((7, 50), np.int32)
        cols = igemm_ir.LANES[isa] * vb  # rows 64 words apart, blocks `cols` apart
        fn(x4, w4, np.arange(7, dtype=np.int32), out,
           np.array([50, 64, 7, 3, 3, 50, cols, 2 * cols], np.int64))
        outs.append(out)
    want = _dot_words(isa, x4, w4, 50) + np.arange(7)[:, None]
    np.testing.assert_array_equal(outs[0], reference.wrap32(want))
    np.testing.assert_array_equal(outs[1], outs[0])


def test_the_two_kernels_have_their_own_names_and_cache_keys():
    assert igemm_ir.symbol("avx512vnni", 6, 4) == "igemm_r6v4"  # as it always was
    assert igemm_ir.symbol("avx2", 6, 2) == "igemm_avx2_r6v2"
    vnni, avx2 = (igemm_ir.ir(i, 6, 2) for i in igemm.ISAS)
    assert "vpdpbusd.512" in vnni and "<16 x i32>" in vnni and "pmadd" not in vnni
    assert "avx2.pmadd.wd" in avx2 and "<8 x i32>" in avx2 and "vpdpbusd" not in avx2
    assert len({igemm._VERSIONS[i] for i in igemm.ISAS}) == 2
    with pytest.raises(ValueError, match="isa must be one of"):
        igemm_ir.ir("sse2", 1, 1)


def test_an_unknown_tessera_igemm_value_is_an_error(monkeypatch):
    monkeypatch.setenv("TESSERA_IGEMM", "avx512")
    with pytest.raises(KernelError, match=r"TESSERA_IGEMM='avx512': expected 0 .* avx2"):
        igemm.available()
    monkeypatch.setenv("TESSERA_IGEMM", "")
    assert igemm.available() == (igemm.host_isas() or (None,))[0]
