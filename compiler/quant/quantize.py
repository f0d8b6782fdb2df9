"""Post-training int8 quantisation of an optimised float graph.

* Weights: symmetric per output channel (:mod:`~tessera.compiler.quant.params`: dead-channel
  safe scales, an int32 bias that never clamps).
* Activations: per tensor, ``real = (q - zero_point) * scale``, from calibration
  (:mod:`~tessera.compiler.quant.calibrate`, method ``"mse"`` by default) or from the model's
  own QuantizeLinear nodes. ``activations="auto"`` (the default) makes a tensor asymmetric
  (255 levels over its calibrated range) unless one of its consumers is a padded convolution
  that runs on the accelerator (``accel(node)``; every conv when not given) and is not
  grouped: the accelerator pads with int8 zeros, so such an input stays symmetric (a
  grouped conv's asymmetric input is padded on the CPU, see ``_padded_conv``).
  ``"asymmetric"`` makes every tensor asymmetric, padding the inputs of padded convolutions
  explicitly on the CPU, and ``"symmetric"`` none.
* Zero points: an accelerator layer's input zero point (``-zx * sum(w_q)``), its output zero
  point and its residual's are folded into its int32 bias; a CPU epilogue (qadd, requant,
  pooling) carries them as offsets.
* Requantisation: an :class:`~tessera.runtime.accel.epilogue.Epilogue` per layer.
* Bias correction (default on): each conv/dense layer's per-channel mean error on the
  calibration batches is folded into its int32 bias
  (:mod:`~tessera.compiler.quant.bias_correction`).
* Mixed precision: nodes named in ``keep_float`` stay float (their inputs are dequantised,
  their outputs quantised again where an int8 consumer needs them), as do ops without an
  integer form, and CPU integer ops (add, pooling, concat) none of whose inputs is int8
  already (silero-vad's ``re^2 + im^2``: quantising it cost 1.53 -> 0.99 relative error).
* ``keep_float="auto"`` (opt-in; or ``"auto"`` among the names): also keep float every node
  all of whose outputs got fewer than
  :data:`~tessera.compiler.quant.calibrate.MIN_CHANNEL_SAMPLES` calibration values per channel
  (a global average pool, a squeeze-excitation block's FCs, a classifier head, over a few
  batches; ``QuantizedModel.kept_low_population``, listed by the report), conv/dense layers
  among them smallest first while they take at most :data:`LOW_POPULATION_MAC_SHARE` of the
  graph's multiply-accumulates. The default keeps them int8 (their ranges:
  :mod:`~tessera.compiler.quant.calibrate`). Measured, PP-OCR cls with 4 calibration batches:
  logit-difference SQNR 20.5 dB with it, 20.2 dB int8 with the widened ranges (8.0 before).
* Pre-quantised models: when the graph has QuantizeLinear/DequantizeLinear nodes (a QDQ model,
  or a QOperator model imported into that form), exactly the tensors the model quantises are
  int8, with the model's scales and zero points, and its integer weights and biases are used
  as they are; nothing is calibrated.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tessera.compiler import reference
from tessera.compiler.ir import Graph, Node, TensorInfo
from tessera.compiler.quant.bias_correction import BIAS_CORRECTION_BATCHES, correct_biases
from tessera.compiler.quant.calibrate import (
    CALIBRATION_METHODS,
    MIN_CHANNEL_SAMPLES,
    QParams,
    TensorStats,
    check_batches,
    collect,
    qparams,
)
from tessera.compiler.quant.params import (
    INT32_LIMIT,
    WEIGHT_FLOOR_RATIO,
    LayerQuant,
    make_epilogue,
    model_weight_scales,
    prepare_weight_kernels,
    quantize_layer,
    quantize_weight,
)
from tessera.config import Config
from tessera.errors import CompileError

__all__ = ["quantize", "Quantize", "QuantizedModel", "make_epilogue", "quantize_weight",
           "accel_predicate", "ACTIVATION_MODES"]

ACTIVATION_MODES = ("auto", "symmetric", "asymmetric")

_PASSTHROUGH = ("reshape", "flatten", "transpose", "identity", "slice", "maxpool",
                "global_maxpool", "relu", "concat", "pad")
# integer ops that run on the CPU: quantised only when one of their inputs is int8 already
_CPU_INT_OPS = ("add", "avgpool", "global_avgpool", "concat")
# conv/dense layers kept float for their few calibration values take at most this share of
# the graph's multiply-accumulates (the rest stay int8 on the accelerator)
LOW_POPULATION_MAC_SHARE = 0.05
_INT_REPORT_OPS = ("qconv2d", "qdense", "qadd", "qavgpool", "qglobal_avgpool", "requant",
                   "quantize")


@dataclass
class QuantizedModel:
    """A quantised graph (int8 accelerator ops plus float CPU ops) and the float graph it was
    derived from. ``int_of`` maps a float tensor name to its int8 counterpart, ``qparams`` an
    int8 tensor to its scale and zero point; ``layers`` holds each conv/dense layer's weight and
    bias quantisation; ``stats`` the calibration statistics (empty for a pre-quantised model);
    ``model_int`` maps a pre-quantised model's int8 tensors (QuantizeLinear outputs) to ours;
    ``relu_hoisted`` lists float tensors whose int8 counterparts already hold a later ReLU's
    output (a conv reaching its ReLU through reshapes)."""

    graph: Graph
    float_graph: Graph
    int_of: dict[str, str]
    qparams: dict[str, QParams]
    method: str
    layers: dict[str, LayerQuant] = field(default_factory=dict)
    stats: dict[str, TensorStats] = field(default_factory=dict)
    kept_float: tuple[str, ...] = ()
    model_int: dict[str, str] = field(default_factory=dict)
    relu_hoisted: tuple[str, ...] = ()
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of "calibration" and
    # "bias_correction" (the compile reports them as phases of their own)
    kept_low_population: tuple[str, ...] = ()  # nodes kept float: few values per channel

    @property
    def thresholds(self) -> dict[str, float]:
        """Largest |real value| each int8 counterpart of a float tensor can hold."""
        out = {}
        for t, q in self.int_of.items():
            lo, hi = self.qparams[q].real_range()
            out[t] = max(-lo, hi)
        return out

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return reference.run(self.graph, feeds)

    def report(self, feeds: Mapping[str, np.ndarray], threshold_db: float | None = None):
        """Per-layer SQNR against the float model, flagging layers below ``threshold_db`` with
        their likely causes (:class:`~tessera.compiler.quant.report.QuantReport`)."""
        from tessera.compiler.quant.report import DEFAULT_THRESHOLD_DB, build_report
        return build_report(self, feeds, DEFAULT_THRESHOLD_DB if threshold_db is None
                            else threshold_db)


def _bounds(act: str, a: Mapping[str, Any], qp: QParams) -> tuple[int, int]:
    """The int8 clip bounds of a fused activation with output parameters ``qp``."""
    zp, s = qp.zero_point, qp.scale
    lo, hi = -128, 127
    if act == "relu":
        lo = max(lo, zp)
    elif act == "clip":
        if a["act_min"] != -np.inf:
            lo = int(np.clip(round(a["act_min"] / s) + zp, -128, 127))
        if a["act_max"] != np.inf:
            hi = int(np.clip(round(a["act_max"] / s) + zp, -128, 127))
    return lo, hi


def _head_tensors(g: Graph) -> set[str]:
    """The tensors no conv layer reads, directly or through other ops (a network's head: its
    pooled features, classifier layers and logits)."""
    feeds_conv: set[str] = set()
    for n in reversed(g.nodes):  # topological order, reversed: consumers first
        if n.op == "conv2d" or any(o in feeds_conv for o in n.outputs):
            feeds_conv.update(i for i in n.inputs if i)
    return set(g.tensors) - feeds_conv


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
        return n.attrs["value"] == 0.0 and n.inputs[0] not in g.constants
    return n.op in _PASSTHROUGH and n.inputs[0] not in g.constants


def _padded_conv(n: Node) -> bool:
    """A padded convolution whose input the accelerator should pad itself (with int8 zeros,
    so the input must be symmetric). A grouped (depthwise) one is padded on the CPU instead:
    its input keeps the asymmetric range (one more bit on a ReLU output) at the cost of a
    host pad pass; measured with bench/heldout_cnns.py (24 models) once depthwise convs ran
    on the accelerator: geomean 0.785x onnxruntime with symmetric depthwise inputs, 0.726x
    with asymmetric ones padded on the CPU (worst 1.083x -> 0.946x)."""
    return n.op == "conv2d" and any(n.attrs["pads"]) and n.attrs.get("groups", 1) == 1


class _Builder:
    """Walks the float graph once, emitting the quantised graph's nodes."""

    def __init__(self, g: Graph, stats: dict[str, TensorStats], method: str, percentile: float,
                 activations: str, keep_float: set[str],
                 accel: Callable[[Graph, Node], bool] | None = None):
        self.g = g
        self.accel = accel
        self.stats = stats
        self.method, self.percentile = method, percentile
        self.activations = activations
        self.keep_float = keep_float
        self.cons = g.consumers()
        self.head = _head_tensors(g)  # tensors whose low-population range may be widened
        self.nodes: list[Node] = []
        self.consts: dict[str, np.ndarray] = {}
        self.qp: dict[str, QParams] = {}  # int8 tensor -> its parameters
        self.int_of: dict[str, str] = {}  # float tensor -> its int8 counterpart
        self.float_ok: set[str] = set(g.inputs) | set(g.constants)
        self.names: set[str] = set(g.tensors) | {n.name for n in g.nodes}
        self.layers: dict[str, LayerQuant] = {}
        self.same_as: dict[str, str] = {}  # tensor -> tensor whose parameters it takes
        self.given: dict[str, QParams] = {}  # the model's own activation parameters
        self.alias: dict[str, str] = {}  # the model's int8 tensors -> ours
        self.pre_quantised = False
        self.weight_floor = WEIGHT_FLOOR_RATIO
        self.epilogue_args: dict[str, dict[str, Any]] = {}  # conv/dense layer -> make_epilogue
        self.relu_hoisted: list[str] = []  # outputs that take a later ReLU's parameters
        self.low_population: set[str] = set()  # nodes to keep float (_low_population)
        self.kept_low: list[str] = []  # those kept float, in graph order
        self._scan_model_quantisation()

    # -- the model's own Q/DQ nodes ---------------------------------------------------------

    def _scan_model_quantisation(self) -> None:
        g = self.g
        for n in g.nodes:
            if n.op in ("quantize", "dequantize"):
                self.pre_quantised = True
            if n.op == "quantize":
                s = np.asarray(n.attrs["scale"]).reshape(-1)
                z = np.asarray(n.attrs["zero_point"]).reshape(-1)
                if s.size == 1 and z.size == 1 and n.inputs[0] not in self.given \
                        and g.tensors[n.inputs[0]].dtype == "float32":
                    self.given[n.inputs[0]] = QParams(float(np.float32(s[0])), int(z[0]))

    # -- tensors ----------------------------------------------------------------------------

    def fresh(self, base: str) -> str:
        name, k = base, 0
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def const(self, base: str, v: np.ndarray) -> str:
        name = self.fresh(base)
        self.consts[name] = v
        return name

    def asymmetric(self, t: str) -> bool:
        if self.activations == "symmetric":
            return False
        if self.activations == "asymmetric":
            return True
        return not any(_padded_conv(c) and c.name not in self.keep_float
                       and (self.accel is None or self.accel(self.g, c))
                       for c in self.cons.get(t, []))

    def act_qparams(self, t: str) -> QParams:
        t = self.same_as.get(t, t)
        if t in self.given:
            return self.given[t]
        st = self.stats.get(t)
        if st is None:
            raise AssertionError(f"tensor {t!r} has no calibration statistics")
        return qparams(st, self.method, not self.asymmetric(t), self.percentile,
                       widen=t in self.head)

    def can_int(self, t: str) -> bool:
        """Whether float tensor ``t`` has (or can get) an int8 counterpart."""
        if t in self.int_of:
            return True
        if t not in self.float_ok:
            return False
        if self.pre_quantised:
            return self.same_as.get(t, t) in self.given
        return t in self.stats

    def as_int(self, t: str) -> str:
        if t in self.int_of:
            return self.int_of[t]
        src = self.as_float(t)
        qp = self.act_qparams(t)
        q = self.fresh(f"{t}:q")
        self.nodes.append(Node("quantize", (src,), (q,),
                               {"scale": qp.scale, "zero_point": qp.zero_point},
                               self.fresh(f"quantize:{t}")))
        self.int_of[t], self.qp[q] = q, qp
        return q

    def as_float(self, t: str) -> str:
        if not t or t in self.float_ok:
            return t
        if t not in self.int_of:
            raise AssertionError(f"tensor {t!r} is neither int8 nor float")
        q = self.int_of[t]
        qp = self.qp[q]
        self.nodes.append(Node("dequantize", (q,), (t,),
                               {"scale": qp.scale, "zero_point": qp.zero_point},
                               self.fresh(f"dequantize:{t}")))
        self.float_ok.add(t)
        return t

    def requant(self, q: str, qp: QParams, base: str, what: str) -> str:
        """int8 tensor ``q`` re-expressed with parameters ``qp`` (``q`` itself if equal)."""
        src = self.qp[q]
        if math.isclose(src.scale, qp.scale, rel_tol=1e-9) and src.zero_point == qp.zero_point:
            return q
        r = self.fresh(f"{base}:rq")
        epi = make_epilogue(src.scale / qp.scale, 256, acc_offset=-src.zero_point,
                            offset=qp.zero_point, what=what)
        self.nodes.append(Node("requant", (q,), (r,), {"epilogue": epi, "out_scale": qp.scale},
                               self.fresh(f"requant:{base}")))
        self.qp[r] = qp
        return r

    def emit_int(self, n: Node, op: str, inputs: tuple[str, ...], qp: QParams,
                 **attrs: Any) -> str:
        q = self.fresh(f"{n.outputs[0]}:q")
        self.nodes.append(Node(op, inputs, (q,), {**attrs, "out_scale": qp.scale}, n.name))
        self.int_of[n.outputs[0]], self.qp[q] = q, qp
        return q

    def resolve(self, t: str) -> str:
        """What a node runs as-is reads for input ``t``: one of the model's int8 tensors
        (ours for it), or ``t`` as float."""
        return self.alias[t] if t in self.alias else self.as_float(t)

    def emit_float(self, n: Node) -> None:
        self.nodes.append(n.replace(inputs=tuple(self.resolve(i) for i in n.inputs)))
        self.float_ok.update(n.outputs)


def _unify_concat(b: _Builder, g: Graph) -> None:
    """Let the producers of a concat's inputs requantise straight to the concat's parameters."""
    for n in reversed(g.nodes):
        if n.op != "concat":
            continue
        for i in n.inputs:
            if len(b.cons.get(i, [])) == 1 and i not in g.outputs and i not in b.given \
                    and i not in g.inputs:
                b.same_as[i] = b.same_as.get(n.outputs[0], n.outputs[0])


_MOVES_ONLY = ("reshape", "flatten", "transpose", "identity")


def _hoist_activations(b: _Builder, g: Graph) -> None:
    """A conv/dense whose output reaches a ReLU only through reshapes (a 1-D conv imported as
    reshape -> conv2d -> reshape) takes the ReLU output's parameters: its epilogue's clip at
    the zero point is the ReLU, and no int8 level is spent on the negative half."""
    for n in g.nodes:
        if n.op not in ("conv2d", "dense") or n.attrs.get("act", "none") != "none":
            continue
        t = n.outputs[0]
        while t not in g.outputs and len(b.cons.get(t, [])) == 1 \
                and b.cons[t][0].op in _MOVES_ONLY:
            t = b.cons[t][0].outputs[0]
        c = b.cons.get(t, [])
        if t != n.outputs[0] and t not in g.outputs and len(c) == 1 and c[0].op == "relu" \
                and n.outputs[0] not in b.same_as:
            r = c[0].outputs[0]
            b.same_as[n.outputs[0]] = b.same_as.get(r, r)
            b.relu_hoisted.append(n.outputs[0])


def quantize(graph: Graph, calibration: Iterable[Mapping[str, np.ndarray]] | None, *,
             method: str = "mse", percentile: float = 99.99, seed: int = 0,
             activations: str = "auto", keep_float: Iterable[str] | str = (),
             accel: Callable[[Graph, Node], bool] | None = None,
             weight_floor: float = WEIGHT_FLOOR_RATIO,
             bias_correction: bool = True) -> QuantizedModel:
    """Quantise an optimised float graph (the compiler runs the graph rewrites before this, in
    the same pipeline: BN folding and fusion decide which ops become accelerator layers).

    ``calibration`` is an iterable of input dicts; it may be None for a pre-quantised graph.
    ``accel(graph, node)`` tells whether a float conv/dense node will run on the accelerator
    once quantised (:func:`~tessera.compiler.quant.quantize.accel_predicate` builds it from a
    config). ``weight_floor`` is the smallest per-channel weight scale as a fraction of the
    layer's largest (:mod:`~tessera.compiler.quant.params`). ``bias_correction`` runs the
    calibration batches once more to remove each layer's mean error
    (:mod:`~tessera.compiler.quant.bias_correction`; not for pre-quantised graphs).
    """
    if method not in CALIBRATION_METHODS:
        raise CompileError(f"calibration method must be one of {CALIBRATION_METHODS}, "
                           f"not {method!r}")
    if activations not in ACTIVATION_MODES:
        raise CompileError(f"activations must be one of {ACTIVATION_MODES}, not "
                           f"{activations!r}")
    g = _carry_uint8_moves(graph)
    if isinstance(keep_float, str):  # one name, or "auto"
        keep_float = (keep_float,)
    keep = set(keep_float)
    auto_float = "auto" in keep
    keep.discard("auto")
    unknown = sorted(keep - {n.name for n in g.nodes})
    if unknown:
        names = [n.name for n in g.nodes]
        raise CompileError(f"keep_float names unknown node(s) {unknown}; the graph's nodes are "
                           f"{names[:12]}{' ...' if len(names) > 12 else ''}")
    b = _Builder(g, {}, method, percentile, activations, keep, accel)
    b.weight_floor = float(weight_floor)
    batches: list[dict[str, np.ndarray]] = []
    products: dict[str, list[np.ndarray]] = {}  # calibration's float products, reused below
    seconds: dict[str, float] = {}
    if not b.pre_quantised:
        if calibration is None:
            raise CompileError("quantisation needs calibration batches (the model has no "
                               "QuantizeLinear nodes of its own)")
        batches = check_batches(g, calibration)
        t0 = time.perf_counter()
        b.stats = collect(g, batches, seed=seed, products=products,
                          product_batches=BIAS_CORRECTION_BATCHES if bias_correction else 0)
        seconds["calibration"] = time.perf_counter() - t0
        reference.release_scratch()  # calibration's patch buffers (VGG-19: ~120 MB)
        _unify_concat(b, g)
        _hoist_activations(b, g)
        if auto_float:
            b.low_population = _low_population(g, b.stats)
    prepare_weight_kernels([np.asarray(g.constants[n.inputs[1]]) for n in g.nodes
                            if n.op in ("conv2d", "dense") and n.inputs[1] in g.constants])
    for n in g.nodes:
        _node(b, g, n)
    for o in g.outputs:
        if o in b.alias:  # the model quantises an output: give ours its name
            if b.alias[o] != o:
                b.nodes.append(Node("identity", (b.alias[o],), (o,), {}, b.fresh(f"output:{o}")))
        else:
            b.as_float(o)
    consts = {**g.constants, **b.consts}
    qg = Graph(g.inputs, g.outputs, b.nodes, consts,
               {i: g.tensors[i] for i in g.inputs}, g.name)
    tensors = {k: TensorInfo(v.shape, str(v.dtype) if str(v.dtype) != "float64" else "float32")
               for k, v in b.consts.items()}
    for q, qp in b.qp.items():
        if q not in g.inputs:
            tensors[q] = TensorInfo((), "int8", qp.scale)
    qg = qg.replace(tensors={**qg.tensors, **tensors}).verify()
    if bias_correction and batches:
        t0 = time.perf_counter()
        qg, _ = correct_biases(qg, g, b.qp, batches[:BIAS_CORRECTION_BATCHES],
                               lambda n, d: _corrected_layer(b, n, d), products)
        products.clear()
        seconds["bias_correction"] = time.perf_counter() - t0
    reference.release_scratch()
    return QuantizedModel(qg, g, dict(b.int_of), dict(b.qp),
                          "model" if b.pre_quantised else method, b.layers, b.stats,
                          tuple(sorted(keep)), dict(b.alias), tuple(b.relu_hoisted), seconds,
                          tuple(b.kept_low))


def _low_population(g: Graph, stats: Mapping[str, TensorStats]) -> set[str]:
    """The nodes to keep float because every output got fewer than MIN_CHANNEL_SAMPLES
    calibration values per channel (module docstring): all of them but conv/dense layers,
    and those layers smallest first while their multiply-accumulates stay within
    LOW_POPULATION_MAC_SHARE of the graph's (an MLP over a few batches stays on the
    accelerator but for its smallest layers)."""
    from tessera.compiler.lower.build import cpu_macs
    low = [n for n in g.nodes if n.outputs and all(
        o in stats and stats[o].per_channel < MIN_CHANNEL_SAMPLES for o in n.outputs)]
    keep = {n.name for n in low if n.op not in ("conv2d", "dense")}
    budget = LOW_POPULATION_MAC_SHARE * sum(cpu_macs(g, n) for n in g.nodes)
    for macs, _k, n in sorted((cpu_macs(g, n), k, n) for k, n in enumerate(low)
                             if n.op in ("conv2d", "dense")):
        if macs > budget:
            break
        budget -= macs
        keep.add(n.name)
    return keep


def _node(b: _Builder, g: Graph, n: Node) -> None:
    """Quantise one node of the float graph (or keep it float)."""
    if n.op == "quantize" and b.pre_quantised:
        return _model_quantize(b, g, n)
    if n.op == "dequantize" and b.pre_quantised:
        return _model_dequantize(b, g, n)
    if n.name in b.keep_float or not _int_capable(g, n):
        return b.emit_float(n)
    if n.name in b.low_population:
        b.kept_low.append(n.name)
        return b.emit_float(n)
    ins = [i for i in n.inputs if i and i not in g.constants]
    if n.op in _PASSTHROUGH:
        if not all(i in b.int_of for i in ins):
            return b.emit_float(n)
    elif not all(b.can_int(i) for i in ins) or (
            b.pre_quantised and b.same_as.get(n.outputs[0], n.outputs[0]) not in b.given):
        return b.emit_float(n)
    if n.op in _CPU_INT_OPS and not b.pre_quantised and not any(i in b.int_of for i in ins):
        # a CPU op between float ops (e.g. |STFT|^2 = re^2 + im^2): quantising its inputs
        # only adds error
        return b.emit_float(n)
    _quantize_node(b, g, n)


def _model_quantize(b: _Builder, g: Graph, n: Node) -> None:
    """A QuantizeLinear of the model: its output is our int8 counterpart of its input."""
    t = n.inputs[0]
    s = np.asarray(n.attrs["scale"]).reshape(-1)
    z = np.asarray(n.attrs["zero_point"]).reshape(-1)
    if s.size != 1 or z.size != 1 or g.tensors[t].dtype != "float32" or n.attrs["lo"] != -128 \
            or n.attrs["hi"] != 127:
        b.emit_float(n)  # per-axis activations: run the node as it is
        return
    qp = QParams(float(np.float32(s[0])), int(z[0]))
    q = b.as_int(t)
    b.alias[n.outputs[0]] = b.requant(q, qp, n.outputs[0], f"node {n.name!r} (quantize)")


def _model_dequantize(b: _Builder, g: Graph, n: Node) -> None:
    """A DequantizeLinear of the model: of one of our int8 tensors (nothing to emit: the float
    value is made when a float op needs it), or anything else (run as it is)."""
    x, out = n.inputs[0], n.outputs[0]
    s = np.asarray(n.attrs["scale"]).reshape(-1)
    z = np.asarray(n.attrs["zero_point"]).reshape(-1)
    q = b.alias.get(x)
    if q is not None and s.size == 1 and z.size == 1:
        qp = b.qp[q]
        if math.isclose(qp.scale, float(np.float32(s[0])), rel_tol=1e-6) \
                and qp.zero_point == int(z[0]):
            b.int_of[out] = q
            return
    if q is None and s.size == 1 and z.size == 1 and g.tensors[x].dtype == "int8" \
            and x not in b.qp and (x in b.float_ok or x in g.inputs):
        # an int8 tensor the model computes some other way (a graph input, a recentred
        # uint8): ours from here on
        b.alias[x] = x
        b.qp[x] = QParams(float(np.float32(s[0])), int(z[0]))
        b.int_of[out] = x
        return
    b.emit_float(n)


def _layer_weights(b: _Builder, g: Graph, n: Node, sx: float, zx: int, extra: np.ndarray,
                   what: str) -> LayerQuant:
    """Weights and int32 bias of a conv/dense node. ``extra`` is a real per-channel offset
    added to the bias. In a pre-quantised model the weights are exact multiples of the model's
    scales: those scales are recovered, so the integers are the model's."""
    w = g.constants[n.inputs[1]]
    bias = g.constants[n.input(2)] if n.input(2) else None
    bias = (np.zeros(w.shape[0]) if bias is None else np.asarray(bias, np.float64).reshape(-1))
    scales = model_weight_scales(w) if b.pre_quantised else None
    return quantize_layer(w, bias + extra, sx, what, b.weight_floor, in_zero_point=zx,
                          scales=scales)


def _quantize_node(b: _Builder, g: Graph, n: Node) -> None:
    a = n.attrs
    out = n.outputs[0]
    what = f"node {n.name!r} ({n.op})"
    if n.op in ("conv2d", "dense"):
        x = b.as_int(n.inputs[0])
        qx = b.qp[x]
        qy = b.act_qparams(out)
        o = g.constants[n.inputs[1]].shape[0]
        extra = np.full(o, qy.zero_point * qy.scale)
        res = n.input(3)
        r = ""
        if res:
            r = b.as_int(res)
            extra = extra - b.qp[r].zero_point * b.qp[r].scale
        lq = _layer_weights(b, g, n, qx.scale, qx.zero_point, extra, what)
        lo, hi = _bounds(a["act"], a, qy)
        b.epilogue_args[n.name] = {
            "ratio": qx.scale * lq.w_scale / qy.scale, "lo": lo, "hi": hi,
            "residual_ratio": b.qp[r].scale / qy.scale if r else None, "what": what}
        epi = make_epilogue(acc_bound=lq.bound, **b.epilogue_args[n.name])
        b.layers[n.name] = lq
        geo = {k: a[k] for k in ("strides", "pads", "dilations", "groups") if k in a}
        if n.op == "conv2d" and qx.zero_point and any(a["pads"]):
            x = _explicit_pad(b, x, a["pads"], qx.zero_point, n.name)
            geo["pads"] = (0, 0, 0, 0)
        wn = b.const(f"{n.inputs[1]}:q", lq.wq)
        bn = b.const(f"{n.name}:bias_q", lq.bq)
        op = "qconv2d" if n.op == "conv2d" else "qdense"
        b.emit_int(n, op, (x, wn, bn) + ((r,) if r else ()), qy, epilogue=epi,
                   w_scale=lq.w_scale, **geo)
    elif n.op == "add":
        xa, xb = b.as_int(n.inputs[0]), b.as_int(n.inputs[1])
        qa, qb, qy = b.qp[xa], b.qp[xb], b.act_qparams(out)
        lo, hi = _bounds(a["act"], a, qy)
        epi = make_epilogue(qa.scale / qy.scale, 256, lo, hi, residual_ratio=qb.scale / qy.scale,
                            residual_bound=256, acc_offset=-qa.zero_point,
                            res_offset=-qb.zero_point, offset=qy.zero_point, what=what)
        b.emit_int(n, "qadd", (xa, xb), qy, epilogue=epi)
    elif n.op in ("avgpool", "global_avgpool"):
        x = b.as_int(n.inputs[0])
        qx, qy = b.qp[x], b.act_qparams(out)
        shape = g.tensors[n.inputs[0]].shape
        count = int(np.prod(a["kernel"])) if n.op == "avgpool" else int(np.prod(shape[2:]))
        epi = make_epilogue(qx.scale / (count * qy.scale), 256 * count,
                            acc_offset=-count * qx.zero_point, offset=qy.zero_point, what=what)
        if n.op == "avgpool":
            geo = {k: a[k] for k in ("kernel", "strides", "pads", "ceil_mode",
                                     "count_include_pad")}
            b.emit_int(n, "qavgpool", (x,), qy, epilogue=epi, **geo)
        else:
            b.emit_int(n, "qglobal_avgpool", (x,), qy, epilogue=epi)
    elif n.op == "concat":
        qy = b.act_qparams(out)
        ins = tuple(b.requant(b.as_int(i), qy, i, what) for i in n.inputs)
        qo = b.fresh(f"{out}:q")
        b.nodes.append(n.replace(inputs=ins, outputs=(qo,)))
        b.int_of[out], b.qp[qo] = qo, qy
    elif n.op == "relu" and b.qp[b.as_int(n.inputs[0])].zero_point:
        x = b.as_int(n.inputs[0])
        qx = b.qp[x]
        epi = make_epilogue(1.0, 256, qx.zero_point, 127, what=what)
        b.emit_int(n, "requant", (x,), qx, epilogue=epi)
    else:  # passthrough: same parameters in and out
        x = b.as_int(n.inputs[0])
        qo = b.fresh(f"{out}:q")
        node = n.replace(inputs=(x,), outputs=(qo,))
        if n.op == "pad":
            node = node.with_attrs(value=float(b.qp[x].zero_point))
        b.nodes.append(node)
        b.int_of[out], b.qp[qo] = qo, b.qp[x]


def _corrected_layer(b: _Builder, n: Node, delta: np.ndarray
                     ) -> tuple[Node, np.ndarray] | None:
    """Layer ``n`` (qconv2d/qdense) with ``delta`` added to its int32 bias: a new accumulator
    bound and epilogue (None, with a note on the layer, if the bound would leave int32)."""
    lq = b.layers[n.name]
    bq = lq.bq.astype(np.int64) + delta
    # the bound is sum|w_q| * 128 + |b_q| (params.quantize_layer): swap the bias term
    bound = lq.bound - np.abs(lq.bq.astype(np.int64)) + np.abs(bq)
    if int(bound.max(initial=0)) > INT32_LIMIT:
        lq.notes["bias_correction_skipped"] = "the corrected bias would leave int32"
        return None
    epi = make_epilogue(acc_bound=bound, **b.epilogue_args[n.name])
    b.layers[n.name] = dataclasses.replace(lq, bq=bq.astype(np.int32), bound=bound,
                                           notes={**lq.notes, "bias_correction": delta})
    return n.with_attrs(epilogue=epi), bq.astype(np.int32)


def _explicit_pad(b: _Builder, x: str, pads: tuple[int, ...], value: int, name: str) -> str:
    """``x`` padded with int8 ``value`` (the real zero of an asymmetric input) on the CPU."""
    pt, pl, pb, pr = pads
    y = b.fresh(f"{x}:padded")
    b.nodes.append(Node("pad", (x,), (y,), {"pads": (0, 0, pt, pl, 0, 0, pb, pr),
                                            "value": float(value)}, b.fresh(f"{name}:pad")))
    b.qp[y] = b.qp[x]
    return y


def accel_predicate(cfg: Config) -> Callable[[Graph, Node], bool]:
    """Whether a float conv2d/dense node will run on the accelerator of ``cfg`` once quantised:
    the partition's own rule applied to a probe of the int8 node it becomes."""
    from tessera.compiler.lower.partition import accel_capable

    def accel(g: Graph, n: Node) -> bool:
        if n.op not in ("conv2d", "dense") or n.inputs[1] not in g.constants:
            return False
        x, w = n.inputs[0], n.inputs[1]
        probe = Node("qconv2d" if n.op == "conv2d" else "qdense", (x, w), (n.outputs[0],),
                     {k: v for k, v in n.attrs.items() if k not in ("act", "act_min",
                                                                    "act_max")}, n.name)
        pg = Graph([x], [n.outputs[0]], [], {w: np.zeros(g.constants[w].shape, np.int8)},
                   {x: TensorInfo(g.tensors[x].shape, "int8")})
        return accel_capable(pg, probe, cfg) is None
    return accel


class Quantize:
    """The quantisation pass of the compiler's pipeline; ``result`` is the
    :class:`QuantizedModel` once it has run."""

    name = "quantize"

    def __init__(self, calibration: Iterable[Mapping[str, np.ndarray]] | None,
                 method: str = "mse", *, activations: str = "auto",
                 keep_float: Iterable[str] = (), config: Config | None = None,
                 bias_correction: bool = True):
        self.calibration = calibration
        self.bias_correction = bias_correction
        self.method = method
        self.activations = activations
        self.keep_float = tuple(keep_float)
        self.accel = accel_predicate(config) if config is not None else None
        self.result: QuantizedModel | None = None

    def apply(self, graph: Graph) -> tuple[Graph, bool]:
        self.result = quantize(graph, self.calibration, method=self.method,
                               activations=self.activations, keep_float=self.keep_float,
                               accel=self.accel, bias_correction=self.bias_correction)
        return self.result.graph, True


# -- uint8 data movement ------------------------------------------------------------------------

_MOVES = ("reshape", "flatten", "transpose", "maxpool", "global_maxpool", "slice", "identity")


def _carry_uint8_moves(g: Graph) -> Graph:
    """Data-movement ops of a uint8 QOperator model (``Flatten``/``MaxPool``/``Reshape``
    between QLinear ops) run on the int8 carrier: ``op(recenter_u8(x))`` becomes
    ``recenter_u8(op(x))`` (the ops commute with the shift by 128: they move or compare values)
    and ``recenter_i8(recenter_u8(y))`` reads ``y``. Nodes left unused are dropped."""
    if not any(n.op == "recenter" for n in g.nodes):
        return g
    prod: dict[str, Node] = {}
    rename: dict[str, str] = {}
    nodes: list[Node] = []
    fresh = g.namer()

    for n in g.nodes:
        n = n.replace(inputs=tuple(rename.get(i, i) for i in n.inputs))
        src = prod.get(n.inputs[0]) if n.inputs else None
        to_u8 = src is not None and src.op == "recenter" and src.attrs.get("to") == "uint8"
        if to_u8 and n.op == "recenter" and n.attrs.get("to") == "int8" \
                and n.outputs[0] not in g.outputs:
            rename[n.outputs[0]] = src.inputs[0]
            continue
        if to_u8 and n.op in _MOVES and len(n.outputs) == 1 \
                and all(i in g.constants for i in n.inputs[1:] if i):
            carried = fresh(f"{n.outputs[0]}:i8")
            moved = n.replace(inputs=(src.inputs[0],) + n.inputs[1:], outputs=(carried,))
            back = Node("recenter", (carried,), n.outputs, {"to": "uint8"},
                        fresh(f"{n.name}:recenter"))
            nodes += [moved, back]
            prod[carried], prod[n.outputs[0]] = moved, back
            continue
        nodes.append(n)
        for o in n.outputs:
            prod[o] = n
    live = set(g.outputs)
    kept: list[Node] = []
    for n in reversed(nodes):
        if any(o in live for o in n.outputs):
            kept.append(n)
            live.update(i for i in n.inputs if i)
    return g.replace(nodes=reversed(kept))
