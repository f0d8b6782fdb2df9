"""LSTM, GRU and RNN against onnxruntime: directions, initial states, peepholes, clip,
linear_before_reset, layout 1 and optional outputs (reference and compiled CPU kernels)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper
from onnx_check import check, make_model, run_ort

import tessera
from tessera.compiler import reference
from tessera.compiler.frontend import import_onnx

R = np.random.default_rng(3)
SEQ, BATCH, INP, HID = 5, 2, 4, 3
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def f32(*shape, scale=0.5):
    return (R.standard_normal(shape) * scale).astype(np.float32)


def _model(op, direction="forward", states=True, peep=False, layout=0, outputs=("y", "yh"),
           **attrs):
    nd = 2 if direction == "bidirectional" else 1
    g = GATES[op]
    x = f32(BATCH, SEQ, INP) if layout else f32(SEQ, BATCH, INP)
    inits = {"w": f32(nd, g * HID, INP), "r": f32(nd, g * HID, HID), "b": f32(nd, 2 * g * HID)}
    ins = ["x", "w", "r", "b", ""]
    if states:
        state = (BATCH, nd, HID) if layout else (nd, BATCH, HID)
        inits["h0"] = f32(*state)
        ins.append("h0")
        if op == "LSTM":
            inits["c0"] = f32(*state)
            ins.append("c0")
    if peep:
        inits["p"] = f32(nd, 3 * HID)
        ins += [""] * (7 - len(ins)) + ["p"]
    node = helper.make_node(op, ins, list(outputs), hidden_size=HID, direction=direction,
                            layout=layout, **attrs)
    return make_model([node], {"x": x}, [o for o in outputs if o], inits, opset=14), x


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_recurrent_directions(op, direction):
    outs = ("y", "yh", "yc") if op == "LSTM" else ("y", "yh")
    m, x = _model(op, direction, outputs=outs)
    check(m, {"x": x}, rtol=1e-4, atol=1e-5)


def test_lstm_peepholes_clip_no_states_only_last_output():
    m, x = _model("LSTM", "bidirectional", states=False, peep=True, outputs=("", "yh"),
                  clip=0.8)
    check(m, {"x": x}, rtol=1e-4, atol=1e-5)


def test_lstm_input_forget_and_activations():
    m, x = _model("LSTM", outputs=("y",), input_forget=1,
                  activations=["Sigmoid", "Relu", "Tanh"])
    check(m, {"x": x}, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("lbr", [0, 1])
def test_gru_linear_before_reset(lbr):
    m, x = _model("GRU", "bidirectional", linear_before_reset=lbr)
    check(m, {"x": x}, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_layout_batch_first(op):
    """onnxruntime does not run layout=1: compare with the same cell in layout 0 through
    onnxruntime, inputs and outputs transposed."""
    outs = ("y", "yh")
    m1, x1 = _model(op, "bidirectional", layout=1, outputs=outs)
    inits = {t.name: numpy_helper.to_array(t) for t in m1.graph.initializer}
    node0 = helper.make_node(op, list(m1.graph.node[0].input), list(outs), hidden_size=HID,
                             direction="bidirectional")
    for k in ("h0", "c0"):
        if k in inits:
            inits[k] = np.ascontiguousarray(inits[k].transpose(1, 0, 2))
    x0 = np.ascontiguousarray(x1.transpose(1, 0, 2))
    m0 = make_model([node0], {"x": x0}, list(outs), inits, opset=14)
    y0, yh0 = run_ort(m0, {"x": x0})
    want = [y0.transpose(2, 0, 1, 3), yh0.transpose(1, 0, 2)]
    graph = import_onnx(m1)
    ref = reference.run(graph, {"x": x1})
    got = tessera.compile(m1, precision="float").run({"x": x1})
    for w, r, g in zip(want, [ref[o] for o in graph.outputs], got):
        np.testing.assert_allclose(r, w, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def _quantised(w, per):
    """int8 [dirs, cols, 4h] weight of float ONNX weight [dirs, 4h, cols], its scale and zero
    point (per direction, or per direction and gate column). Seven-bit codes (onnxruntime's
    ``reduce_range``): on x86 hosts without AVX-512 VNNI its u8 x s8 kernels sum pairs of
    products in saturating int16 (``vpmaddubsw``), which only codes within +-64 keep exact."""
    wt = np.ascontiguousarray(w.transpose(0, 2, 1))
    axes = (1,) if per == "column" else (1, 2)
    scale = (np.abs(wt).max(axis=axes, keepdims=True) / 63).astype(np.float32)
    q = np.clip(np.round(wt / scale), -63, 63).astype(np.int8)
    shape = (wt.shape[0], wt.shape[2]) if per == "column" else (wt.shape[0],)
    return q, scale.reshape(shape), np.zeros(shape, np.int8)


@pytest.mark.parametrize("direction,per", [("bidirectional", "direction"),
                                           ("forward", "column")])
def test_dynamic_quantize_lstm_is_the_lstm_of_its_dequantised_weights(direction, per):
    nd = 2 if direction == "bidirectional" else 1
    x = f32(SEQ, BATCH, INP)
    w, r, b = f32(nd, 4 * HID, INP), f32(nd, 4 * HID, HID), f32(nd, 8 * HID)
    h0, c0 = f32(nd, BATCH, HID), f32(nd, BATCH, HID)
    qw, sw, zw = _quantised(w, per)
    qr, sr, zr = _quantised(r, per)
    inits = {"qw": qw, "qr": qr, "b": b, "h0": h0, "c0": c0, "sw": sw, "zw": zw, "sr": sr,
             "zr": zr}
    node = helper.make_node("DynamicQuantizeLSTM",
                            ["x", "qw", "qr", "b", "", "h0", "c0", "", "sw", "zw", "sr", "zr"],
                            ["y", "yh", "yc"], domain="com.microsoft", hidden_size=HID,
                            direction=direction)
    m = make_model([node], {"x": x}, ["y", "yh", "yc"], inits, opset=14)
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    got = tessera.compile(m, precision="float").run({"x": x})
    # exactly the float LSTM whose weights are the dequantised ones
    dq = {k: (q.astype(np.float32) * s.reshape(s.shape[0], 1, -1)).transpose(0, 2, 1)
          for k, q, s in (("w", qw, sw), ("r", qr, sr))}
    plain = helper.make_node("LSTM", ["x", "w", "r", "b", "", "h0", "c0"], ["y", "yh", "yc"],
                             hidden_size=HID, direction=direction)
    want = run_ort(make_model([plain], {"x": x}, ["y", "yh", "yc"],
                              {**dq, "b": b, "h0": h0, "c0": c0}, opset=14), {"x": x})
    for g, e in zip(got, want, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)
    # and onnxruntime's contrib kernel, which also rounds X and H to a dynamic uint8 grid
    for g, e in zip(got, run_ort(m, {"x": x}), strict=True):
        assert np.abs(g - e).max() <= 0.05 * np.abs(e).max()


def test_dynamic_quantize_lstm_rejects_runtime_weights_by_name():
    x = f32(SEQ, BATCH, INP)
    qr = np.zeros((1, HID, 4 * HID), np.int8)
    one, zero = np.ones(1, np.float32), np.zeros(1, np.int8)
    node = helper.make_node("DynamicQuantizeLSTM",
                            ["x", "qw", "qr", "", "", "", "", "", "s", "z", "s", "z"], ["y"],
                            domain="com.microsoft", hidden_size=HID, name="dq_lstm")
    m = make_model([node], {"x": x, "qw": np.zeros((1, INP, 4 * HID), np.int8)}, ["y"],
                   {"qr": qr, "s": one, "z": zero}, opset=14)
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(tessera.CompileError, match=r"dq_lstm.*W 'qw' must be a constant"):
        import_onnx(m)
