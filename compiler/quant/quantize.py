"""Post-training int8 quantisation from calibration batches.

* Weights: symmetric per output channel, ``scale = max|w| / 127``, int8.
* Activations: symmetric per tensor, zero point 0, threshold from calibration: ``"mse"`` (the
  clipping threshold minimising quantisation MSE on the collected histogram; the default),
  ``"percentile"`` (of |x|, 99.99 by default) or ``"minmax"``. MSE is the default because it
  gave the lowest end-to-end error on the measured models (see ``tests/unit/test_quant*.py`` and
  the report of this module's author).
* Bias: int32 in accumulator scale ``s_x * s_w[c]``.
* Requantisation: an :class:`~tessera.runtime.accel.epilogue.Epilogue` per layer, i.e. accelerator
  ALU steps (rounding shift, MUL by an int16 multiplier, rounding shift, optional rescaled
  residual add, clip) with parameters chosen so nothing overflows int32 for the layer's actual
  accumulator bound (``sum |w_q| * 128 + |b_q|``).

Ops the accelerator cannot run stay float (dequantize before, quantize after).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tessera.compiler import reference
from tessera.compiler.ir import Graph, Node, TensorInfo
from tessera.compiler.quant.calibrate import calibrate
from tessera.errors import CompileError
from tessera.isa import IMM_MAX
from tessera.runtime.accel.epilogue import Epilogue

__all__ = [
    "quantize", "Quantize", "QuantizedModel", "QuantReport", "LayerReport", "make_epilogue",
    "quantize_weight", "sqnr_db",
]

_INT32_LIMIT = (1 << 31) - 1


# -- integer parameters -------------------------------------------------------------------------

def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8: returns (w_q int8, scale float64[O])."""
    flat = np.abs(w.reshape(w.shape[0], -1)).max(axis=1).astype(np.float64)
    scale = np.where(flat > 0, flat / 127.0, 1.0)
    q = np.clip(np.rint(w / scale.reshape((-1,) + (1,) * (w.ndim - 1))), -127, 127)
    return q.astype(np.int8), scale


def _mult_shift(ratio: np.ndarray) -> int:
    """Largest total shift S with max(ratio) * 2**S <= IMM_MAX."""
    r = float(np.max(np.abs(ratio)))
    if r <= 0:
        return 0
    return int(math.floor(math.log2(IMM_MAX / r)))


def _main_branch(ratio: np.ndarray, bound: int, headroom: int,
                 what: str) -> tuple[np.ndarray, int, int]:
    """(mult, pre_shift, shift) approximating ``acc * ratio`` with ``|acc| <= bound`` such that
    ``rshift(acc, pre) * mult`` plus rounding and ``headroom`` stays inside int32."""
    total = _mult_shift(ratio)
    if total < 0:
        raise CompileError(f"{what}: requantisation ratio {float(np.max(ratio)):.4g} is too "
                           f"large for an int16 multiplier")
    mult = np.rint(ratio * 2.0 ** total).astype(np.int64)
    mmax = int(np.max(np.abs(mult))) if mult.size else 0
    for pre in range(0, total + 1):
        b = -(-bound // (1 << pre)) + 1
        shift = total - pre
        if b * mmax + (1 << max(shift - 1, 0)) + headroom <= _INT32_LIMIT:
            return mult, pre, shift
    # even shifting everything before the multiply overflows: reduce multiplier precision
    for drop in range(1, 16):
        m2 = np.rint(ratio * 2.0 ** (total - drop)).astype(np.int64)
        b = bound + 1
        if b * int(np.max(np.abs(m2))) + headroom <= _INT32_LIMIT and total - drop >= 0:
            return m2, 0, total - drop
    raise CompileError(f"{what}: accumulator bound {bound} leaves no room for requantisation")


def make_epilogue(ratio: np.ndarray | float, acc_bound: int, lo: int = -128, hi: int = 127,
                  residual_ratio: float | None = None, residual_bound: int = 128,
                  what: str = "layer") -> Epilogue:
    """Integer requantisation computing ``clip(round(acc * ratio [+ r * residual_ratio]))``.

    ``ratio`` is per output channel (or scalar): real output units per accumulator unit.
    Without a residual the result is ``clip(rshift(rshift(acc, pre) * M[c], shift))``. With one,
    both branches are brought to a common fixed-point scale with ``F`` extra fractional bits,
    added, and shifted by ``F``; ``F`` is the largest (up to 12) keeping the sum inside int32.
    """
    ratio = np.atleast_1d(np.asarray(ratio, dtype=np.float64))
    if residual_ratio is None:
        mult, pre, shift = _main_branch(ratio, acc_bound, 0, what)
        return Epilogue(mult, shift, pre, lo, hi, acc_bound=acc_bound)
    for frac in range(12, -1, -1):
        scale = 2.0 ** frac
        real_bound = acc_bound * float(np.max(ratio)) + residual_bound * residual_ratio
        if (real_bound + 2) * scale * 1.01 >= 2 ** 30:
            continue
        rr = residual_ratio * scale
        rshift_total = _mult_shift(np.array([rr]))
        if rshift_total < 0:
            continue
        rmult = int(np.rint(rr * 2.0 ** rshift_total))
        headroom = int(residual_bound * rr) + 2
        try:
            mult, pre, shift = _main_branch(ratio * scale, acc_bound, headroom, what)
        except CompileError:
            continue
        return Epilogue(mult, shift, pre, lo, hi, res_mult=rmult, res_shift=rshift_total,
                        final_shift=frac, acc_bound=acc_bound)
    raise CompileError(f"{what}: cannot build a residual requantisation that fits int32")


# -- the quantised model ------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerReport:
    node: str
    op: str
    tensor: str
    scale: float
    sqnr_db: float


@dataclass
class QuantReport:
    """Per-layer SQNR (dB) of the quantised model's int8 tensors against the float model."""

    layers: list[LayerReport]
    output_sqnr_db: dict[str, float]
    method: str

    def table(self) -> str:
        w = max([len(x.node) for x in self.layers] + [4])
        lines = [f"{'node':<{w}}  {'op':<16} {'scale':>10} {'SQNR dB':>8}",
                 "-" * (w + 38)]
        for x in self.layers:
            lines.append(f"{x.node:<{w}}  {x.op:<16} {x.scale:>10.4g} {x.sqnr_db:>8.2f}")
        for o, s in self.output_sqnr_db.items():
            lines.append(f"{'output ' + o:<{w}}  {'':<16} {'':>10} {s:>8.2f}")
        return "\n".join(lines)

    __str__ = table


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    ref = np.asarray(ref, np.float64)
    err = float(np.sum((ref - np.asarray(test, np.float64)) ** 2))
    sig = float(np.sum(ref ** 2))
    if err == 0:
        return float("inf")
    return 10 * math.log10(max(sig, 1e-30) / err)


@dataclass
class QuantizedModel:
    """A quantised graph (int8 accelerator ops plus float CPU ops) and the float graph it was
    derived from. ``int_of`` maps a float tensor name to its int8 counterpart."""

    graph: Graph
    float_graph: Graph
    int_of: dict[str, str]
    thresholds: dict[str, float]
    method: str

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return reference.run(self.graph, feeds)

    def report(self, feeds: Mapping[str, np.ndarray]) -> QuantReport:
        """SQNR of every int8 tensor (dequantised) and every output against the float model."""
        f = reference.run(self.float_graph, feeds, all_tensors=True)
        q = reference.run(self.graph, feeds, all_tensors=True)
        prod = self.graph.producers()
        layers = []
        for t, qt in self.int_of.items():
            if t not in f or qt not in q or qt not in prod:
                continue
            n = prod[qt]
            if n.op not in ("qconv2d", "qdense", "qadd", "qavgpool", "qglobal_avgpool",
                            "requant", "quantize"):
                continue
            s = self.graph.tensors[qt].scale or 1.0
            layers.append(LayerReport(n.name, n.op, t, s,
                                      sqnr_db(f[t], q[qt].astype(np.float64) * s)))
        outs = {o: sqnr_db(f[o], q[o]) for o in self.graph.outputs}
        return QuantReport(layers, outs, self.method)


_PASSTHROUGH = ("reshape", "flatten", "transpose", "identity", "slice", "maxpool",
                "global_maxpool", "relu", "concat", "pad")


class _Builder:
    def __init__(self, g: Graph, thr: dict[str, float]):
        self.g = g
        self.thr = thr
        self.nodes: list[Node] = []
        self.consts: dict[str, np.ndarray] = {}
        self.scale: dict[str, float] = {}  # int tensor -> scale
        self.int_of: dict[str, str] = {}  # float name -> int8 name
        self.float_ok: set[str] = set(g.inputs) | set(g.constants)
        self.names: set[str] = set(g.tensors) | {n.name for n in g.nodes}

    def fresh(self, base: str) -> str:
        name, k = base, 0
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def act_scale(self, t: str) -> float:
        return self.thr.get(t, 1.0) / 127.0

    def const(self, base: str, v: np.ndarray) -> str:
        name = self.fresh(base)
        self.consts[name] = v
        return name

    def as_int(self, t: str) -> str:
        if t in self.int_of:
            return self.int_of[t]
        if t not in self.float_ok:
            raise AssertionError(f"tensor {t} is neither int nor float")
        q = self.fresh(f"{t}:q")
        s = self.act_scale(t)
        self.nodes.append(Node("quantize", (t,), (q,), {"scale": s}, self.fresh(f"quantize:{t}")))
        self.int_of[t], self.scale[q] = q, s
        return q

    def as_float(self, t: str) -> str:
        if t in self.float_ok or not t:
            return t
        q = self.int_of[t]
        self.nodes.append(Node("dequantize", (q,), (t,), {"scale": self.scale[q]},
                               self.fresh(f"dequantize:{t}")))
        self.float_ok.add(t)
        return t

    def emit_int(self, n: Node, op: str, inputs: tuple[str, ...], out_scale: float,
                 **attrs: Any) -> None:
        q = self.fresh(f"{n.outputs[0]}:q")
        self.nodes.append(Node(op, inputs, (q,), {**attrs, "out_scale": out_scale}, n.name))
        self.int_of[n.outputs[0]], self.scale[q] = q, out_scale


def _bounds(act: str, a: Mapping[str, Any], s: float) -> tuple[int, int]:
    if act == "relu":
        return 0, 127
    if act == "clip":
        lo = -128 if a["act_min"] == -np.inf else int(np.clip(round(a["act_min"] / s), -128, 127))
        hi = 127 if a["act_max"] == np.inf else int(np.clip(round(a["act_max"] / s), -128, 127))
        return lo, hi
    return -128, 127


def _int_capable(g: Graph, n: Node) -> bool:
    if any(g.tensors[i].dtype != "float32" for i in n.inputs if i):
        return False
    if n.op in ("conv2d", "dense"):
        return n.inputs[1] in g.constants and (not n.input(2) or n.input(2) in g.constants) \
            and n.inputs[0] not in g.constants
    if n.op == "add":
        a, b = n.inputs
        return a not in g.constants and b not in g.constants \
            and g.tensors[a].shape == g.tensors[b].shape
    if n.op == "avgpool":
        return not any(n.attrs["pads"]) and not n.attrs["ceil_mode"]
    if n.op == "global_avgpool":
        return len(g.tensors[n.inputs[0]].shape) == 4
    if n.op == "pad":
        return n.attrs["value"] == 0.0
    return n.op in _PASSTHROUGH


def _unify_concat_scales(g: Graph, thr: dict[str, float]) -> None:
    """Let the producers of a concat's inputs requantise straight to the concat's scale."""
    cons = g.consumers()
    for n in reversed(g.nodes):
        if n.op != "concat":
            continue
        t = thr.get(n.outputs[0])
        if t is None:
            continue
        for i in n.inputs:
            if len(cons.get(i, [])) == 1 and i not in g.outputs:
                thr[i] = t


def quantize(graph: Graph, calibration: Iterable[Mapping[str, np.ndarray]], *,
             method: str = "mse", percentile: float = 99.99, seed: int = 0) -> QuantizedModel:
    """Quantise a float graph to int8 using ``calibration`` (an iterable of input dicts).

    The graph should already be optimised (the compiler runs the graph rewrites before this, in
    the same pipeline): BN folding and fusion decide which ops become accelerator layers.
    """
    g = graph
    batches = list(calibration)
    thr = calibrate(g, batches, method=method, percentile=percentile, seed=seed)
    _unify_concat_scales(g, thr)
    b = _Builder(g, thr)
    for n in g.nodes:
        if not _int_capable(g, n) or (n.op in _PASSTHROUGH and not all(
                i in b.int_of for i in n.inputs if i)):
            ins = tuple(b.as_float(i) for i in n.inputs)
            b.nodes.append(n.replace(inputs=ins))
            b.float_ok.update(n.outputs)
            continue
        _quantize_node(b, g, n)
    for o in g.outputs:
        b.as_float(o)
    consts = {**g.constants, **b.consts}
    qg = Graph(g.inputs, g.outputs, b.nodes, consts,
               {i: g.tensors[i] for i in g.inputs}, g.name)
    tensors = {k: TensorInfo(v.shape, str(v.dtype) if str(v.dtype) != "float64" else "float32")
               for k, v in b.consts.items()}
    for q, s in b.scale.items():
        tensors[q] = TensorInfo((), "int8", s)
    qg = qg.replace(tensors={**qg.tensors, **tensors}).verify()
    return QuantizedModel(qg, g, dict(b.int_of), thr, method)


def _quantize_node(b: _Builder, g: Graph, n: Node) -> None:
    a = n.attrs
    out = n.outputs[0]
    what = f"node {n.name!r} ({n.op})"
    if n.op in ("conv2d", "dense"):
        x = b.as_int(n.inputs[0])
        sx = b.scale[x]
        w = g.constants[n.inputs[1]]
        wq, sw = quantize_weight(w)
        sacc = sx * sw
        bias = g.constants[n.input(2)].astype(np.float64) if n.input(2) else np.zeros(w.shape[0])
        bq = np.clip(np.rint(bias / sacc), -(1 << 30), 1 << 30).astype(np.int32)
        bound = int(np.max(np.abs(wq.reshape(wq.shape[0], -1).astype(np.int64)).sum(axis=1)
                           * 128 + np.abs(bq)))
        sy = b.act_scale(out)
        lo, hi = _bounds(a["act"], a, sy)
        res = n.input(3)
        if res:
            r = b.as_int(res)
            epi = make_epilogue(sacc / sy, bound, lo, hi, residual_ratio=b.scale[r] / sy,
                                what=what)
        else:
            r = ""
            epi = make_epilogue(sacc / sy, bound, lo, hi, what=what)
        geo = {k: a[k] for k in ("strides", "pads", "dilations", "groups") if k in a}
        wn = b.const(f"{n.inputs[1]}:q", wq)
        bn = b.const(f"{n.name}:bias_q", bq)
        op = "qconv2d" if n.op == "conv2d" else "qdense"
        inputs = (x, wn, bn) + ((r,) if r else ())
        b.emit_int(n, op, inputs, sy, epilogue=epi, w_scale=sw, **geo)
    elif n.op == "add":
        xa, xb = b.as_int(n.inputs[0]), b.as_int(n.inputs[1])
        sy = b.act_scale(out)
        lo, hi = _bounds(a["act"], a, sy)
        epi = make_epilogue(b.scale[xa] / sy, 128, lo, hi, residual_ratio=b.scale[xb] / sy,
                            what=what)
        b.emit_int(n, "qadd", (xa, xb), sy, epilogue=epi)
    elif n.op in ("avgpool", "global_avgpool"):
        x = b.as_int(n.inputs[0])
        shape = g.tensors[n.inputs[0]].shape
        count = int(np.prod(a["kernel"])) if n.op == "avgpool" else int(np.prod(shape[2:]))
        sy = b.act_scale(out)
        epi = make_epilogue(b.scale[x] / (count * sy), 128 * count, what=what)
        if n.op == "avgpool":
            geo = {k: a[k] for k in ("kernel", "strides", "pads", "ceil_mode",
                                     "count_include_pad")}
            b.emit_int(n, "qavgpool", (x,), sy, epilogue=epi, **geo)
        else:
            b.emit_int(n, "qglobal_avgpool", (x,), sy, epilogue=epi)
    elif n.op == "concat":
        sy = b.act_scale(out)
        ins = []
        for i in n.inputs:
            q = b.as_int(i)
            if not math.isclose(b.scale[q], sy, rel_tol=1e-9):
                r = b.fresh(f"{i}:rq")
                epi = make_epilogue(b.scale[q] / sy, 128, what=what)
                b.nodes.append(Node("requant", (q,), (r,), {"epilogue": epi, "out_scale": sy},
                                    b.fresh(f"requant:{i}")))
                b.scale[r] = sy
                q = r
            ins.append(q)
        qo = b.fresh(f"{out}:q")
        b.nodes.append(n.replace(inputs=tuple(ins), outputs=(qo,)))
        b.int_of[out], b.scale[qo] = qo, sy
    else:  # passthrough: same scale in and out
        x = b.as_int(n.inputs[0])
        qo = b.fresh(f"{out}:q")
        b.nodes.append(n.replace(inputs=(x,), outputs=(qo,)))
        b.int_of[out], b.scale[qo] = qo, b.scale[x]


class Quantize:
    """The quantisation pass of the compiler's pipeline; ``result`` is the
    :class:`QuantizedModel` once it has run."""

    name = "quantize"

    def __init__(self, calibration: Iterable[Mapping[str, np.ndarray]], method: str = "mse"):
        self.calibration = calibration
        self.method = method
        self.result: QuantizedModel | None = None

    def apply(self, graph: Graph) -> tuple[Graph, bool]:
        self.result = quantize(graph, self.calibration, method=self.method)
        return self.result.graph, True
