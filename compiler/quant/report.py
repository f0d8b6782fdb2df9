"""The per-layer SQNR report of a quantised model, with the likely causes of a bad layer.

For every int8 layer the report gives two signal-to-quantisation-noise ratios against the float
model on the same inputs: ``sqnr_db`` of its output as the int8 model computes it (the error
accumulated up to there) and ``local_sqnr_db`` of the layer alone (its float inputs quantised
with the layer's input parameters, so upstream error is excluded). A layer whose local SQNR is
below the threshold (:data:`DEFAULT_THRESHOLD_DB` unless given) is flagged, and the report names
what is likely wrong, from what the quantiser recorded and what the inputs show:

* ``dead channels``: output channels with (near-)zero weights (harmless unless they carry a
  large bias; listed for the record);
* ``floored channels``: channels with weights far below the layer's largest, quantised with
  few levels;
* ``bias raised``: channels whose weight scale was raised so the int32 bias fits;
* ``pre-shift``: the epilogue shifts the accumulator before the multiply, adding rounding
  error (in output steps);
* ``error budget``: for a flagged conv/dense layer, the local SQNR of each source of error
  alone: the input's quantisation (float weights), the weights' (float input), the output's
  rounding and clipping, and the requantisation arithmetic (our integer epilogue against the
  exact ``round(acc * ratio)`` of the same accumulators: pre-shift and multiplier precision);
  the smallest names the dominant cause, e.g. ``input quantisation dominates`` for a
  depthwise conv whose channel gains (weight magnitudes) spread widely: a per-tensor input
  scale leaves small channels few levels and the large gains amplify them;
* ``clipped outliers``: the output's clipping range cuts off a fraction of the values;
* ``saturated``: a fraction of the int8 outputs sit at the clip bounds;
* ``few levels``: the output uses only a few int8 levels (its range is dominated by rare
  large values);
* ``inherited``: the layer's input already has a low SQNR.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from tessera.compiler import reference
from tessera.compiler.quant.params import preshift_error

__all__ = ["QuantReport", "LayerReport", "sqnr_db", "build_report", "DEFAULT_THRESHOLD_DB"]

DEFAULT_THRESHOLD_DB = 25.0
_REPORTED = ("qconv2d", "qdense", "qadd", "qavgpool", "qglobal_avgpool", "requant", "quantize")


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    """10 log10(sum ref^2 / sum (ref - test)^2); inf when equal."""
    ref = np.asarray(ref, np.float64)
    err = float(np.sum((ref - np.asarray(test, np.float64)) ** 2))
    sig = float(np.sum(ref ** 2))
    if err == 0:
        return float("inf")
    return 10 * math.log10(max(sig, 1e-30) / err)


@dataclass(frozen=True)
class LayerReport:
    node: str
    op: str
    tensor: str
    scale: float
    zero_point: int
    sqnr_db: float
    local_sqnr_db: float | None = None
    flagged: bool = False
    causes: tuple[str, ...] = ()


@dataclass
class QuantReport:
    """Per-layer SQNR (dB) of the quantised model's int8 tensors against the float model."""

    layers: list[LayerReport]
    output_sqnr_db: dict[str, float]
    method: str
    threshold_db: float = DEFAULT_THRESHOLD_DB
    kept_float: tuple[str, ...] = field(default_factory=tuple)
    kept_low_population: tuple[str, ...] = field(default_factory=tuple)

    @property
    def flagged(self) -> list[LayerReport]:
        return [x for x in self.layers if x.flagged]

    def table(self) -> str:
        w = max([len(x.node) for x in self.layers] + [4])
        lines = [f"{'node':<{w}}  {'op':<16} {'scale':>10} {'zp':>4} {'SQNR dB':>8} "
                 f"{'local dB':>8}  causes (flagged below {self.threshold_db:g} dB local)",
                 "-" * (w + 80)]
        for x in self.layers:
            loc = f"{x.local_sqnr_db:8.2f}" if x.local_sqnr_db is not None else f"{'':>8}"
            mark = "!" if x.flagged else " "
            lines.append(f"{x.node:<{w}}  {x.op:<16} {x.scale:>10.4g} {x.zero_point:>4d} "
                         f"{x.sqnr_db:>8.2f} {loc} {mark}{'; '.join(x.causes)}")
        for o, s in self.output_sqnr_db.items():
            lines.append(f"{'output ' + o:<{w}}  {'':<16} {'':>10} {'':>4} {s:>8.2f}")
        lines.append(f"calibration: {self.method}; {len(self.flagged)} layer(s) flagged"
                     + (f"; kept float: {', '.join(self.kept_float)}" if self.kept_float
                        else "")
                     + (f"; kept float (few calibration values per channel): "
                        f"{', '.join(self.kept_low_population)}" if self.kept_low_population
                        else ""))
        return "\n".join(lines)

    __str__ = table


def _quantise(x: np.ndarray, scale: float, zp: int) -> np.ndarray:
    return np.clip(np.rint(x / np.float32(scale)) + zp, -128, 127).astype(np.int8)


def _dequant(q: np.ndarray, scale: float, zp: int) -> np.ndarray:
    return (q.astype(np.float64) - zp) * scale


def _causes(qm, n, f, q, out_t: str, qout: str, local: float | None, in_sqnr: list[float],
            threshold: float, budget: dict[str, float]) -> list[str]:
    causes: list[str] = []
    qp = qm.qparams[qout]
    lq = qm.layers.get(n.name)
    epi = n.attrs.get("epilogue")
    if lq is not None:
        c = lq.wq.shape[0]
        if lq.dead.any():
            causes.append(f"dead channels: {int(lq.dead.sum())} of {c}")
        fl = lq.floored & ~lq.dead & ~lq.bias_raised
        if fl.any():
            causes.append(f"floored channels: {int(fl.sum())} of {c}")
        if lq.bias_raised.any():
            causes.append(f"bias raised: {int(lq.bias_raised.sum())} of {c} channels")
    if epi is not None:
        pe = preshift_error(epi)
        if pe > 0.05:
            causes.append(f"pre-shift >>{epi.pre_shift}: up to {pe:.2f} output steps")
    if budget:
        causes.append("error budget (local dB): " + ", ".join(
            f"{k} {v:.1f}" for k, v in budget.items()))
        causes.append(_dominant(qm, n, lq, min(budget, key=budget.__getitem__)))
    if out_t in f:
        ref = np.asarray(f[out_t], np.float64)
        lo, hi = qp.real_range()
        outside = float(np.mean((ref < lo - qp.scale / 2) | (ref > hi + qp.scale / 2)))
        if outside > 1e-4:
            peak = float(np.abs(ref).max()) / max(abs(lo), hi)
            causes.append(f"clipped outliers: {100 * outside:.2g}% of values beyond the range "
                          f"(peak {peak:.1f}x)")
        spread = float(np.std(ref)) / qp.scale if ref.size else 0.0
        if spread < 4:
            causes.append(f"few levels: std is {spread:.1f} steps")
    if qout in q:
        v = q[qout]
        lo_b, hi_b = (epi.lo, epi.hi) if epi is not None else (-128, 127)
        sat = float(np.mean((v <= lo_b) | (v >= hi_b))) if v.size else 0.0
        if lo_b == qp.zero_point:  # a ReLU's lower bound is its real zero
            sat = float(np.mean(v >= hi_b))
        if sat > 0.01:
            causes.append(f"saturated: {100 * sat:.1f}% at the clip bounds")
    if in_sqnr and min(in_sqnr) < threshold:
        causes.append(f"inherited: input SQNR {min(in_sqnr):.1f} dB")
    if local is not None and local >= threshold:
        return causes
    return causes or ["no recorded cause (int8 resolution)"]


def build_report(qm, feeds: Mapping[str, np.ndarray], threshold_db: float) -> QuantReport:
    """The :class:`QuantReport` of :class:`~tessera.compiler.quant.quantize.QuantizedModel`
    ``qm`` on one batch of ``feeds``."""
    f = reference.run(qm.float_graph, feeds, all_tensors=True)
    for t in qm.relu_hoisted:  # int8 tensors that hold a later ReLU's output
        if t in f:
            f[t] = np.maximum(f[t], 0)
    q = reference.run(qm.graph, feeds, all_tensors=True)
    float_of = {v: k for k, v in qm.int_of.items()}
    prod = qm.graph.producers()
    cum: dict[str, float] = {}
    layers = []
    for n in qm.graph.nodes:
        if n.op not in _REPORTED or n.outputs[0] not in qm.qparams:
            continue
        qout = n.outputs[0]
        out_t = float_of.get(qout)
        qp = qm.qparams[qout]
        if out_t is None or out_t not in f:
            continue
        s = sqnr_db(f[out_t], _dequant(q[qout], qp.scale, qp.zero_point))
        cum[qout] = s
        local, in_sqnr, args = _local(qm, n, f, float_of, prod, cum)
        flagged = local is not None and local < threshold_db
        causes: tuple[str, ...] | list[str] = ()
        if flagged or (local is None and s < threshold_db):
            budget = _budget(qm, n, f, float_of, args, out_t) if flagged else {}
            causes = _causes(qm, n, f, q, out_t, qout, local, in_sqnr, threshold_db, budget)
        layers.append(LayerReport(n.name, n.op, out_t, qp.scale, qp.zero_point, s, local,
                                  flagged, tuple(causes)))
    outs = {o: sqnr_db(f[o], q[o]) for o in qm.graph.outputs if o in f and o in q
            and np.asarray(q[o]).dtype.kind == "f"}
    return QuantReport(layers, outs, qm.method, threshold_db, qm.kept_float,
                       qm.kept_low_population)


def _local(qm, n, f, float_of, prod, cum) -> tuple[float | None, list[float], list | None]:
    """SQNR of node ``n`` run alone on its float inputs quantised, its inputs' SQNRs, and the
    quantised inputs it ran on."""
    args = []
    in_sqnr = []
    for i in n.inputs:
        if not i:
            args.append(None)
            continue
        if i in qm.graph.constants:
            args.append(qm.graph.constants[i])
            continue
        src = i
        if i not in float_of and i in prod and prod[i].op == "pad":  # explicit zero-point pad
            src = prod[i].inputs[0]
        t = float_of.get(src)
        if t is None or t not in f or src not in qm.qparams:
            return None, in_sqnr, None
        if src in cum:
            in_sqnr.append(cum[src])
        qp = qm.qparams[src]
        xq = _quantise(np.asarray(f[t], np.float32), qp.scale, qp.zero_point)
        if src != i:
            xq = reference.KERNELS["pad"](prod[i], xq)[0]
        args.append(xq)
    if n.op == "quantize":
        return None, in_sqnr, None
    y = reference.KERNELS[n.op](n, *args)[0]
    qp = qm.qparams[n.outputs[0]]
    return (sqnr_db(f[float_of[n.outputs[0]]], _dequant(y, qp.scale, qp.zero_point)), in_sqnr,
            args)


def _budget(qm, n, f, float_of, args, out_t: str) -> dict[str, float]:
    """Local SQNR (dB) of each error source of a qconv2d/qdense layer alone (module
    docstring); empty for other ops or when the float layer is not found."""
    fn = next((x for x in qm.float_graph.nodes if x.name == n.name), None)
    lq = qm.layers.get(n.name)
    if n.op not in ("qconv2d", "qdense") or fn is None or lq is None or args is None \
            or fn.op not in ("conv2d", "dense") or fn.inputs[0] not in f:
        return {}
    g = qm.float_graph
    kernel = reference.KERNELS[fn.op]
    x, w = f[fn.inputs[0]], g.constants[fn.inputs[1]]
    b = g.constants[fn.input(2)] if fn.input(2) else None
    r = f[fn.input(3)] if fn.input(3) else None
    if fn.input(3) and r is None:
        return {}
    ref = np.asarray(f[out_t], np.float64)
    hoisted = out_t in qm.relu_hoisted

    def run(xx, ww) -> np.ndarray:
        y = kernel(fn, np.asarray(xx, np.float32), np.asarray(ww, np.float32), b, r)[0]
        return np.maximum(y, 0) if hoisted else y

    qx = qm.qparams.get(qm.int_of.get(fn.inputs[0], ""))
    qy = qm.qparams[n.outputs[0]]
    out: dict[str, float] = {}
    if qx is not None:
        xq = _dequant(_quantise(np.asarray(x, np.float32), qx.scale, qx.zero_point), qx.scale,
                      qx.zero_point)
        out["input"] = sqnr_db(ref, run(xq, w))
    ws = lq.w_scale.reshape((-1,) + (1,) * (w.ndim - 1))
    out["weights"] = sqnr_db(ref, run(x, lq.wq.astype(np.float64) * ws))
    out["output"] = sqnr_db(ref, _dequant(_quantise(ref.astype(np.float32), qy.scale,
                                                    qy.zero_point), qy.scale, qy.zero_point))
    if qx is not None:
        out["requantisation"] = _requant_sqnr(n, args, qx.scale * lq.w_scale / qy.scale,
                                              qm.qparams[n.inputs[3]].scale / qy.scale
                                              if n.input(3) else None, qy)
    return out


def _requant_sqnr(n, args, ratio: np.ndarray, res_ratio: float | None, qy) -> float:
    """SQNR of the layer's integer epilogue against exact requantisation of the same int32
    accumulators, ``clip(round(acc * ratio [+ residual * res_ratio]))``."""
    epi = n.attrs["epilogue"]
    x, w = args[0].astype(np.float64), args[1].astype(np.float64)
    if n.op == "qconv2d":
        a = n.attrs
        acc = reference.conv2d_nchw(x, w, a["strides"], a["pads"], a["dilations"], a["groups"])
        shape = (1, -1, 1, 1)
    else:
        acc = x @ w.T
        shape = (1, -1)
    if args[2] is not None:
        acc = acc + args[2].astype(np.float64).reshape(shape)
    exact = acc * np.asarray(ratio, np.float64).reshape(shape)
    if res_ratio is not None:
        exact = exact + args[3].astype(np.float64) * res_ratio
    ideal = np.clip(np.rint(exact), epi.lo, epi.hi)
    ours = reference.KERNELS[n.op](n, *args)[0]
    return sqnr_db(_dequant(ideal, qy.scale, qy.zero_point),
                   _dequant(ours, qy.scale, qy.zero_point))


def _dominant(qm, n, lq, worst: str) -> str:
    """A sentence naming the dominant error source of a flagged layer."""
    if worst == "input":
        w = np.abs(lq.wq.reshape(lq.wq.shape[0], -1).astype(np.float64)).max(axis=1) \
            * lq.w_scale
        live = w[w > 0]
        spread = float(live.max() / np.median(live)) if live.size else 1.0
        grouped = n.attrs.get("groups", 1) > 1
        return ("input quantisation dominates" + (
            f": per-tensor input scale, channel gains spread {spread:.0f}x (largest |w| over "
            f"the median){' in a grouped/depthwise conv' if grouped else ''}"
            if spread > 8 else ": the input's own range (see its clipping/levels)"))
    if worst == "weights":
        return "weight quantisation dominates" + (
            f": {int(lq.floored.sum())} floored channel(s)" if lq.floored.any() else "")
    if worst == "requantisation":
        m = np.abs(n.attrs["epilogue"].mult)
        return (f"requantisation arithmetic dominates: pre-shift >>{n.attrs['epilogue'].pre_shift}"
                f", smallest multiplier {int(m.min())}")
    return "output rounding dominates: the output's range and levels"
