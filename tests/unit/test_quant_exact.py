"""The quantiser's fast paths compute exactly what the plain ones do: exact int8 products in
float32 chunks, the epilogue on int32 lanes, bias correction reusing calibration's products."""

import importlib

import numpy as np
import pytest

from tessera.compiler import reference, zoo
from tessera.compiler.frontend import import_onnx
from tessera.compiler.passes import GRAPH_PASSES, run_pipeline
from tessera.compiler.quant import quantize
from tessera.compiler.quant.bias_correction import BIAS_CORRECTION_BATCHES

# the package exports functions of these names: the modules themselves
calibrate = importlib.import_module("tessera.compiler.quant.calibrate")
quantize_mod = importlib.import_module("tessera.compiler.quant.quantize")


def _float64_conv(x, w, *geo):
    return np.rint(reference.conv2d_nchw(x.astype(np.float64), w.astype(np.float64), *geo)
                   ).astype(np.int64)


def test_int_conv2d_is_exact_on_extreme_values_and_long_reductions():
    rng = np.random.default_rng(0)
    cases = [  # (n, c, o, groups, k, size, stride, pads, dilation)
        (1, 300, 5, 1, 3, 6, 1, (1, 1, 1, 1), 1),     # reduction 2700: three float32 chunks
        (2, 8, 8, 8, 3, 9, 2, (0, 1, 2, 1), 1),       # depthwise, batch 2, asymmetric pads
        (1, 6, 9, 3, 2, 8, 1, (0, 0, 0, 0), 2),       # grouped, dilated
        (1, 1200, 3, 1, 1, 3, 1, (0, 0, 0, 0), 1),    # 1x1, reduction just above one chunk
    ]
    for n, c, o, g, k, size, s, pads, d in cases:
        for extreme in (False, True):
            x = rng.integers(-128, 128, (n, c, size, size)).astype(np.int8)
            w = rng.integers(-128, 128, (o, c // g, k, k)).astype(np.int8)
            if extreme:  # every product 2**14: each chunk sums to exactly 2**24
                x[:], w[:] = -128, -128
            geo = ((s, s), pads, (d, d), g)
            got = reference.int_conv2d(x, w, *geo)
            assert got.dtype == np.int64 and got.flags.c_contiguous
            np.testing.assert_array_equal(got, _float64_conv(x, w, *geo))


def test_int_matmul_is_exact_and_wider_integers_still_work():
    rng = np.random.default_rng(1)
    for k in (1, 1024, 1025, 5000):
        a = rng.integers(-128, 128, (3, k)).astype(np.int8)
        b = rng.integers(-128, 128, (k, 4)).astype(np.int8)
        a[0], b[:, 0] = -128, -128
        np.testing.assert_array_equal(reference.int_matmul(a, b),
                                      a.astype(np.int64) @ b.astype(np.int64))
    a = rng.integers(-40000, 40000, (2, 50)).astype(np.int32)  # no float32 chunk is exact
    b = rng.integers(-128, 128, (50, 3)).astype(np.int8)
    np.testing.assert_array_equal(reference.int_matmul(a, b),
                                  a.astype(np.int64) @ b.astype(np.int64))


def test_int32_lanes_are_the_wrapped_exact_products():
    rng = np.random.default_rng(2)
    x = rng.integers(-128, 128, (2, 300, 5, 5)).astype(np.int8)
    w = rng.integers(-128, 128, (4, 300, 3, 3)).astype(np.int8)
    x[0], w[0] = -128, -128  # chunks summing to exactly 2**24
    geo = ((1, 1), (1, 1, 1, 1), (1, 1), 1)
    got = reference.int_conv2d_cnhw(x, w, *geo, dtype=np.int32)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, reference.int_conv2d_cnhw(x, w, *geo))
    a = rng.integers(-128, 128, (3, 2000)).astype(np.int8)
    b = rng.integers(-128, 128, (2000, 5)).astype(np.int8)
    assert reference.sums_fit_int32(a.dtype, b.dtype, 2000)
    np.testing.assert_array_equal(reference.int_matmul(a, b, dtype=np.int32),
                                  a.astype(np.int64) @ b.astype(np.int64))
    # int32 operands: sums beyond int32 come back wrapped, as the accumulator wraps them
    a = np.full((1, 3), 2 ** 30, np.int32)
    b = np.full((3, 1), 2, np.int8)
    assert not reference.sums_fit_int32(a.dtype, b.dtype, 3)
    assert int(reference.int_matmul(a, b, dtype=np.int32)[0, 0]) == \
        int(reference.wrap32(np.int64(3 * 2 ** 31)))


def test_exact_splits_are_long_where_the_weights_allow_and_still_exact():
    rng = np.random.default_rng(4)
    k = 4608
    # trained-like int8 weights (mean |w| ~ 29): two chunks where the dtype allows 1024 terms
    w = np.clip(np.rint(rng.standard_normal((6, k)) * 36), -127, 127).astype(np.int8)
    bounds = reference.exact_splits(np.int8, w)
    assert bounds[0] == 0 and bounds[-1] == k and len(bounds) - 1 < k // 1024
    for k0, k1 in zip(bounds[:-1], bounds[1:]):
        worst = int(np.abs(w[:, k0:k1].astype(np.int64)).sum(axis=1).max()) * 128
        assert worst <= 2 ** 24 or k1 - k0 <= 1024
    # inputs at the bound: -128 against every weight's sign makes each sum 128 * sum|w|
    x = np.where(w[:1] >= 0, -128, 127).astype(np.int8).repeat(3, axis=0)
    x[1] = -128
    want = x.astype(np.int64) @ w.T.astype(np.int64)
    for dtype in (np.int64, np.int32):
        got = reference.int_matmul(x, w.T, dtype=dtype, splits=bounds)
        np.testing.assert_array_equal(got, want)
    xc = x.reshape(3, k, 1, 1)
    got = reference.int_conv2d_cnhw(xc, w.reshape(6, k, 1, 1), dtype=np.int32, splits=bounds)
    np.testing.assert_array_equal(got[:, :, 0, 0].T, want)
    # all-extreme weights: nothing longer than the dtype's chunk is exact
    assert reference.exact_splits(np.int8, np.full((2, 3000), -128, np.int8)) == \
        [0, 1024, 2048, 3000]
    assert reference.exact_splits(np.int32, w) is None  # float32 holds no int32 product


def test_blocked_error_sums_equal_the_whole_array_formula():
    bc = importlib.import_module("tessera.compiler.quant.bias_correction")
    rng = np.random.default_rng(3)
    for rows, cols in ((64, 5000), (7, 1), (300, 200)):
        zc = rng.standard_normal((rows, cols)).astype(np.float32) * 100
        acc = rng.integers(-5000, 5000, (rows, cols)).astype(np.int32)
        unit = rng.random((rows, 1)) + 0.01
        for offset in (np.zeros(rows, np.int64), rng.integers(-900, 900, rows)):
            err = zc / unit - (acc - offset[:, None])
            s1, s2 = np.ones(rows), np.ones(rows)  # the sums are added to what is there
            bc._add_error_sums(zc, acc, unit, offset, s1, s2)
            np.testing.assert_array_equal(s1, 1 + err.sum(axis=1))
            np.testing.assert_array_equal(s2, 1 + (err * err).sum(axis=1))


def test_unclipped_weight_rounding_and_weight_sums_equal_the_plain_formulas():
    params = importlib.import_module("tessera.compiler.quant.params")
    rng = np.random.default_rng(5)
    for trial in range(60):
        o, k = int(rng.integers(1, 12)), int(rng.integers(1, 200))
        w = (rng.standard_normal((o, k)) * 10.0 ** int(rng.integers(-30, 30))).astype(np.float32)
        w[rng.random((o, k)) < 0.3] = 0
        w[0] = 0 if trial % 3 == 0 else w[0]
        scale = params._weight_scale(params._channel_absmax(w), params.WEIGHT_FLOOR_RATIO)
        plain = np.clip(np.rint(w.astype(np.float64) / scale[:, None]), -127, 127)
        got = params._round_weights(w, scale, bounded=True)
        np.testing.assert_array_equal(got, plain.astype(np.int8))
        wq = got.astype(np.int64)
        total, mag = params._weight_sums(got)
        np.testing.assert_array_equal(total, wq.sum(axis=1))
        np.testing.assert_array_equal(mag, np.abs(wq).sum(axis=1))
    extreme = np.full((2, 5), -128, np.int8)
    assert params._weight_sums(extreme)[1].tolist() == [640, 640]


def test_weight_kernels_equal_the_numpy_passes(monkeypatch):
    """The JIT kernels of large layers (compiler/quant/wround.py) give the numpy formulas'
    absmax, int8 weights and sums bit for bit: random magnitudes 1e-30..1e30, exact halves
    (ties to even), zero and NaN/inf channels, clipped rounding at -127 and -128, tails of
    every length; and quantize_layer's result does not depend on which path ran."""
    params = importlib.import_module("tessera.compiler.quant.params")
    from tessera.compiler.quant import wround
    rng = np.random.default_rng(11)
    for trial in range(80):
        o, k = int(rng.integers(1, 20)), int(rng.integers(1, 90))
        w = (rng.standard_normal((o, k)) * 10.0 ** rng.uniform(-30, 30)).astype(np.float32)
        w[rng.random((o, k)) < 0.2] = 0
        if trial % 4 == 0:  # quotients on exact halves: round half to even
            w = (rng.integers(-254, 255, (o, k)) * 0.5).astype(np.float32)
        if trial % 9 == 0:
            w[0] = 0
        amax = np.maximum(w.max(axis=1), -w.min(axis=1)).astype(np.float64)
        np.testing.assert_array_equal(wround.channel_absmax(w), amax)
        scale = params._weight_scale(amax, params.WEIGHT_FLOOR_RATIO)
        if trial % 4 == 0:
            scale = np.where(rng.random(o) < 0.5, 1.0, scale)
        cases = [(scale * rng.uniform(0.2, 3, o), lo, True) for lo in (-127, -128)]
        if trial % 4:
            cases.append((scale, -127, False))  # every quotient within 127: no clip
        for sc, lo, clip in cases:
            q = np.rint(w.astype(np.float64) / sc[:, None])
            plain = (np.clip(q, lo, 127) if clip else q).astype(np.int64)
            wq, total, mag = wround.round_rows(w.reshape(o, 1, k), sc, lo, clip)
            assert wq.dtype == np.int8 and wq.shape == (o, 1, k)
            np.testing.assert_array_equal(wq.reshape(o, k), plain)
            np.testing.assert_array_equal(total, plain.sum(axis=1))
            np.testing.assert_array_equal(mag, np.abs(plain).sum(axis=1))
    bad = np.ones((3, 21), np.float32)
    bad[0, 17], bad[2, 3] = np.nan, np.inf
    got = wround.channel_absmax(bad)
    assert np.isnan(got[0]) and got[1] == 1 and got[2] == np.inf
    with pytest.raises(TypeError, match="float32"):
        wround.channel_absmax(bad.astype(np.float64))
    w = (rng.standard_normal((24, 3, 3, 3)) * 0.1).astype(np.float32)
    w[5] = 1e-12  # a dead channel
    bias = rng.standard_normal(24)
    plain = params.quantize_layer(w, bias, 0.02, "layer", in_zero_point=3)
    monkeypatch.setattr(params, "KERNEL_WEIGHTS", 1)
    fast = params.quantize_layer(w, bias, 0.02, "layer", in_zero_point=3)
    for field in ("wq", "w_scale", "bq", "bound", "floored", "dead", "bias_raised"):
        np.testing.assert_array_equal(getattr(fast, field), getattr(plain, field))


def _graph(model):
    return run_pipeline(import_onnx(model), GRAPH_PASSES)


def _batches(g, n, seed=0):
    rng = np.random.default_rng(seed)
    return [{i: rng.standard_normal(g.tensors[i].shape).astype(np.float32) for i in g.inputs}
            for _ in range(n)]


def test_calibration_keeps_the_float_products_bias_correction_needs():
    g = _graph(zoo.small_cnn())
    batches = _batches(g, 5)
    products: dict = {}
    stats = calibrate.collect(g, batches, products=products, product_batches=3)
    layers = [n for n in g.nodes if n.op in ("conv2d", "dense")]
    assert layers and set(products) == {n.name for n in layers}
    assert all(len(v) == 3 for v in products.values())
    plain = calibrate.collect(g, batches)
    assert stats.keys() == plain.keys()
    for name, st in stats.items():  # the recording kernels change nothing
        np.testing.assert_array_equal(st.samples, plain[name].samples)
    small: dict = {}
    calibrate.collect(g, batches, products=small, product_batches=3, product_budget=1000)
    assert small == {}  # over budget: nothing kept, bias correction runs the float graph


@pytest.mark.parametrize("model", [zoo.resnet_tiny, zoo.small_cnn, zoo.mobilenet_tiny])
def test_bias_correction_from_calibrations_products_equals_rerunning_the_float_graph(
        model, monkeypatch):
    g = _graph(model())
    batches = _batches(g, BIAS_CORRECTION_BATCHES + 2)
    bc = importlib.import_module("tessera.compiler.quant.bias_correction")
    calls = []
    real = bc._float_products
    monkeypatch.setattr(bc, "_float_products", lambda *a: calls.append(1) or real(*a))
    fast = quantize(g, batches)
    assert not calls, "bias correction ran the float graph again"

    def collect_without_products(graph, cal, seed=0, products=None, product_batches=0):
        return calibrate.collect(graph, cal, seed=seed)

    monkeypatch.setattr(quantize_mod, "collect", collect_without_products)
    slow = quantize(g, batches)
    assert calls
    assert any("bias_correction" in lq.notes for lq in slow.layers.values())
    assert [n.name for n in fast.graph.nodes] == [n.name for n in slow.graph.nodes]
    for a, b in zip(fast.graph.nodes, slow.graph.nodes):
        assert repr(a.attrs.get("epilogue")) == repr(b.attrs.get("epilogue")), a.name
    assert fast.graph.constants.keys() == slow.graph.constants.keys()
    for name, v in fast.graph.constants.items():
        np.testing.assert_array_equal(v, slow.graph.constants[name], err_msg=name)
    x = batches[-1]
    for name, y in fast.run(x).items():
        np.testing.assert_array_equal(y, slow.run(x)[name])


def _epilogue_by_alu_apply(acc, epi, residual=None):
    """The epilogue step by step with the simulator's int64 ALU (its definition)."""
    from tessera.isa import AluOp
    from tessera.sim.fsim import alu_apply

    v, u = np.asarray(acc, np.int64), None if residual is None else residual.astype(np.int64)
    for step in epi.alu_steps():
        op = step.operand
        if isinstance(op, np.ndarray):
            op = op.reshape([1, -1] + [1] * (v.ndim - 2))
        op = np.asarray(op, np.int64)
        if step.branch == "residual":
            u = alu_apply(AluOp[step.opcode], u, op).astype(np.int64)
        elif step.branch == "combine":
            v = alu_apply(AluOp.ADD, v, u).astype(np.int64)
        else:
            v = alu_apply(AluOp[step.opcode], v, op).astype(np.int64)
    return v.astype(np.int8)


def test_the_epilogue_on_int32_lanes_is_the_alus_arithmetic():
    from tessera.compiler.quant.params import make_epilogue
    from tessera.runtime.accel.epilogue import apply_epilogue

    rng = np.random.default_rng(3)
    for k in range(60):
        c = int(rng.integers(1, 6))
        res = rng.integers(-128, 128, (2, c, 3, 3)).astype(np.int8) if k % 2 else None
        extra = {"residual_ratio": float(rng.uniform(0.01, 3))} if k % 2 else {}
        epi = make_epilogue(rng.uniform(1e-5, 0.3, c), int(rng.integers(100, 1 << 30)),
                            int(rng.integers(-128, 0)), int(rng.integers(0, 128)),
                            acc_offset=int(rng.integers(-300, 300)) * (k % 3 == 0),
                            offset=int(rng.integers(-20, 20)), **extra)
        acc = rng.integers(-(1 << 31), 1 << 31, (2, c, 3, 3), dtype=np.int64)
        want = _epilogue_by_alu_apply(acc, epi, res)
        np.testing.assert_array_equal(apply_epilogue(acc, epi, res), want)  # int64 input
        acc32 = acc.astype(np.int32)
        np.testing.assert_array_equal(apply_epilogue(acc32, epi, res), want)  # int32 lanes
        np.testing.assert_array_equal(acc32, acc.astype(np.int32))  # input left alone
        # the caller's own int32 buffer as the lanes
        np.testing.assert_array_equal(apply_epilogue(acc32.copy(), epi, res, overwrite=True),
                                      want)


def test_in_place_mse_searches_pick_the_plain_formulas_thresholds():
    """threshold_mse / _mse_asym evaluate (x - Q(x))^2 in place; the plain expressions (as
    they were written before) choose the same ranges, bit for bit."""
    bins = 2048

    def plain_symmetric(absval, amax, levels=127):
        hist, edges = np.histogram(absval, bins=bins, range=(0.0, amax))
        centres = (edges[:-1] + edges[1:]) / 2
        nz = hist > 0
        hist, centres = hist[nz].astype(np.float64), centres[nz]
        cands = amax * np.linspace(calibrate.MSE_MIN_FRACTION, 1.0, 256)
        steps = cands / levels
        q = np.minimum(np.round(centres[None, :] / steps[:, None]), levels) * steps[:, None]
        return float(cands[int(np.argmin(((centres[None, :] - q) ** 2) @ hist))])

    def plain_asymmetric(x, lo, hi):
        hist, edges = np.histogram(x, bins=bins, range=(lo, hi))
        centres = (edges[:-1] + edges[1:]) / 2
        nz = hist > 0
        hist, centres = hist[nz].astype(np.float64), centres[nz]
        fr = np.linspace(calibrate.MSE_MIN_FRACTION, 1.0, 24)
        best, best_err = (lo, hi), np.inf
        for a in (lo * fr if lo < 0 else np.zeros(1)):
            his = hi * fr if hi > 0 else np.zeros(1)
            steps = np.maximum(his - a, 1e-8) / 255.0
            zps = np.rint(-a / steps)
            q = np.clip(np.rint(centres[None, :] / steps[:, None]), -zps[:, None],
                        255 - zps[:, None]) * steps[:, None]
            errs = ((centres[None, :] - q) ** 2) @ hist
            k = int(np.argmin(errs))
            if errs[k] < best_err:
                best, best_err = (float(a), float(his[k])), float(errs[k])
        return best

    rng = np.random.default_rng(4)
    for k in range(12):
        x = (rng.standard_normal(20000) * rng.uniform(0.1, 10) + rng.uniform(-3, 3))
        x = (np.maximum(x, 0) if k % 3 == 0 else x).astype(np.float32)
        ax = np.abs(x)
        assert calibrate.threshold_mse(ax, float(ax.max())) == plain_symmetric(ax, float(ax.max()))
        lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
        assert calibrate._mse_asym(x, lo, hi) == plain_asymmetric(x, lo, hi)


def test_reinference_reuses_constant_infos_only_when_they_are_what_it_would_build():
    from dataclasses import replace

    from tessera.compiler.ir import TensorInfo
    from tessera.compiler.ir.graph import infer

    g = _graph(zoo.resnet_tiny())
    consts = list(g.constants)
    for keep in (g.tensors, {k: replace(v, scale=0.5) for k, v in g.tensors.items()},
                 {k: replace(v, scale=0.0) for k, v in g.tensors.items()},
                 {k: TensorInfo((1,), "int8") for k in g.tensors}, {}):
        got = infer(g, keep=keep).tensors
        for k in consts:
            v = g.constants[k]
            want = TensorInfo(v.shape, "float32" if v.dtype == np.float64 else str(v.dtype))
            old = keep.get(k)
            if old is not None and old.scale:
                want = replace(want, scale=old.scale)
            assert got[k] == want, k
