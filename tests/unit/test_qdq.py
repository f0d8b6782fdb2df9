"""Pre-quantised models run with their own scales: onnxruntime's quantize_static output (QDQ and
QOperator, int8 and uint8 activations), PyTorch-style Q/DQ pairs with per-axis weights, and the
integer ops, against onnxruntime's integer outputs."""

import os
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tessera.compiler import reference, zoo
from tessera.compiler.api import compile as tcompile
from tessera.compiler.quant.agreement import integer_agreement


class _Reader:
    def __init__(self, batches):
        self.it = iter(batches)

    def get_next(self):
        return next(self.it, None)


def _ort_quantized(m, batches, fmt, act="QInt8"):
    """onnxruntime's quantize_static of ``m``. With uint8 activations the weights get seven-bit
    codes (its ``reduce_range``): on x86 hosts without AVX-512 VNNI its u8 x s8 kernels sum
    pairs of products in saturating int16 (``vpmaddubsw``), which only codes within +-64 keep
    exact, so its output would not be the integers its graph describes."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    with tempfile.TemporaryDirectory() as d:
        fp, qp = os.path.join(d, "f.onnx"), os.path.join(d, "q.onnx")
        onnx.save(m, fp)
        quant_pre_process(fp, fp)
        quantize_static(fp, qp, _Reader(batches), quant_format=getattr(QuantFormat, fmt),
                        per_channel=True, activation_type=getattr(QuantType, act),
                        reduce_range=act == "QUInt8")
        return onnx.load(qp)


def _session(m):
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("fmt, act", [("QDQ", "QInt8"), ("QDQ", "QUInt8"),
                                      ("QOperator", "QInt8"), ("QOperator", "QUInt8")])
def test_onnxruntime_quantized_model_matches_its_integers(fmt, act):
    """small_cnn (conv, concat, avgpool, residual add, maxpool, reshape, gemm, softmax) as
    onnxruntime's quantize_static writes it: compiled with no calibration, every int8 layer
    re-run on onnxruntime's int8 inputs equals onnxruntime's output within one step (its
    requantisation is float32 with round-half-even, ours a 16-bit fixed-point multiplier with
    round-half-up), convolutions run on the accelerator, and fsim equals the reference."""
    rng = np.random.default_rng(0)
    m = zoo.small_cnn()
    shape = (1, 3, 27, 27)
    cal = [{"input": rng.standard_normal(shape).astype(np.float32)} for _ in range(4)]
    test = [{"input": rng.standard_normal(shape).astype(np.float32)} for _ in range(2)]
    qmodel = _ort_quantized(m, cal, fmt, act)
    model = tcompile(qmodel, config="default")
    assert model.meta["calibration"].startswith("none")
    agree = integer_agreement(qmodel, model.quantized, test)
    assert {"qconv2d", "qdense", "qadd", "qavgpool"} <= set(agree)
    for op, a in agree.items():
        assert a.max_diff <= 1, (op, a)
        if op in ("qconv2d", "qdense", "qadd"):
            assert a.fraction < 0.01, (op, a)
    assert sum(s.kind == "accel" for s in model.plan.steps) >= 5
    sess = _session(qmodel)
    for t in test:
        got = model.run(t)[0]
        np.testing.assert_allclose(got, reference.run(model.quantized.graph, t)["output"],
                                   rtol=1e-5, atol=1e-7)
        want = sess.run(None, t)[0]
        assert np.abs(got - want).max() < 0.05  # softmax probabilities, a few output steps


def _pytorch_style_qdq(rng):
    """Float weights quantised per output channel by a QuantizeLinear in the graph (the way
    PyTorch and TensorRT export), then Conv -> Relu -> Q/DQ -> Conv."""
    w1 = (rng.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((6, 8, 1, 1)) * 0.3).astype(np.float32)
    inits, nodes = [], []

    def const(v, name):
        inits.append(numpy_helper.from_array(np.asarray(v), name))
        return name

    def qdq(x, scale, zp, name, axis=None):
        kw = {} if axis is None else {"axis": axis}
        nodes.append(helper.make_node("QuantizeLinear", [x, const(scale, name + "_s"),
                                                        const(zp, name + "_z")], [name + "_q"],
                                      **kw))
        nodes.append(helper.make_node("DequantizeLinear", [name + "_q", name + "_s",
                                                          name + "_z"], [name], **kw))
        return name

    sw1 = (np.abs(w1).reshape(8, -1).max(1) / 127.5).astype(np.float32)  # PyTorch's symmetric
    sw2 = (np.abs(w2).reshape(6, -1).max(1) / 127.0).astype(np.float32)
    x = qdq("x", np.float32(0.03), np.int8(0), "xq")
    a = qdq(const(w1, "w1"), sw1, np.zeros(8, np.int8), "w1q", axis=0)
    nodes.append(helper.make_node("Conv", [x, a], ["c1"], pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Relu", ["c1"], ["r1"]))
    r = qdq("r1", np.float32(0.02), np.int8(-128), "r1q")
    b = qdq(const(w2, "w2"), sw2, np.zeros(6, np.int8), "w2q", axis=0)
    nodes.append(helper.make_node("Conv", [r, b], ["c2"]))
    y = qdq("c2", np.float32(0.025), np.int8(3), "yq")
    nodes.append(helper.make_node("Identity", [y], ["y"]))
    g = helper.make_graph(nodes, "torchqdq",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 9, 9])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 9, 9])],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m, (w1, sw1), (w2, sw2)


def test_pytorch_style_qdq_keeps_the_models_integer_weights():
    rng = np.random.default_rng(1)
    m, (w1, sw1), (w2, sw2) = _pytorch_style_qdq(rng)
    model = tcompile(m, config="default")
    qm = model.quantized
    layers = list(qm.layers.values())
    assert len(layers) == 2
    for lq, (w, s) in zip(layers, ((w1, sw1), (w2, sw2))):
        want = np.clip(np.rint(w / s.reshape(-1, 1, 1, 1)), -128, 127).astype(np.int8)
        np.testing.assert_array_equal(lq.wq, want)  # the model's integers, not re-derived
        np.testing.assert_allclose(lq.w_scale, s, rtol=1e-6)
    agree = integer_agreement(m, qm, [{"x": rng.standard_normal((1, 3, 9, 9)).astype(
        np.float32)} for _ in range(2)])
    assert agree["qconv2d"].max_diff <= 1 and agree["qconv2d"].fraction < 0.02
    assert all(s.kind == "accel" for s in model.plan.steps if s.info.get("op") == "qconv2d")


def _single(op, inputs, outputs, inits, domain="", **attrs):
    g = helper.make_graph([helper.make_node(op, [i[0] for i in inputs] + list(inits),
                                            [o[0] for o in outputs], domain=domain, **attrs)],
                          op, [helper.make_tensor_value_info(*i) for i in inputs],
                          [helper.make_tensor_value_info(*o) for o in outputs],
                          initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    m = helper.make_model(g, opset_imports=opsets)
    m.ir_version = 8
    return m


def test_uint8_qlinearconv_node_equals_onnxruntime():
    rng = np.random.default_rng(2)
    inits = {"xs": np.float32(0.02), "xz": np.uint8(120),
             "w": rng.integers(0, 256, (5, 4, 3, 3)).astype(np.uint8),
             "ws": np.float32(0.01), "wz": np.uint8(128), "ys": np.float32(0.05),
             "yz": np.uint8(100), "b": rng.integers(-500, 500, 5).astype(np.int32)}
    order = ["xs", "xz", "w", "ws", "wz", "ys", "yz", "b"]
    m = _single("QLinearConv", [("x", TensorProto.UINT8, [1, 4, 7, 7])],
                [("y", TensorProto.UINT8, [1, 5, 4, 4])], {k: inits[k] for k in order},
                pads=[1, 1, 1, 1], strides=[2, 2])
    x = rng.integers(0, 256, (1, 4, 7, 7)).astype(np.uint8)
    want = _session(m).run(None, {"x": x})[0]
    model = tcompile(m, config="default")
    got = model.run({"x": x})[0]
    assert got.dtype == np.uint8
    d = np.abs(got.astype(int) - want.astype(int))
    assert d.max() <= 1 and (d > 0).mean() < 0.05


@pytest.mark.parametrize("op", ["ConvInteger", "MatMulInteger"])
def test_integer_ops_equal_onnxruntime(op):
    rng = np.random.default_rng(3)
    if op == "ConvInteger":
        inits = {"w": rng.integers(-128, 128, (6, 3, 3, 3)).astype(np.int8),
                 "xz": np.uint8(131), "wz": np.int8(0)}
        m = _single(op, [("x", TensorProto.UINT8, [1, 3, 8, 8])],
                    [("y", TensorProto.INT32, [1, 6, 8, 8])], inits, pads=[1, 1, 1, 1])
        feed = {"x": rng.integers(0, 256, (1, 3, 8, 8)).astype(np.uint8)}
    else:
        inits = {"b": rng.integers(0, 256, (12, 7)).astype(np.uint8), "az": np.uint8(7),
                 "bz": np.uint8(128)}
        m = _single(op, [("a", TensorProto.UINT8, [3, 12])], [("y", TensorProto.INT32, [3, 7])],
                    inits)
        feed = {"a": rng.integers(0, 256, (3, 12)).astype(np.uint8)}
    want = _session(m).run(None, feed)[0]
    got = tcompile(m, config="default").run(feed)[0]
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)


def test_dynamically_quantised_model_runs_statically_on_the_accelerator():
    """onnxruntime's quantize_dynamic output (DynamicQuantizeLinear -> ConvInteger -> Cast ->
    Mul): the dynamic input quantisation is replaced by calibrated static int8 (an accelerator
    conv with the model's integer weights); the error against float stays close to
    onnxruntime's dynamic one."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    rng = np.random.default_rng(4)
    w = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    m = _single("Conv", [("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                [("y", TensorProto.FLOAT, [1, 6, 8, 8])], {"w": w}, pads=[1, 1, 1, 1])
    with tempfile.TemporaryDirectory() as d:
        fp, qp = os.path.join(d, "f.onnx"), os.path.join(d, "q.onnx")
        onnx.save(m, fp)
        quantize_dynamic(fp, qp, weight_type=QuantType.QUInt8, op_types_to_quantize=["Conv"])
        qmodel = onnx.load(qp)
    assert "DynamicQuantizeLinear" in [n.op_type for n in qmodel.graph.node]
    cal = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(16)]
    model = tcompile(qmodel, config="default", calibration=cal)
    assert [s.info.get("op") for s in model.plan.steps if s.kind == "accel"] == ["qconv2d"]
    test = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(8)]
    f = np.concatenate([_session(m).run(None, x)[0] for x in test])
    den = np.linalg.norm(f - f.mean(axis=0))
    ours = np.linalg.norm(np.concatenate([model.run(x)[0] for x in test]) - f) / den
    theirs = np.linalg.norm(np.concatenate([_session(qmodel).run(None, x)[0] for x in test])
                            - f) / den
    print(f"relative error: static {ours:.4f}, onnxruntime dynamic {theirs:.4f}")
    assert ours < 4 * theirs  # static int8 against per-input scales


def _dql_model(shape, matmul=None):
    """DynamicQuantizeLinear with its three outputs as graph outputs; with ``matmul`` (a uint8
    B), also a MatMulInteger of its codes and run-time zero point."""
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])]
    outs = [helper.make_tensor_value_info("y", TensorProto.UINT8, list(shape)),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("z", TensorProto.UINT8, [])]
    inits = []
    if matmul is not None:
        inits = [numpy_helper.from_array(matmul, "b"), numpy_helper.from_array(np.uint8(3), "bz")]
        nodes.append(helper.make_node("MatMulInteger", ["y", "b", "z", "bz"], ["p"]))
        outs.append(helper.make_tensor_value_info("p", TensorProto.INT32,
                                                  [shape[0], matmul.shape[1]]))
    g = helper.make_graph(nodes, "dql", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                       list(shape))],
                          outs, initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _dql_inputs(rng, shape):
    n = int(np.prod(shape))
    ties = np.resize(np.array([0.0, 255.0, 0.5, 1.5, 2.5, 3.5, 254.5], np.float32), n)
    return [rng.standard_normal(shape).astype(np.float32) * 3,
            rng.uniform(0.1, 7.0, shape).astype(np.float32),  # all positive: zero point 0
            -rng.uniform(0.1, 7.0, shape).astype(np.float32),  # all negative: 255
            np.zeros(shape, np.float32),  # no range: scale 1 (onnxruntime's rule)
            ties.reshape(shape),  # scale exactly 1: x / scale on the .5 ties (half to even)
            (rng.standard_normal(shape) * 1e-3 + 2e-3).astype(np.float32)]


@pytest.mark.parametrize("precision", ["float", "int8"])
def test_dynamic_quantize_linear_outputs_equal_onnxruntime(precision):
    """DynamicQuantizeLinear whose codes, scale and zero point are graph outputs: computed at
    run time (no input bound at compile time), bit for bit onnxruntime's on every input, in a
    float model and in a calibrated int8 one (where nothing of it may be quantised)."""
    rng = np.random.default_rng(7)
    shape = (3, 5, 4)
    m = _dql_model(shape)
    cal = None if precision == "float" else [
        {"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(2)]
    model = tcompile(m, config="default", precision=precision, calibration=cal)
    assert [i for i in model.input_specs] == ["x"]
    sess = _session(m)
    for x in _dql_inputs(rng, shape):
        want = sess.run(None, {"x": x})
        got = model.run({"x": x})
        assert [g.dtype for g in got] == [np.uint8, np.float32, np.uint8]
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)


def test_dynamic_quantize_linear_codes_read_by_matmulinteger_too_are_refused_by_name():
    """Codes that are a graph output and also MatMulInteger's operand: the product would need
    the run-time zero point, which the integer ops do not take; the error names the node."""
    from tessera.compiler.frontend.context import ImportProblems
    m = _dql_model((4, 6), matmul=np.zeros((6, 5), np.uint8))
    with pytest.raises(ImportProblems, match="MatMulInteger.*zero point 'z' is computed at "
                                             "run time"):
        tcompile(m, config="default")
