"""Calibration: statistics of every float tensor over batches of inputs run through the float
reference, and the int8 quantisation parameters chosen from them.

A tensor is stored as ``q = clip(round(x / scale) + zero_point, -128, 127)``. Symmetric tensors
have ``zero_point = 0`` and 127 levels each side; asymmetric ones spread 255 levels over a
clipping range ``[lo, hi]`` that contains 0 (so 0 is exact). The clipping range comes from one
of :data:`CALIBRATION_METHODS`:

* ``"mse"`` (the default, chosen by measurement: ``bench/calibration_study.py``): the range
  minimising the quantisation MSE on a histogram of the collected values;
* ``"entropy"``: the threshold minimising the KL divergence between the histogram and its
  quantised version (TensorRT's method; 128 levels of |x|, or 256 for an unsigned range);
* ``"percentile"``: of |x| (symmetric) or of x at both ends (asymmetric), 99.99 by default;
* ``"minmax"``: the extremes seen.

A low-population tensor — fewer than :data:`MIN_CLIPPING_SAMPLES` calibration values, or fewer
than :data:`MIN_CHANNEL_SAMPLES` per channel (axis 1: a classifier's logits, a pooled feature
vector, a squeeze-excitation vector, over a few batches) — takes ``"minmax"`` whatever the
method: a handful of values cannot support a clipping decision (PP-OCR cls: every logit of
unseen inputs saturated). Even the extremes of fewer than MIN_CLIPPING_SAMPLES values do not
bound unseen inputs, so in a network's head (``widen``: a tensor no conv layer reads, directly
or through other ops: pooled features, classifier layers, logits) that range is widened by the
factor of :data:`HELD_OUT_FACTORS` that quantises each calibration batch best under the range
of the others (leave-one-out: :func:`held_out_factor`). Measured (``bench/real_models.py
--calibration 4``, ``bench/heldout_cnns.py --seeds 0-19 --trained 0-3``): PP-OCR cls relative
error 0.2008 -> 0.1662 on 8 test inputs (onnxruntime 0.1673), 0.2210 -> 0.1934 on 32 (0.2468);
held-out CNNs geomean 0.726x -> 0.593x onnxruntime, worst 0.946x -> 0.870x. Inside the conv
trunk (squeeze-excitation vectors) ranges are not widened: there it helped PP-OCR cls further
(0.1390 on 8 inputs) but cost PP-OCRv6 det small 0.5415 -> 0.7370 (onnxruntime 0.6655). The
larger low-population tensors (>= 1024 values, < 32 per channel) keep their extremes: widening
them too made a random-init EfficientNet-B0 worse.

Batches are checked before anything runs: each must give every graph input (and nothing else)
with its shape and a numeric dtype, finite values of magnitude at most
:data:`MAX_CALIBRATION_MAGNITUDE`; a violation raises :class:`~tessera.errors.InputError` naming
the batch and the input.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from tessera.compiler import reference
from tessera.compiler.ir import Graph
from tessera.errors import CompileError, InputError

__all__ = ["calibrate", "collect", "check_batches", "qparams", "QParams", "TensorStats",
           "threshold_mse", "threshold_percentile", "threshold_entropy", "CALIBRATION_METHODS",
           "MAX_CALIBRATION_MAGNITUDE", "MIN_CLIPPING_SAMPLES", "MIN_CHANNEL_SAMPLES",
           "held_out_factor", "HELD_OUT_FACTORS"]

CALIBRATION_METHODS = ("mse", "entropy", "percentile", "minmax")
# Larger inputs overflow float32 in the float reference's sums (and say nothing about int8).
MAX_CALIBRATION_MAGNITUDE = 1e15
_SAMPLES_PER_TENSOR = 1 << 18  # values kept per tensor over all batches (a random subsample)
_HIST_BINS = 2048
MIN_CLIPPING_SAMPLES = 1024  # fewer calibration values than this: minmax, whatever the method
# fewer calibration values per channel than this: a low-population tensor (module docstring);
# 32: a 1x1 vector up to 31 batches, a 2x2 map up to 7, a 3x3 map up to 3
MIN_CHANNEL_SAMPLES = 32
MSE_MIN_FRACTION = 0.3  # candidates below 0.3*amax over-clip (measured: worse end to end)
_TINY = 1e-8
# bytes of float conv/dense products calibration may keep for bias correction (above it, bias
# correction runs the float graph again instead)
PRODUCT_BUDGET = 1 << 30


def check_batches(graph: Graph, calibration: Iterable[Mapping[str, np.ndarray]]
                  ) -> list[dict[str, np.ndarray]]:
    """The calibration batches as float32 arrays, each checked (module docstring)."""
    if isinstance(calibration, Mapping):
        raise InputError("calibration must be a list of input dicts (one per batch), not a "
                         "single dict")
    try:
        batches = list(calibration)
    except TypeError:
        raise InputError(f"calibration must be a list of input dicts, not "
                         f"{type(calibration).__name__}") from None
    if not batches:
        raise InputError("calibration needs at least one batch of inputs")
    out = []
    for k, feeds in enumerate(batches):
        if not isinstance(feeds, Mapping):
            raise InputError(f"calibration batch {k} must be a dict of input name -> array, "
                             f"not {type(feeds).__name__}")
        missing = [n for n in graph.inputs if n not in feeds]
        extra = [n for n in feeds if n not in graph.inputs]
        if missing or extra:
            raise InputError(f"calibration batch {k} must name exactly the inputs "
                             f"{list(graph.inputs)}; missing {missing}, unknown {extra}")
        batch = {}
        for name in graph.inputs:
            x = np.asarray(feeds[name])
            want = graph.tensors[name].shape
            where = f"calibration batch {k}, input {name!r}"
            if tuple(x.shape) != tuple(want):
                raise InputError(f"{where} must have shape {list(want)}, not {list(x.shape)}")
            if x.dtype.kind not in "fiu" or x.dtype == np.bool_:
                raise InputError(f"{where} must be numeric, not {x.dtype}")
            x64 = x.astype(np.float64)
            bad = ~np.isfinite(x64)
            if bad.any():
                what = "all NaN" if np.isnan(x64).all() else "NaN or infinity"
                raise InputError(f"{where} contains {what} (at flat index "
                                 f"{int(np.argmax(bad))})")
            if x64.size and np.abs(x64).max() > MAX_CALIBRATION_MAGNITUDE:
                raise InputError(f"{where} has a value of magnitude {np.abs(x64).max():.3g}; "
                                 f"calibration values must be at most "
                                 f"{MAX_CALIBRATION_MAGNITUDE:g}")
            dtype = graph.tensors[name].dtype
            batch[name] = x.astype(np.float32 if dtype == "float32" else dtype)
        out.append(batch)
    return out


# -- statistics ---------------------------------------------------------------------------------

@dataclass
class TensorStats:
    """What calibration saw of one tensor: its extremes, how many values each channel (axis 1)
    gave, and a random subsample of its values."""

    lo: float = np.inf
    hi: float = -np.inf
    chunks: list[np.ndarray] = field(default_factory=list)
    per_channel: int = 0  # calibration values per channel (axis 1; all values of a 0/1-d one)

    def add(self, v: np.ndarray, rng: np.random.Generator, keep: int) -> None:
        v = np.asarray(v, dtype=np.float32)
        flat = v.reshape(-1)
        if flat.size == 0:
            return
        self.lo = min(self.lo, float(flat.min()))
        self.hi = max(self.hi, float(flat.max()))
        self.per_channel += flat.size // v.shape[1] if v.ndim >= 2 and v.shape[1] else flat.size
        if flat.size > keep:
            flat = flat[rng.integers(0, flat.size, keep)]
        self.chunks.append(flat)

    @property
    def samples(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)

    @property
    def amax(self) -> float:
        return max(abs(self.lo), abs(self.hi)) if self.chunks else 0.0


def collect(graph: Graph, batches: list[dict[str, np.ndarray]],
            tensors: Iterable[str] | None = None, seed: int = 0,
            products: dict[str, list[np.ndarray]] | None = None, product_batches: int = 0,
            product_budget: int = PRODUCT_BUDGET) -> dict[str, TensorStats]:
    """Run checked ``batches`` through the float reference and gather every float tensor's
    statistics (only ``tensors`` when given).

    With a ``products`` dict, the float32 products (``x * w`` before bias and activation) of
    every conv2d/dense node over the first ``product_batches`` batches are stored in it, node
    name -> one array per batch, for bias correction to reuse instead of running the float
    graph again; if they would take more than ``product_budget`` bytes (or a layer is not
    float32), ``products`` is left empty."""
    want = set(tensors) if tensors is not None else None
    stats: dict[str, TensorStats] = {}
    rng = np.random.default_rng(seed)
    keep = max(1024, _SAMPLES_PER_TENSOR // max(1, len(batches)))
    store = {"bytes": 0, "on": products is not None and product_batches > 0}

    def observe(name: str, value: np.ndarray) -> None:
        if (want is None or name in want) and value.dtype.kind == "f":
            stats.setdefault(name, TensorStats()).add(value, rng, keep)

    def record(n, x, w, y: np.ndarray) -> bool:
        """Keep ``y`` (which the caller then leaves alone) if it fits; whether it was kept."""
        if store["on"]:
            if x.dtype != np.float32 or w.dtype != np.float32 \
                    or store["bytes"] + y.nbytes > product_budget:
                store["on"] = False
                products.clear()
            else:
                products.setdefault(n.name, []).append(y)
                store["bytes"] += y.nbytes
                return True
        return False

    def conv(n, x, w, b=None, r=None):
        a = n.attrs
        y = reference.conv2d_nchw(x, w, a["strides"], a["pads"], a["dilations"], a["groups"])
        if record(n, x, w, y):  # the output in a new array: the same sums as in place
            y = y.copy() if b is None else y + b.reshape(1, -1, 1, 1)
            b = None
        return reference.conv_output(n, y, b, r)

    def dense(n, x, w, b=None, r=None):
        y = x @ w.T
        return reference.dense_output(n, y.copy() if record(n, x, w, y) else y, b, r)

    for k, feeds in enumerate(batches):
        for i in graph.inputs:
            observe(i, feeds[i])
        kernels = {"conv2d": conv, "dense": dense} if store["on"] and k < product_batches \
            else None
        with np.errstate(over="ignore", invalid="ignore"):
            reference.run(graph, feeds, observe=observe, kernels=kernels)
    for name, st in stats.items():
        if not (np.isfinite(st.lo) and np.isfinite(st.hi)):
            raise CompileError(f"calibration: tensor {name!r} overflows float32 on the "
                               f"calibration data (it reaches {st.lo:.3g} .. {st.hi:.3g})")
    return stats


# -- clipping thresholds ------------------------------------------------------------------------

def threshold_percentile(absval: np.ndarray, amax: float, pct: float = 99.99) -> float:
    """Clipping threshold at the ``pct`` percentile of |x|."""
    if absval.size == 0 or amax == 0:
        return max(amax, _TINY)
    return float(max(np.percentile(absval, pct), amax * 1e-3, _TINY))


def threshold_mse(absval: np.ndarray, amax: float, levels: int = 127,
                  min_fraction: float = MSE_MIN_FRACTION) -> float:
    """The threshold T minimising E[(x - Q_T(x))^2] for the symmetric quantiser with step
    T/levels, evaluated on a histogram of |x| (2048 bins) over candidate T in (0, amax]."""
    if absval.size == 0 or amax == 0:
        return max(amax, _TINY)
    hist, edges = np.histogram(absval, bins=_HIST_BINS, range=(0.0, amax))
    centres = (edges[:-1] + edges[1:]) / 2
    nz = hist > 0
    hist, centres = hist[nz].astype(np.float64), centres[nz]
    cands = amax * np.linspace(min_fraction, 1.0, 256)
    steps = cands / levels
    e = centres[None, :] / steps[:, None]  # then in place: (centres - Q(centres))^2
    np.round(e, out=e)
    np.minimum(e, levels, out=e)
    e *= steps[:, None]
    np.subtract(centres[None, :], e, out=e)
    e *= e
    errs = e @ hist
    return float(cands[int(np.argmin(errs))])


def threshold_entropy(absval: np.ndarray, amax: float, levels: int = 128,
                      bins: int = _HIST_BINS, stride: int = 8) -> float:
    """The threshold minimising KL(P || Q) where P is the histogram of |x| clipped at the
    threshold (outliers folded into the last bin) and Q is P merged into ``levels`` bins and
    expanded back over P's non-empty bins (TensorRT's entropy calibration).

    Exact zeros (half of a ReLU output) are left out: they quantise exactly at any threshold,
    and as a spike in the first bin they made Q's merged first group look wrong for every
    threshold but a heavily clipping one (a half-normal ReLU output was clipped at 1.8 sigma,
    4.1 without the zeros)."""
    absval = absval[absval != 0]
    if absval.size == 0 or amax == 0:
        return max(amax, _TINY)
    hist, edges = np.histogram(absval, bins=bins, range=(0.0, amax))
    hist = hist.astype(np.float64)
    best, best_kl = bins, np.inf
    for i in range(levels, bins + 1, stride):
        sliced = hist[:i]
        p = sliced.copy()
        p[-1] += hist[i:].sum()
        nonzero = p > 0
        # merge the unclipped bins into `levels` groups, spread each group's mass over its
        # non-empty bins
        group = (np.arange(i) * levels) // i
        mass = np.bincount(group, weights=sliced, minlength=levels)
        count = np.bincount(group, weights=nonzero.astype(np.float64), minlength=levels)
        q = np.where(nonzero, mass[group] / np.maximum(count[group], 1), 0.0)
        ps, qs = p.sum(), q.sum()
        if ps == 0 or qs == 0:
            continue
        pn = p[nonzero] / ps
        qn = np.maximum(q[nonzero] / qs, 1e-12)  # smoothing: Q may miss P's outlier bin
        kl = float(np.sum(pn * np.log(pn / qn)))
        if kl < best_kl:
            best, best_kl = i, kl
    return float(max(edges[best], _TINY))


# -- quantisation parameters --------------------------------------------------------------------

@dataclass(frozen=True)
class QParams:
    """int8 parameters of a tensor: real value = (q - zero_point) * scale."""

    scale: float
    zero_point: int = 0

    @property
    def symmetric(self) -> bool:
        return self.zero_point == 0

    def real_range(self) -> tuple[float, float]:
        return ((-128 - self.zero_point) * self.scale, (127 - self.zero_point) * self.scale)


def _asym(lo: float, hi: float) -> QParams:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo <= _TINY:
        return QParams(_TINY)
    scale = (hi - lo) / 255.0
    zp = int(np.clip(np.rint(-128 - lo / scale), -128, 127))
    return QParams(scale, zp)


def _mse_asym(x: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    """The clipping range [c_lo * lo, c_hi * hi] minimising the MSE of the 255-level
    asymmetric quantiser on a histogram of x."""
    hist, edges = np.histogram(x, bins=_HIST_BINS, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    nz = hist > 0
    hist, centres = hist[nz].astype(np.float64), centres[nz]
    fr = np.linspace(MSE_MIN_FRACTION, 1.0, 24)
    los = lo * fr if lo < 0 else np.zeros(1)
    best, best_err = (lo, hi), np.inf
    for a in los:
        his = hi * fr if hi > 0 else np.zeros(1)
        steps = np.maximum(his - a, _TINY) / 255.0
        zps = np.rint(-a / steps)  # levels below zero
        e = centres[None, :] / steps[:, None]  # then in place: (centres - Q(centres))^2
        np.rint(e, out=e)
        np.maximum(e, -zps[:, None], out=e)
        np.minimum(e, 255 - zps[:, None], out=e)
        e *= steps[:, None]
        np.subtract(centres[None, :], e, out=e)
        e *= e
        errs = e @ hist
        k = int(np.argmin(errs))
        if errs[k] < best_err:
            best, best_err = (float(a), float(his[k])), float(errs[k])
    return best


# the widening factors held_out_factor chooses from
HELD_OUT_FACTORS = (1.0, 1.1, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0)


def _fake_quant(x: np.ndarray, lo: float, hi: float, symmetric: bool) -> np.ndarray:
    if symmetric:
        t = max(-lo, hi, _TINY)
        step = t / 127.0
        return np.clip(np.rint(x / step), -127, 127) * step
    qp = _asym(lo, hi)
    q = np.clip(np.rint(x / qp.scale) + qp.zero_point, -128, 127)
    return (q - qp.zero_point) * qp.scale


def held_out_factor(st: TensorStats, symmetric: bool) -> float:
    """The factor of :data:`HELD_OUT_FACTORS` by which a low-population tensor's range (min/max,
    containing 0) is widened: the one minimising the quantisation error of each calibration
    batch under the range of the other batches times the factor, summed over the batches
    (leave-one-out cross-validation: how far unseen inputs go beyond the range seen)."""
    errs = np.zeros(len(HELD_OUT_FACTORS))
    for b, xb in enumerate(st.chunks):
        rest = [c for k, c in enumerate(st.chunks) if k != b]
        r_lo = min(0.0, min(float(c.min()) for c in rest))
        r_hi = max(0.0, max(float(c.max()) for c in rest))
        if r_hi - r_lo <= _TINY:
            continue
        x = xb.astype(np.float64)
        for k, f in enumerate(HELD_OUT_FACTORS):
            errs[k] += float(np.sum((x - _fake_quant(x, r_lo * f, r_hi * f, symmetric)) ** 2))
    return float(HELD_OUT_FACTORS[int(np.argmin(errs))])


def qparams(st: TensorStats, method: str = "mse", symmetric: bool = True,
            percentile: float = 99.99, widen: bool = False) -> QParams:
    """The int8 parameters of a tensor with statistics ``st``; ``widen``: a low-population
    tensor's range may be widened by :func:`held_out_factor` (module docstring)."""
    if method not in CALIBRATION_METHODS:
        raise CompileError(f"calibration method must be one of {CALIBRATION_METHODS}, "
                           f"not {method!r}")
    x = st.samples
    amax = st.amax
    if x.size < MIN_CLIPPING_SAMPLES or st.per_channel < MIN_CHANNEL_SAMPLES:
        # a handful of values (a classifier's logits over a few batches) cannot support a
        # clipping decision: unseen inputs land beyond it and saturate (module docstring)
        method = "minmax"
        if widen and len(st.chunks) >= 2 and x.size < MIN_CLIPPING_SAMPLES:
            f = held_out_factor(st, symmetric)
            lo, hi = min(st.lo, 0.0) * f, max(st.hi, 0.0) * f
            st = TensorStats(lo, hi, st.chunks)
            amax = max(-lo, hi)
    if symmetric:
        ax = np.abs(x)
        if method == "minmax":
            t = amax
        elif method == "percentile":
            t = threshold_percentile(ax, amax, percentile)
        elif method == "entropy":
            t = threshold_entropy(ax, amax)
        else:
            t = threshold_mse(ax, amax)
        return QParams(max(float(t), _TINY) / 127.0)
    lo, hi = min(st.lo, 0.0), max(st.hi, 0.0)
    if method == "minmax" or hi - lo <= _TINY:
        return _asym(lo, hi)
    if method == "percentile":
        return _asym(min(float(np.percentile(x, 100 - percentile)), 0.0),
                     max(float(np.percentile(x, percentile)), 0.0))
    if method == "entropy":
        if lo >= 0:  # an unsigned range: 256 levels of x
            return _asym(0.0, threshold_entropy(x, hi, levels=256))
        t = threshold_entropy(np.abs(x), amax)
        return _asym(max(lo, -t), min(hi, t))
    return _asym(*_mse_asym(x, lo, hi))


def calibrate(graph: Graph, calibration: Iterable[Mapping[str, np.ndarray]],
              tensors: Iterable[str] | None = None, method: str = "mse",
              percentile: float = 99.99, seed: int = 0) -> dict[str, float]:
    """Symmetric clipping thresholds (real units, ``127 * scale``) of the float ``graph``'s
    tensors."""
    if method not in CALIBRATION_METHODS:
        raise CompileError(f"calibration method must be one of {CALIBRATION_METHODS}, "
                           f"not {method!r}")
    stats = collect(graph, check_batches(graph, calibration), tensors, seed)
    return {name: qparams(st, method, True, percentile).scale * 127.0
            for name, st in stats.items()}
