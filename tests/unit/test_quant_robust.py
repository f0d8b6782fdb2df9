"""Int8 that survives trained weights: near-dead channels, biases that never clamp silently,
per-channel accumulator bounds, calibration methods, asymmetric activations, keep_float and the
SQNR report's causes."""

import importlib

import numpy as np
import pytest

from tessera.compiler import reference
from tessera.compiler.ir import GraphBuilder
from tessera.compiler.passes import GRAPH_PASSES, run_pipeline
from tessera.compiler.quant import quantize
from tessera.compiler.quant.calibrate import TensorStats, qparams, threshold_entropy
from tessera.compiler.quant.params import BIAS_LIMIT, make_epilogue, preshift_error
from tessera.compiler.quant.report import sqnr_db
from tessera.errors import CompileError


def _conv_graph(w, b, relu=True, size=8):
    g = GraphBuilder()
    x = g.input("x", (1, w.shape[1], size, size))
    y = g.node("conv2d", [x, g.const("w", w.astype(np.float32)),
                          g.const("b", b.astype(np.float32))],
               pads=(1, 1, 1, 1), act="relu" if relu else "none")
    return run_pipeline(g.build([y]), GRAPH_PASSES)


def _batches(rng, shape, n=6):
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def _layer_sqnr(qm, feeds):
    rep = qm.report(feeds)
    (layer,) = [x for x in rep.layers if x.op == "qconv2d"]
    return layer, rep


def test_near_dead_channels_with_bias_keep_the_layer_accurate():
    """Two of 16 channels have weights ~1e-30 (a vanished BN gamma) and a real bias. Before
    the fix their tiny scale clamped the bias and forced a >>14 pre-shift on every channel
    (SQNR collapsed to ~0 dB); now the layer stays near full int8 accuracy."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 8, 3, 3)) * 0.2
    b = rng.normal(0, 0.5, 16)
    w[[3, 11]] *= 1e-30
    b[[3, 11]] = [1.7, -0.9]
    g = _conv_graph(w, b)
    qm = quantize(g, _batches(rng, (1, 8, 8, 8)))
    (lq,) = qm.layers.values()
    assert lq.dead.tolist() == [c in (3, 11) for c in range(16)]
    assert not lq.bias_raised.any()
    # the bias is exact in accumulator units (nothing clamped) and not scaled down
    qconv = next(n for n in qm.graph.nodes if n.op == "qconv2d")
    sx = qm.qparams[qconv.inputs[0]].scale
    assert np.all(np.abs(lq.bq) < BIAS_LIMIT)
    wsum = lq.wq.reshape(16, -1).astype(np.int64).sum(1)
    qy = qm.qparams[qconv.outputs[0]]
    want = np.rint((b + qy.zero_point * qy.scale) / (sx * lq.w_scale)) \
        - qm.qparams[qconv.inputs[0]].zero_point * wsum
    np.testing.assert_array_equal(lq.bq, want + lq.notes.get("bias_correction", 0))
    epi = qconv.attrs["epilogue"]
    assert preshift_error(epi) < 0.05  # the dead channels no longer force a pre-shift
    test = _batches(rng, (1, 8, 8, 8), 1)[0]
    layer, rep = _layer_sqnr(qm, test)
    assert layer.sqnr_db > 30, rep.table()
    assert not layer.flagged
    # the dead channels' outputs are their ReLU'd biases, to the int8 step
    f = reference.run(g, test)
    out = qm.run(test)
    for c in (3, 11):
        np.testing.assert_allclose(out[g.outputs[0]][0, c], f[g.outputs[0]][0, c],
                                   atol=qy.scale)


def test_a_bias_too_large_for_int32_raises_the_weight_scale_and_is_reported():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 3, 3, 3)) * 0.1
    b = np.array([0.1, 5e7, -0.2, 0.05])  # channel 1: a bias no int32 at scale s_x*s_w holds
    g = _conv_graph(w, b, relu=False)
    qm = quantize(g, _batches(rng, (1, 3, 8, 8)), activations="symmetric")
    lq = next(iter(qm.layers.values()))
    assert lq.bias_raised.tolist() == [False, True, False, False]
    assert np.abs(lq.bq).max() <= BIAS_LIMIT
    layer, rep = _layer_sqnr(qm, _batches(rng, (1, 3, 8, 8), 1)[0])
    assert "bias raised: 1 of 4 channels" in rep.table() or not layer.flagged


def test_per_channel_bounds_choose_the_preshift():
    """One channel with a huge bound and a tiny multiplier must not cost the others a
    pre-shift: the product bound[c] * mult[c] decides."""
    ratio = np.array([1e-3, 1e-3, 4e-6])  # channel 2: at the weight-scale floor, a big bias
    bound = np.array([1 << 18, 1 << 18, 1 << 26])
    epi = make_epilogue(ratio, bound)
    assert epi.pre_shift == make_epilogue(ratio[:2], bound[:2]).pre_shift == 2
    rng = np.random.default_rng(7)
    acc = rng.integers(-bound, bound + 1, (500, 3))
    from tessera.runtime.accel.epilogue import apply_epilogue
    got = apply_epilogue(acc, epi).astype(np.int64)
    assert np.abs(got - np.clip(np.rint(acc * ratio), -128, 127)).max() <= 1
    # the old rule (largest bound x largest multiplier) shifts every channel by 10
    assert make_epilogue(ratio, int(bound.max())).pre_shift == 10


def test_calibration_methods_pick_sensible_ranges():
    rng = np.random.default_rng(2)
    st = TensorStats()
    x = rng.standard_normal(100000).astype(np.float32)
    x[:3] = [30.0, -25.0, 28.0]  # rare outliers
    st.add(x, rng, 1 << 18)
    amax = 30.0
    t = {m: qparams(st, m).scale * 127 for m in ("minmax", "percentile", "mse", "entropy")}
    assert t["minmax"] == pytest.approx(amax)
    assert 3.5 < t["percentile"] < 5.0  # 99.99th percentile of |N(0,1)| is 3.9
    assert t["mse"] < amax and t["entropy"] < 10
    # a ReLU-like tensor: asymmetric with zero point -128 covers [0, max] with 255 levels
    relu = TensorStats()
    relu.add(np.maximum(x[3:], 0), rng, 1 << 18)
    for m in ("minmax", "percentile", "mse", "entropy"):
        qp = qparams(relu, m, symmetric=False)
        assert qp.zero_point == -128
        lo, hi = qp.real_range()
        assert lo == pytest.approx(0, abs=1e-12) and 1.0 < hi <= 5.0
    with pytest.raises(CompileError, match="calibration method"):
        qparams(st, "kl")


def test_entropy_threshold_clips_a_long_tail():
    rng = np.random.default_rng(3)
    a = np.abs(rng.standard_normal(200000))
    a[0] = 40
    assert 2.5 < threshold_entropy(a, 40.0) < 6


def test_entropy_threshold_ignores_the_zeros_of_a_relu():
    """Half of a ReLU output is exactly 0 (exact at any scale); as a spike in the first bin it
    drove the KL search to clip a half-normal at 1.8 sigma."""
    rng = np.random.default_rng(3)
    r = np.maximum(rng.standard_normal(200000), 0)
    t = threshold_entropy(r, float(r.max()), levels=256)
    assert 3.5 < t <= r.max()
    assert threshold_entropy(np.zeros(10), 0.0) > 0


@pytest.mark.parametrize("method", ["mse", "entropy", "percentile", "minmax"])
@pytest.mark.parametrize("activations", ["auto", "symmetric", "asymmetric"])
def test_every_method_and_activation_mode_gives_a_good_layer(method, activations):
    rng = np.random.default_rng(4)
    w = rng.standard_normal((8, 4, 3, 3)) * 0.3
    g = _conv_graph(w, rng.normal(0, 0.3, 8))
    qm = quantize(g, _batches(rng, (1, 4, 8, 8)), method=method, activations=activations)
    qconv = next(n for n in qm.graph.nodes if n.op == "qconv2d")
    zx = qm.qparams[qconv.inputs[0]].zero_point
    if activations == "symmetric":
        assert zx == 0 and qm.qparams[qconv.outputs[0]].zero_point == 0
    if activations == "asymmetric":  # a padded conv's asymmetric input is padded explicitly
        assert any(n.op == "pad" for n in qm.graph.nodes) == (zx != 0)
    layer, rep = _layer_sqnr(qm, _batches(rng, (1, 4, 8, 8), 1)[0])
    # entropy (KL) clips the tail of a ReLU output: a couple of percent saturate, as it names
    assert layer.sqnr_db > (20 if method == "entropy" else 25), rep.table()
    if layer.flagged:
        assert any(c.startswith(("clipped outliers", "saturated")) for c in layer.causes)


def test_keep_float_keeps_a_layer_float_with_quantised_boundaries():
    rng = np.random.default_rng(5)
    g = GraphBuilder()
    x = g.input("x", (1, 4, 8, 8))
    a = g.node("conv2d", [x, g.const("w1", rng.standard_normal((6, 4, 1, 1)).astype(
        np.float32))], act="relu", name="c1")
    b = g.node("conv2d", [a, g.const("w2", rng.standard_normal((6, 6, 1, 1)).astype(
        np.float32))], act="relu", name="c2")
    c = g.node("conv2d", [b, g.const("w3", rng.standard_normal((5, 6, 1, 1)).astype(
        np.float32))], name="c3")
    graph = g.build([c])
    cal = _batches(rng, (1, 4, 8, 8))
    qm = quantize(graph, cal, keep_float=["c2"])
    ops = {n.name: n.op for n in qm.graph.nodes}
    assert ops["c1"] == "qconv2d" and ops["c3"] == "qconv2d" and ops["c2"] == "conv2d"
    seq = [n.op for n in qm.graph.nodes]
    # int8 c1 -> dequantize -> float c2 -> quantize -> int8 c3
    i = seq.index("conv2d")
    assert seq[i - 1] == "dequantize" and seq[i + 1] == "quantize"
    test = cal[0]
    full = quantize(graph, cal)
    f = reference.run(graph, test)[c]
    assert sqnr_db(f, qm.run(test)[c]) > sqnr_db(f, full.run(test)[c]) - 1.0
    assert "kept float: c2" in qm.report(test).table()
    with pytest.raises(CompileError, match="keep_float names unknown node"):
        quantize(graph, cal, keep_float=["nope"])


def test_report_names_the_cause_of_a_bad_layer():
    """A conv fed by a tensor with rare huge outliers, calibrated by minmax: its input uses a
    few levels and the report flags the layer with that cause."""
    rng = np.random.default_rng(6)
    w = rng.standard_normal((8, 4, 3, 3)) * 0.3
    gb = GraphBuilder()
    x = gb.input("x", (1, 4, 8, 8))
    h = gb.node("conv2d", [x, gb.const("w0", np.eye(4, dtype=np.float32).reshape(4, 4, 1, 1))],
                name="pass")
    y = gb.node("conv2d", [h, gb.const("w", w.astype(np.float32))], pads=(1, 1, 1, 1),
                name="victim")
    graph = gb.build([y])
    cal = _batches(rng, (1, 4, 8, 8))
    cal[0]["x"][0, 0, 0, 0] = 400.0  # one outlier sets the minmax range
    qm = quantize(graph, cal, method="minmax")
    rep = qm.report(_batches(rng, (1, 4, 8, 8), 1)[0])
    by = {x.node: x for x in rep.layers}
    assert by["pass"].flagged and any(c.startswith("few levels") for c in by["pass"].causes)
    assert any(c.startswith("inherited") for c in by["victim"].causes) or not \
        by["victim"].flagged
    assert "few levels" in rep.table()


def test_cli_compile_takes_the_quantisation_options(tmp_path):
    import onnx

    from tessera.cli import main
    from tessera.compiler import zoo
    from tessera.runtime.model import load
    proto = zoo.small_cnn()
    onnx.save(proto, tmp_path / "m.onnx")
    rng = np.random.default_rng(8)
    np.savez(tmp_path / "cal.npz", input=rng.standard_normal((4, 1, 3, 27, 27)).astype(
        np.float32))
    first_conv = next(n.name for n in proto.graph.node if n.op_type == "Conv")
    assert main(["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.tsr"),
                 "--config", "tiny", "--calibration", str(tmp_path / "cal.npz"),
                 "--calibration-method", "percentile", "--activations", "symmetric",
                 "--keep-float", first_conv]) == 0
    model = load(tmp_path / "m.tsr")
    ops = {s.name: s.info.get("op") for s in model.plan.steps}
    assert ops[first_conv] == "conv2d"  # kept float, on the CPU
    assert "qconv2d" in ops.values()


def _three_convs(rng):
    g = GraphBuilder()
    x = g.input("x", (1, 4, 12, 12))
    for k, (cin, cout, act) in enumerate([(4, 16, "relu"), (16, 16, "relu"), (16, 8, "none")]):
        w = rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2 / (9 * cin))
        w *= np.exp(rng.normal(0, 0.5, (cout, 1, 1, 1)))
        x = g.node("conv2d", [x, g.const(f"w{k}", w.astype(np.float32)),
                              g.const(f"b{k}", rng.normal(0, 0.2, cout).astype(np.float32))],
                   pads=(1, 1, 1, 1), act=act, name=f"c{k}")
    return run_pipeline(g.build([x]), GRAPH_PASSES)


def test_bias_correction_removes_the_mean_error_of_each_layer():
    """The corrected model's per-channel mean output error on unseen inputs is a fraction of
    the uncorrected one's; each corrected layer's bound and epilogue cover its new bias."""
    rng = np.random.default_rng(5)
    g = _three_convs(rng)
    cal, test = _batches(rng, (1, 4, 12, 12), 12), _batches(rng, (1, 4, 12, 12), 12)
    f = np.concatenate([reference.run(g, t)[g.outputs[0]] for t in test])

    def mean_error(qm):
        y = np.concatenate([qm.run(t)[g.outputs[0]] for t in test])
        return float(np.abs((y - f).mean(axis=(0, 2, 3))).mean()), float(np.sqrt(
            ((y - f) ** 2).mean()))

    plain = quantize(g, cal, bias_correction=False)
    fixed = quantize(g, cal)
    (m0, r0), (m1, r1) = mean_error(plain), mean_error(fixed)
    assert m1 < 0.5 * m0, (m0, m1)
    assert r1 < r0, (r0, r1)
    corrected = [name for name, lq in fixed.layers.items() if "bias_correction" in lq.notes]
    assert corrected, "no layer was corrected"
    for node in fixed.graph.nodes:
        if node.op != "qconv2d":
            continue
        lq = fixed.layers[node.name]
        bias = fixed.graph.constants[node.inputs[2]]
        np.testing.assert_array_equal(bias, lq.bq)
        want = np.abs(lq.wq.reshape(lq.wq.shape[0], -1).astype(np.int64)).sum(1) * 128 \
            + np.abs(lq.bq.astype(np.int64))
        np.testing.assert_array_equal(lq.bound, want)
        assert node.attrs["epilogue"].acc_bound == int(want.max())
        if node.name in corrected:
            np.testing.assert_array_equal(
                lq.bq, plain.layers[node.name].bq + lq.notes["bias_correction"])


def test_cpu_integer_ops_between_float_ops_stay_float():
    """|X|^2 = re^2 + im^2 -> sqrt -> conv (silero-vad's STFT magnitude): the add reads only
    float tensors, so it stays float (quantising a squared spectrum costs most of its
    precision); the convs after it are int8 (the residual add of two int8 tensors fused into
    the second)."""
    rng = np.random.default_rng(8)
    g = GraphBuilder()
    re, im = g.input("re", (1, 4, 8, 8)), g.input("im", (1, 4, 8, 8))
    mag = g.node("sqrt", [g.node("add", [g.node("mul", [re, re]), g.node("mul", [im, im])],
                                 name="power")])
    w = g.const("w", rng.standard_normal((4, 4, 1, 1)).astype(np.float32))
    c1 = g.node("conv2d", [mag, w], name="c1")
    c2 = g.node("conv2d", [c1, w], name="c2")
    y = g.node("add", [c1, c2], name="residual")
    graph = run_pipeline(g.build([y]), GRAPH_PASSES)
    cal = [{"re": rng.standard_normal((1, 4, 8, 8)).astype(np.float32),
            "im": rng.standard_normal((1, 4, 8, 8)).astype(np.float32)} for _ in range(4)]
    qm = quantize(graph, cal)
    ops = {n.name: n.op for n in qm.graph.nodes}
    assert ops["power"] == "add"
    assert ops["c1"] == "qconv2d" and ops["c2"] == "qconv2d"
    assert len(next(n for n in qm.graph.nodes if n.name == "c2").inputs) == 4
    assert not any(n.op == "quantize" and n.outputs[0].startswith(("mul", "add"))
                   for n in qm.graph.nodes)


def test_a_relu_behind_reshapes_sets_the_conv_output_range():
    """reshape -> conv2d -> reshape -> relu (a 1-D conv as ONNX importers write it): the conv's
    int8 output takes the ReLU output's parameters (no level spent on negatives), and the
    report compares it with the ReLU'd float value."""
    rng = np.random.default_rng(9)
    g = GraphBuilder()
    x = g.input("x", (1, 8, 32))
    h = g.node("reshape", [x], shape=(1, 8, 1, 32))
    w = rng.standard_normal((12, 8, 1, 3)).astype(np.float32) * 0.3
    c = g.node("conv2d", [h, g.const("w", w)], pads=(0, 1, 0, 1), name="conv")
    r = g.node("relu", [g.node("reshape", [c], shape=(1, 12, 32))], name="relu")
    w2 = rng.standard_normal((4, 12, 1, 1)).astype(np.float32)
    y = g.node("conv2d", [g.node("reshape", [r], shape=(1, 12, 1, 32)), g.const("w2", w2)],
               name="head")
    graph = run_pipeline(g.build([y]), GRAPH_PASSES)
    cal = [{"x": rng.standard_normal((1, 8, 32)).astype(np.float32)} for _ in range(6)]
    qm = quantize(graph, cal)
    conv = next(n for n in qm.graph.nodes if n.name == "conv")
    relu_t = next(n for n in graph.nodes if n.op == "relu").outputs[0]
    assert qm.qparams[conv.outputs[0]] == qm.qparams[qm.int_of[relu_t]]
    assert qm.qparams[conv.outputs[0]].zero_point == -128  # [0, hi] over 255 levels
    rep = qm.report(cal[0])
    layer = next(x for x in rep.layers if x.node == "conv")
    assert layer.sqnr_db > 30 and not layer.flagged, rep.table()


def test_a_depthwise_conv_reads_an_asymmetric_input_padded_on_the_cpu():
    """A padded depthwise conv after a ReLU: the ReLU output keeps its asymmetric range (zero
    point -128) and is padded explicitly with its zero point; a padded ordinary conv reading
    the same kind of tensor on the accelerator keeps it symmetric."""
    from tessera.compiler.quant.quantize import accel_predicate
    from tessera.config import Config
    rng = np.random.default_rng(10)
    g = GraphBuilder()
    x = g.input("x", (1, 8, 10, 10))
    a = g.node("conv2d", [x, g.const("w1", rng.standard_normal((8, 8, 1, 1)).astype(
        np.float32))], act="relu", name="c1")
    d = g.node("conv2d", [a, g.const("wd", rng.standard_normal((8, 1, 3, 3)).astype(
        np.float32))], pads=(1, 1, 1, 1), groups=8, act="relu", name="dw")
    y = g.node("conv2d", [d, g.const("w3", rng.standard_normal((8, 8, 3, 3)).astype(
        np.float32))], pads=(1, 1, 1, 1), name="c3")
    graph = run_pipeline(g.build([y]), GRAPH_PASSES)
    qm = quantize(graph, _batches(rng, (1, 8, 10, 10), 4),
                  accel=accel_predicate(Config.preset("default")))
    nodes = {n.name: n for n in qm.graph.nodes}
    assert qm.qparams[nodes["c1"].outputs[0]].zero_point == -128
    dw = nodes["dw"]
    assert dw.op == "qconv2d" and tuple(dw.attrs["pads"]) == (0, 0, 0, 0)
    pad = next(n for n in qm.graph.nodes if n.outputs[0] == dw.inputs[0])
    assert pad.op == "pad" and pad.attrs["value"] == -128.0
    assert qm.qparams[dw.outputs[0]].zero_point == 0  # read by a padded accelerator conv


def test_report_gives_the_error_budget_of_a_flagged_depthwise_conv():
    """A depthwise conv whose channel 0 reads a 100x smaller input through a 100x larger gain:
    the per-tensor input scale leaves that channel a fraction of a level, so the layer is
    flagged, its budget shows the input's quantisation as the smallest term (weights, output
    rounding and requantisation arithmetic are fine), and the dominant cause says why."""
    rng = np.random.default_rng(9)
    gb = GraphBuilder()
    x = gb.input("x", (1, 8, 10, 10))
    gain = np.ones((8, 1, 1, 1), np.float32)
    gain[0] = 100.0
    w = (rng.uniform(0.5, 1.0, (8, 1, 3, 3)) * gain).astype(np.float32)
    y = gb.node("conv2d", [x, gb.const("w", w)], groups=8, pads=(1, 1, 1, 1), name="dw")
    graph = gb.build([y])
    scale = np.ones((1, 8, 1, 1), np.float32)
    scale[0, 0] = 0.01
    cal = [{"x": (rng.standard_normal((1, 8, 10, 10)) * scale).astype(np.float32)}
           for _ in range(4)]
    qm = quantize(graph, cal, bias_correction=False)
    rep = qm.report({"x": (rng.standard_normal((1, 8, 10, 10)) * scale).astype(np.float32)})
    layer = next(r for r in rep.layers if r.node == "dw")
    assert layer.flagged, rep.table()
    budget = next(c for c in layer.causes if c.startswith("error budget"))
    terms = dict(t.rsplit(" ", 1) for t in budget.split(": ", 1)[1].split(", "))
    assert set(terms) == {"input", "weights", "output", "requantisation"}
    vals = {k: float(v) for k, v in terms.items()}
    assert min(vals, key=vals.get) == "input" and vals["input"] < layer.local_sqnr_db + 1
    assert vals["weights"] > 30 and vals["requantisation"] > 30
    assert any(c.startswith("input quantisation dominates: per-tensor input scale, channel "
                            "gains spread") and "depthwise" in c for c in layer.causes), \
        layer.causes


@pytest.mark.parametrize("symmetric", [True, False])
def test_a_tensor_with_few_calibration_values_is_not_clipped(symmetric):
    """A 2-class classifier's logits over 4 batches are 8 values: a clipping range chosen from
    them (mse/entropy/percentile) saturated every unseen input (PP-OCR cls: all logits at the
    clip bounds); below MIN_CLIPPING_SAMPLES values every method keeps the range seen."""
    from tessera.compiler.quant.calibrate import MIN_CLIPPING_SAMPLES
    rng = np.random.default_rng(10)
    few = TensorStats()
    few.add(np.array([-3.1, 2.9, -0.2, 0.4, 6.0, -5.5, 0.1, 1.0], np.float32), rng, 1 << 18)
    for m in ("percentile", "mse", "entropy"):
        assert qparams(few, m, symmetric) == qparams(few, "minmax", symmetric), m
    many = TensorStats()
    x = rng.standard_normal(4 * MIN_CLIPPING_SAMPLES).astype(np.float32)
    x[0] = 40.0
    many.add(x, rng, 1 << 18)
    assert qparams(many, "mse", symmetric).scale < qparams(many, "minmax", symmetric).scale


def test_per_channel_population_decides_minmax():
    """A [1, C] vector over 4 batches has 4 values per channel however many channels it has:
    below MIN_CHANNEL_SAMPLES per channel the range seen is kept; a feature map with the same
    channels and 16x16 positions gets a clipping range."""
    from tessera.compiler.quant.calibrate import MIN_CHANNEL_SAMPLES, MIN_CLIPPING_SAMPLES
    rng = np.random.default_rng(11)
    vec, fmap = TensorStats(), TensorStats()
    for _ in range(4):
        v = rng.standard_normal((1, MIN_CLIPPING_SAMPLES, 1, 1)).astype(np.float32)
        v[0, 0] = 30.0  # a rare large value: mse clips it when it may
        vec.add(v, rng, 1 << 18)
        fmap.add(np.tile(v, (1, 1, 16, 16)), rng, 1 << 18)
    assert vec.per_channel == 4 < MIN_CHANNEL_SAMPLES <= fmap.per_channel == 4 * 256
    assert qparams(vec, "mse") == qparams(vec, "minmax")
    assert qparams(fmap, "mse").scale < qparams(fmap, "minmax").scale


def test_keep_float_auto_keeps_layers_with_few_calibration_values_per_channel(monkeypatch):
    """trained_like_cnn's squeeze-excitation FCs, global pools and classifier see one value per
    channel per batch: with keep_float="auto" and 4 batches they stay float, over 32 (>=
    MIN_CHANNEL_SAMPLES) they are int8; by default everything stays int8."""
    from tessera.compiler import zoo
    from tessera.compiler.frontend import import_onnx
    qmod = importlib.import_module("tessera.compiler.quant.quantize")
    g = run_pipeline(import_onnx(zoo.trained_like_cnn(0)), GRAPH_PASSES)
    rng = np.random.default_rng(12)
    x = g.inputs[0]

    def batches(n):
        return [{x: rng.standard_normal(g.tensors[x].shape).astype(np.float32)}
                for _ in range(n)]

    few = batches(4)
    default = quantize(g, few)
    assert default.kept_low_population == ()
    assert any(n.op == "qdense" for n in default.graph.nodes)
    qm = quantize(g, few, keep_float="auto")
    kinds = {n.op for n in g.nodes if n.name in qm.kept_low_population}
    assert {"global_avgpool", "conv2d", "dense"} <= kinds, kinds
    assert not any(n.op in ("qdense", "qglobal_avgpool") for n in qm.graph.nodes)
    assert "few calibration values per channel" in qm.report(few[0]).table()
    assert quantize(g, batches(32), keep_float=["auto"]).kept_low_population == ()
    monkeypatch.setattr(qmod, "LOW_POPULATION_MAC_SHARE", 0.0)  # no MACs to spare: int8 FCs
    capped = quantize(g, few, keep_float="auto")
    assert {n.op for n in g.nodes if n.name in capped.kept_low_population} \
        .isdisjoint({"conv2d", "dense"})


def test_a_few_values_range_is_widened_by_the_held_out_batches():
    """Logits over 4 batches whose spread differs between batches: the range of any 3 misses
    the 4th by far, so the range is widened (the widened range quantises each held-out batch
    best); batches that agree keep their extremes."""
    from tessera.compiler.quant.calibrate import held_out_factor
    rng = np.random.default_rng(13)
    spread, same = TensorStats(), TensorStats()
    for k in range(4):
        spread.add(rng.standard_normal((1, 2)).astype(np.float32) * (1 + 2 * k), rng, 1 << 18)
        same.add(np.array([[-1.0, 1.0]], np.float32), rng, 1 << 18)
    f = held_out_factor(spread, True)
    assert f > 1.0
    assert qparams(spread, "mse", widen=True).scale == pytest.approx(f * spread.amax / 127)
    assert qparams(spread, "mse").scale == pytest.approx(spread.amax / 127)  # inside a network
    assert held_out_factor(same, True) == 1.0
    assert qparams(same, "mse", False) == qparams(same, "minmax", False)


def test_only_the_head_of_a_network_has_its_ranges_widened():
    """trained_like_cnn: its outputs, classifier and last pooled features are the head (no conv
    reads them); its squeeze-excitation vectors feed later convs through the gating multiply,
    so they are not, and their ranges are never widened."""
    from tessera.compiler import zoo
    from tessera.compiler.frontend import import_onnx
    qmod = importlib.import_module("tessera.compiler.quant.quantize")
    g = run_pipeline(import_onnx(zoo.trained_like_cnn(0)), GRAPH_PASSES)
    head = qmod._head_tensors(g)
    assert set(g.outputs) <= head
    assert not head & {n.inputs[0] for n in g.nodes if n.op == "conv2d"}
    pools = [n.outputs[0] for n in g.nodes if n.op == "global_avgpool"]
    assert len(pools) >= 2 and pools[-1] in head and not set(pools[:-1]) & head
    assert {n.inputs[0] for n in g.nodes if n.op == "dense"} <= head  # the classifier's
