"""IR ops: recurrent layers (ONNX LSTM, GRU, RNN; layout 0, no sequence_lens).

Every input is present (the frontend materialises ONNX's optional ones as zero constants):

- ``lstm(X [S,B,I], W [D,4H,I], R [D,4H,H], B [D,8H], h0 [D,B,H], c0 [D,B,H], P [D,3H])
  -> Y [S,D,B,H], Y_h [D,B,H], Y_c [D,B,H]``, gates in ONNX order i, o, f, c;
- ``gru(X, W [D,3H,I], R [D,3H,H], B [D,6H], h0) -> Y, Y_h``, gates z, r, h;
- ``rnn(X, W [D,H,I], R [D,H,H], B [D,2H], h0) -> Y, Y_h``.

``direction`` is forward, reverse or bidirectional (D = 2); ``activations`` lists the gate
functions per direction (ONNX defaults when empty); ``clip`` > 0 clips the gate inputs to
[-clip, clip] (0: no clipping; LSTM's h(c_t) is never clipped, as in onnxruntime). Semantics:
:mod:`tessera.compiler.refops.rnn`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tessera.compiler.ir.ops import define, need_inputs, op_error
from tessera.compiler.ir.tensor import TensorInfo

if TYPE_CHECKING:
    from tessera.compiler.ir.graph import Graph, Node

__all__ = ["RNN_GATES", "RNN_ACTIVATIONS", "DEFAULT_ACTIVATIONS", "DIRECTIONS"]

RNN_GATES = {"lstm": 4, "gru": 3, "rnn": 1}
RNN_ACTIVATIONS = ("sigmoid", "tanh", "relu")
DEFAULT_ACTIVATIONS = {"lstm": ("sigmoid", "tanh", "tanh"), "gru": ("sigmoid", "tanh"),
                       "rnn": ("tanh",)}
DIRECTIONS = ("forward", "reverse", "bidirectional")


def _recurrent(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    op = node.op
    n_in = 7 if op == "lstm" else 5
    need_inputs(node, ins, *range(n_in))
    a = node.attrs
    h = int(a["hidden_size"])
    if a["direction"] not in DIRECTIONS:
        raise op_error(node, f"direction must be one of {DIRECTIONS}, not {a['direction']!r}")
    d = 2 if a["direction"] == "bidirectional" else 1
    acts = tuple(a["activations"]) or DEFAULT_ACTIVATIONS[op] * d
    if len(acts) != len(DEFAULT_ACTIVATIONS[op]) * d or any(f not in RNN_ACTIVATIONS
                                                             for f in acts):
        raise op_error(node, f"activations must be {len(DEFAULT_ACTIVATIONS[op]) * d} of "
                             f"{RNN_ACTIVATIONS}, not {acts}")
    x = ins[0].shape
    if len(x) != 3:
        raise op_error(node, f"X must be [seq, batch, input], not {x}")
    s, b, i = x
    gates = RNN_GATES[op]
    want = [(s, b, i), (d, gates * h, i), (d, gates * h, h), (d, 2 * gates * h), (d, b, h)]
    if op == "lstm":
        want += [(d, b, h), (d, 3 * h)]
    for k, shape in enumerate(want):
        if ins[k].shape != shape:
            raise op_error(node, f"input {k} must have shape {shape}, not {ins[k].shape}")
        if ins[k].dtype != "float32":
            raise op_error(node, f"input {k} must be float32, not {ins[k].dtype}")
    outs = [TensorInfo((s, d, b, h)), TensorInfo((d, b, h))]
    if op == "lstm":
        outs.append(TensorInfo((d, b, h)))
    return outs


_COMMON = dict(hidden_size=1, direction="forward", activations=(), clip=0.0)
define("lstm", "ONNX LSTM (see the module docstring)", input_forget=False, **_COMMON)(
    _recurrent)
define("gru", "ONNX GRU (see the module docstring)", linear_before_reset=False, **_COMMON)(
    _recurrent)
define("rnn", "ONNX RNN (see the module docstring)", **_COMMON)(_recurrent)
