"""ONNX converters: LSTM, GRU, RNN.

Absent optional inputs (B, initial_h, initial_c, P) become zero constants; ``sequence_lens`` must
be absent or a constant equal to the sequence length everywhere; ``layout=1`` (batch first) is
transposed to and from the IR's sequence-first layout. Activations Sigmoid, Tanh and Relu are
supported (the ONNX defaults are Sigmoid/Tanh).

``com.microsoft`` DynamicQuantizeLSTM (onnxruntime's dynamically quantised LSTM, as its
``quantize_dynamic`` writes it) is the LSTM with int8/uint8 weights ``W`` [dirs, input, 4*hidden]
and ``R`` [dirs, hidden, 4*hidden] and their scales and zero points (per tensor, per direction or
per direction and gate column): the weights are dequantised at import (``(w - zp) * scale``,
exact in float32) and transposed to ONNX's [dirs, 4*hidden, input] layout, then it is the float
LSTM. onnxruntime also quantises X and H dynamically (a per-batch uint8 grid) before each
product; that rounding is not reproduced (as for DynamicQuantizeLinear: the float values are
used), so results differ from onnxruntime's by about that rounding.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from tessera.compiler.frontend.common import opt_input
from tessera.compiler.frontend.context import Ctx, Unsupported, attrs_of, decode
from tessera.compiler.frontend.registry import converter
from tessera.compiler.ir.ops_rnn import DEFAULT_ACTIVATIONS, RNN_GATES

__all__: list[str] = []

_ACTS = {"sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu"}


@converter("LSTM", "GRU", "RNN")
def _recurrent(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    op = n.op_type.lower()
    lstm = op == "lstm"
    x, w, r = n.input[0], n.input[1], n.input[2]
    layout = int(a.get("layout", 0))
    if layout not in (0, 1):
        raise Unsupported(f"layout must be 0 or 1, not {layout}")
    if ctx.rank(x) != 3:
        raise Unsupported(f"X must be 3-D, not {ctx.shape(x)}")
    if layout:
        x = ctx.emit("transpose", [x], ctx.tmp(x), perm=(1, 0, 2))
    seq, batch, _ = ctx.shape(x)
    direction = decode(a.get("direction", "forward"))
    nd = 2 if direction == "bidirectional" else 1
    hs = int(a["hidden_size"]) if "hidden_size" in a else ctx.shape(r)[-1]
    gates = RNN_GATES[op]
    for name in ("activation_alpha", "activation_beta"):
        if name in a:
            raise Unsupported(f"{name} is not supported (only parameter-free activations)")
    acts = [decode(v).lower() for v in a.get("activations", [])]
    if any(f not in _ACTS for f in acts):
        raise Unsupported(f"activations {acts} are not supported (Sigmoid, Tanh, Relu)")
    if acts and len(acts) == len(DEFAULT_ACTIVATIONS[op]) and nd == 2:
        acts = acts * 2  # one list for both directions
    lens = opt_input(n, 4)
    if lens:
        v = ctx.const(lens, "sequence_lens")
        if v.shape != (batch,) or np.any(v != seq):
            raise Unsupported(f"sequence_lens must equal the sequence length {seq} for every "
                              f"batch element (variable lengths are not supported)")

    def zeros_or(k: int, shape: tuple[int, ...], batch_first: bool = False) -> str:
        name = opt_input(n, k)
        if not name:
            return ctx.add_const(ctx.tmp(f"{n.output[0] or op}:zero"),
                                 np.zeros(shape, np.float32))
        if batch_first and layout:
            return ctx.emit("transpose", [name], ctx.tmp(name), perm=(1, 0, 2))
        return name

    inputs = [x, w, r, zeros_or(3, (nd, 2 * gates * hs)),
              zeros_or(5, (nd, batch, hs), batch_first=True)]
    if lstm:
        inputs += [zeros_or(6, (nd, batch, hs), batch_first=True), zeros_or(7, (nd, 3 * hs))]
    n_out = 3 if lstm else 2
    want = list(n.output) + [""] * (n_out - len(n.output))
    outs = [o if (o and not layout) else ctx.tmp(o or f"{op}:out{k}")
            for k, o in enumerate(want)]
    attrs = dict(hidden_size=hs, direction=direction, activations=tuple(acts),
                 clip=float(a.get("clip", 0.0)))
    if lstm:
        attrs["input_forget"] = bool(a.get("input_forget", 0))
    if op == "gru":
        attrs["linear_before_reset"] = bool(a.get("linear_before_reset", 0))
    ctx.emit(op, inputs, outs, **attrs)
    if layout:
        for k, (o, tmp) in enumerate(zip(want, outs)):
            if o:
                perm = (2, 0, 1, 3) if k == 0 else (1, 0, 2)
                ctx.emit("transpose", [tmp], o, perm=perm)


def _dequantised_weight(ctx: Ctx, n: onnx.NodeProto, k: int, ks: int, what: str) -> str:
    """Float constant [dirs, 4*hidden, cols] of the quantised [dirs, cols, 4*hidden] weight at
    input ``k`` (scale at input ``ks``, zero point at ``ks + 1``)."""
    name = n.input[k]
    w = ctx.const(name, what)
    if str(w.dtype) not in ("int8", "uint8") or w.ndim != 3:
        raise Unsupported(f"{what} {name!r} must be a 3-D int8 or uint8 constant, not "
                          f"{w.dtype}{list(w.shape)}")
    dirs, _, cols4 = w.shape
    scale = np.asarray(ctx.const(opt_input(n, ks), f"{what} scale"), np.float64)
    zp_name = opt_input(n, ks + 1)
    zp = (np.asarray(ctx.const(zp_name, f"{what} zero point"), np.float64) if zp_name
          else np.zeros_like(scale))
    per = {(): (1, 1, 1), (1,): (1, 1, 1), (dirs,): (dirs, 1, 1), (dirs, cols4): (dirs, 1, cols4)}
    for v, label in ((scale, "scale"), (zp, "zero point")):
        if v.shape not in per:
            raise Unsupported(f"{what} {label} must have shape [], [{dirs}] or [{dirs}, "
                              f"{cols4}], not {list(v.shape)}")
    if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        raise Unsupported(f"{what} scale must be positive and finite, not "
                          f"{scale.ravel()[:4].tolist()}")
    real = (w.astype(np.float64) - zp.reshape(per[zp.shape])) * scale.reshape(per[scale.shape])
    return ctx.add_const(ctx.tmp(f"{name}:dq"),
                         np.ascontiguousarray(real.transpose(0, 2, 1)).astype(np.float32))


@converter("DynamicQuantizeLSTM", domain="com.microsoft")
def _dynamic_quantize_lstm(ctx: Ctx, n: onnx.NodeProto, a: dict) -> None:
    if len(n.input) < 11:
        raise Unsupported(f"DynamicQuantizeLSTM needs at least 11 inputs (X, W, R, B, "
                          f"sequence_lens, initial_h, initial_c, P, W_scale, W_zero_point, "
                          f"R_scale[, R_zero_point]), not {len(n.input)}")
    w = _dequantised_weight(ctx, n, 1, 8, "W")
    r = _dequantised_weight(ctx, n, 2, 10, "R")
    ins = [n.input[0], w, r] + [opt_input(n, k) for k in range(3, 8)]
    while ins and not ins[-1]:
        ins.pop()
    lstm = helper.make_node("LSTM", ins, list(n.output), name=n.name)
    lstm.attribute.extend(n.attribute)
    _recurrent(ctx, lstm, attrs_of(lstm))
