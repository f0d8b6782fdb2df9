"""Reference semantics: LSTM, GRU and RNN (see :mod:`tessera.compiler.ir.ops_rnn`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tessera.compiler.ir import Node
from tessera.compiler.ir.ops_rnn import DEFAULT_ACTIVATIONS, RNN_GATES

__all__ = ["KERNELS"]

_ACT: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
    "tanh": np.tanh,
    "relu": lambda v: np.maximum(v, 0),
}


def _recurrent(n: Node, x: np.ndarray, w: np.ndarray, r: np.ndarray, b: np.ndarray,
               h0: np.ndarray, c0: np.ndarray | None = None,
               p: np.ndarray | None = None) -> list[np.ndarray]:
    a = n.attrs
    op = n.op
    hs = int(a["hidden_size"])
    nd = 2 if a["direction"] == "bidirectional" else 1
    per = len(DEFAULT_ACTIVATIONS[op])
    acts = tuple(a["activations"]) or DEFAULT_ACTIVATIONS[op] * nd
    clip = float(a["clip"])
    g = RNN_GATES[op]
    seq = x.shape[0]
    x64 = x.astype(np.float64)
    y = np.zeros((seq, nd) + h0.shape[1:], np.float64)
    hs_out, cs_out = [], []
    for d in range(nd):
        f = [_ACT[name] for name in acts[d * per:(d + 1) * per]]

        def act(k: int, v: np.ndarray) -> np.ndarray:
            # clip bounds gate inputs, not LSTM's h(c_t) (onnxruntime)
            clipped = clip > 0 and not (op == "lstm" and k == 2)
            return f[k](np.clip(v, -clip, clip) if clipped else v)  # noqa: B023

        wd, rd = w[d].astype(np.float64), r[d].astype(np.float64)
        wb, rb = b[d, :g * hs].astype(np.float64), b[d, g * hs:].astype(np.float64)
        h = h0[d].astype(np.float64)
        c = c0[d].astype(np.float64) if c0 is not None else None
        order = range(seq - 1, -1, -1) if (a["direction"] == "reverse" or d == 1) \
            else range(seq)
        for t in order:
            gx = x64[t] @ wd.T + wb
            if op == "lstm":
                pi, po, pf = (p[d].astype(np.float64).reshape(3, hs) if p is not None
                              else np.zeros((3, hs)))
                gates = gx + h @ rd.T + rb
                gi, go, gf, gc = np.split(gates, 4, axis=-1)
                i = act(0, gi + pi * c)
                fg = 1 - i if a["input_forget"] else act(0, gf + pf * c)
                c = fg * c + i * act(1, gc)
                o = act(0, go + po * c)
                h = o * act(2, c)
            elif op == "gru":
                gz, gr, gh = np.split(gx, 3, axis=-1)
                rz, rr, rh = np.split(rd, 3, axis=0)
                bz, br, bh = np.split(rb, 3)
                z = act(0, gz + h @ rz.T + bz)
                rt = act(0, gr + h @ rr.T + br)
                if a["linear_before_reset"]:
                    cand = act(1, gh + rt * (h @ rh.T + bh))
                else:
                    cand = act(1, gh + (rt * h) @ rh.T + bh)
                h = (1 - z) * cand + z * h
            else:
                h = act(0, gx + h @ rd.T + rb)
            y[t, d] = h
        hs_out.append(h)
        if c is not None:
            cs_out.append(c)
    outs = [y.astype(np.float32), np.stack(hs_out).astype(np.float32)]
    if op == "lstm":
        outs.append(np.stack(cs_out).astype(np.float32))
    return outs


KERNELS: dict[str, Callable[..., list[np.ndarray]]] = {
    "lstm": _recurrent, "gru": _recurrent, "rnn": _recurrent,
}
