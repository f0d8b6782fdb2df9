"""Recurrent CPU kernels: ONNX LSTM, GRU and RNN (layout 0, every input present, no
sequence_lens), float32.

Inputs ``X [S, B, I], W [D, G*H, I], R [D, G*H, H], Bias [D, 2*G*H], h0 [D, B, H]`` and, for
LSTM, ``c0 [D, B, H], P [D, 3H]`` (peepholes i, o, f); outputs ``Y [S, D, B, H], Y_h [D, B, H]``
and, for LSTM, ``Y_c``. G is 4 (LSTM gates i, o, f, c), 3 (GRU z, r, h) or 1 (RNN). Attributes:
``hidden_size``, ``direction`` (forward, reverse, bidirectional: D = 2, the second direction
runs backwards), ``activations`` (per direction: LSTM f, g, h; GRU f, g; RNN f; each one of
Sigmoid, Tanh, Relu), ``clip`` (> 0: gate inputs clipped to [-clip, clip]; LSTM's cell
output activation h(c_t) is not clipped, as in onnxruntime),
``input_forget`` (LSTM: f = 1 - i) and ``linear_before_reset`` (GRU). Products accumulate in
float32; sigmoid and tanh are the builder's float32 approximations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from llvmlite import ir

from tessera.runtime.cpu.builder import (
    F32,
    FAST,
    KernelBuilder,
    Spec,
    check,
    check_attrs,
    check_dtype,
    check_inputs,
    fail,
    float_attr,
    int_attr,
)

__all__ = ["GENERATORS", "GATES", "DEFAULTS"]

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
DEFAULTS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}
_ACTS = ("Sigmoid", "Tanh", "Relu")


def _activation(kb: KernelBuilder, name: str, clip: float) -> Callable[[ir.Value], ir.Value]:
    def f(v: ir.Value) -> ir.Value:
        if clip > 0:
            v = kb.fmin(kb.fmax(v, kb.fconst(-clip)), kb.fconst(clip))
        if name == "Sigmoid":
            return kb.sigmoid(v)
        if name == "Tanh":
            return kb.tanh(v)
        return kb.fmax(v, kb.fconst(0.0))
    return f


def _recurrent(op: str, attrs: dict[str, Any],
               in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_attrs(op, attrs, ("hidden_size", "direction", "activations", "clip", "input_forget",
                            "linear_before_reset"))
    lstm = op == "LSTM"
    n_in = 7 if lstm else 5
    check_inputs(op, in_specs, (n_in,))
    for k, spec in enumerate(in_specs):
        check_dtype(op, f"input {k}", spec, ("float32",))
    hs = int_attr(op, attrs, "hidden_size")
    direction = attrs.get("direction", "forward")
    check(direction in ("forward", "reverse", "bidirectional"), op,
          f"direction must be forward, reverse or bidirectional, not {direction!r}")
    nd = 2 if direction == "bidirectional" else 1
    acts = attrs.get("activations") or list(DEFAULTS[op]) * nd
    if not isinstance(acts, list) or len(acts) != len(DEFAULTS[op]) * nd or any(
            a not in _ACTS for a in acts):
        raise fail(op, f"activations must be {len(DEFAULTS[op]) * nd} of {', '.join(_ACTS)}, "
                       f"not {acts!r}")
    clip = float_attr(op, attrs, "clip", 0.0)
    check(clip >= 0, op, f"clip must be >= 0, not {clip}")
    input_forget = int_attr(op, attrs, "input_forget", 0)
    lbr = int_attr(op, attrs, "linear_before_reset", 0)
    check(input_forget in (0, 1) and lbr in (0, 1), op,
          "input_forget and linear_before_reset must be 0 or 1")
    xs = in_specs[0][0]
    check(len(xs) == 3, op, f"X must be [seq, batch, input], not {xs}")
    s, bt, ni = xs
    g = GATES[op]
    want = [(s, bt, ni), (nd, g * hs, ni), (nd, g * hs, hs), (nd, 2 * g * hs), (nd, bt, hs)]
    if lstm:
        want += [(nd, bt, hs), (nd, 3 * hs)]
    for k, shape in enumerate(want):
        check(in_specs[k][0] == shape, op, f"input {k} must have shape {shape}, not "
                                           f"{in_specs[k][0]}")
    outs: list[Spec] = [((s, nd, bt, hs), np.dtype("float32")), ((nd, bt, hs),
                                                                 np.dtype("float32"))]
    if lstm:
        outs.append(((nd, bt, hs), np.dtype("float32")))
    kb = KernelBuilder(f"tsr_{op.lower()}", n_in, len(outs))
    b = kb.b
    x, w, r, bias, h0 = kb.ins[:5]
    y, yh = kb.outs[0], kb.outs[1]
    gates = kb.alloca(F32, g * hs)
    rh = kb.alloca(F32, hs)  # GRU: r * h (linear_before_reset=0) or R_h h + Rb_h (=1)
    acc = kb.alloca(F32, 1)
    one = kb.fconst(1.0)
    if s * bt * hs == 0:
        return kb.finish(), kb.name, outs
    for d in range(nd):
        # clip bounds the gate inputs; LSTM's h(c_t) is not clipped (onnxruntime)
        fns = [_activation(kb, a, 0.0 if (lstm and k == 2) else clip) for k, a in enumerate(
            acts[d * len(DEFAULTS[op]):(d + 1) * len(DEFAULTS[op])])]
        backwards = direction == "reverse" or d == 1
        kb.memcpy(kb.ptr(yh, F32, d * bt * hs), kb.ptr(h0, F32, d * bt * hs), bt * hs * 4)
        if lstm:
            yc = kb.outs[2]
            kb.memcpy(kb.ptr(yc, F32, d * bt * hs), kb.ptr(kb.ins[5], F32, d * bt * hs),
                      bt * hs * 4)
        wd, rd = d * g * hs * ni, d * g * hs * hs
        bd = d * 2 * g * hs
        with kb.loop(0, s, name=f"t{d}") as step, kb.loop(0, bt, name=f"b{d}") as bi:
            t = b.sub(kb.i64(s - 1), step) if backwards else step
            xrow = kb.index([(t, bt * ni), (bi, ni)])
            hrow = kb.index([(bi, hs)], base=d * bt * hs)

            def matvec(j: ir.Value, mat: ir.Value, base: int, cols: int, vec: ir.Value,
                       vbase: ir.Value) -> ir.Value:
                b.store(kb.fconst(0.0), acc)
                row = kb.index([(j, cols)], base=base)
                with kb.loop(0, cols, name="k") as k:
                    prod = b.fmul(kb.load(mat, F32, b.add(row, k, flags=("nsw",))),
                                  kb.load(vec, F32, b.add(vbase, k, flags=("nsw",))))
                    b.store(b.fadd(b.load(acc, typ=F32), prod, flags=FAST), acc)
                return b.load(acc, typ=F32)

            # gate pre-activations; GRU's h gate gets its recurrent part below
            n_full = 2 * hs if op == "GRU" else g * hs
            with kb.loop(0, g * hs, name="j") as j:
                v = b.fadd(matvec(j, w, wd, ni, x, xrow), kb.load(bias, F32, kb.index(
                    [(j, 1)], base=bd)))
                with kb.if_then(b.icmp_signed("<", j, kb.i64(n_full))):
                    rec = b.fadd(matvec(j, r, rd, hs, yh, hrow),
                                 kb.load(bias, F32, kb.index([(j, 1)], base=bd + g * hs)))
                    kb.store(b.fadd(v, rec), gates, F32, j)
                with kb.if_then(b.icmp_signed(">=", j, kb.i64(n_full))):
                    kb.store(v, gates, F32, j)
            if op == "GRU":
                with kb.loop(0, hs, name="rh") as k:
                    hk = kb.load(yh, F32, b.add(hrow, k, flags=("nsw",)))
                    rt = fns[0](kb.load(gates, F32, b.add(k, kb.i64(hs), flags=("nsw",))))
                    if lbr:
                        jh = b.add(k, kb.i64(2 * hs), flags=("nsw",))
                        rec = b.fadd(matvec(jh, r, rd, hs, yh, hrow), kb.load(
                            bias, F32, kb.index([(k, 1)], base=bd + 5 * hs)))
                        kb.store(b.fmul(rt, rec), rh, F32, k)
                    else:
                        kb.store(b.fmul(rt, hk), rh, F32, k)
                if not lbr:
                    with kb.loop(0, hs, name="hr") as k:
                        jh = b.add(k, kb.i64(2 * hs), flags=("nsw",))
                        rec = b.fadd(matvec(jh, r, rd, hs, rh, kb.i64(0)), kb.load(
                            bias, F32, kb.index([(k, 1)], base=bd + 5 * hs)))
                        gi = b.add(k, kb.i64(2 * hs), flags=("nsw",))
                        kb.store(b.fadd(kb.load(gates, F32, gi), rec), gates, F32, gi)
            with kb.loop(0, hs, name="u") as k:
                hidx = b.add(hrow, k, flags=("nsw",))

                def gate(q: int, k: ir.Value = k) -> ir.Value:
                    return kb.load(gates, F32, b.add(k, kb.i64(q * hs), flags=("nsw",)))

                if lstm:
                    c_prev = kb.load(yc, F32, hidx)

                    def peep(q: int, k: ir.Value = k, d: int = d) -> ir.Value:
                        return kb.load(kb.ins[6], F32, kb.index([(k, 1)],
                                                                base=d * 3 * hs + q * hs))

                    it = fns[0](b.fadd(gate(0), b.fmul(peep(0), c_prev)))
                    ft = b.fsub(one, it) if input_forget else fns[0](
                        b.fadd(gate(2), b.fmul(peep(2), c_prev)))
                    ct = b.fadd(b.fmul(ft, c_prev), b.fmul(it, fns[1](gate(3))))
                    ot = fns[0](b.fadd(gate(1), b.fmul(peep(1), ct)))
                    ht = b.fmul(ot, fns[2](ct))
                    kb.store(ct, yc, F32, hidx)
                elif op == "GRU":
                    zt = fns[0](gate(0))
                    if lbr:
                        cand = fns[1](b.fadd(gate(2), kb.load(rh, F32, k)))
                    else:
                        cand = fns[1](gate(2))
                    hk = kb.load(yh, F32, hidx)
                    ht = b.fadd(b.fmul(b.fsub(one, zt), cand), b.fmul(zt, hk))
                else:
                    ht = fns[0](gate(0))
                kb.store(ht, gates, F32, k)  # h gate slots are read above; reuse for h_t
            with kb.loop(0, hs, name="w") as k:
                ht = kb.load(gates, F32, k)
                kb.store(ht, yh, F32, b.add(hrow, k, flags=("nsw",)))
                kb.store(ht, y, F32, kb.index([(t, nd * bt * hs), (bi, hs), (k, 1)],
                                              base=d * bt * hs))
    return kb.finish(), kb.name, outs


GENERATORS = {op: _recurrent for op in GATES}
