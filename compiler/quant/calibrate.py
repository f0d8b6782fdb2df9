"""Calibration: per-tensor clipping thresholds from batches of inputs run through the float
reference.

* ``"mse"`` (default): the clipping threshold minimising quantisation MSE on the collected
  histogram;
* ``"percentile"``: of |x|, 99.99 by default;
* ``"minmax"``: the largest |x| seen.

Batches are checked before anything runs: each must give every graph input (and nothing else)
with its shape and a float dtype, finite values of magnitude at most
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

__all__ = ["calibrate", "check_batches", "threshold_mse", "threshold_percentile",
           "CALIBRATION_METHODS", "MAX_CALIBRATION_MAGNITUDE"]

CALIBRATION_METHODS = ("mse", "percentile", "minmax")
# Larger inputs overflow float32 in the float reference's sums (and say nothing about int8).
MAX_CALIBRATION_MAGNITUDE = 1e15
_SAMPLES_PER_BATCH = 1 << 16
_HIST_BINS = 2048
MSE_MIN_FRACTION = 0.3  # candidates below 0.3*amax over-clip (measured: worse end to end)


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
            batch[name] = x.astype(np.float32)
        out.append(batch)
    return out


@dataclass
class _Stats:
    amax: float = 0.0
    samples: list[np.ndarray] = field(default_factory=list)
    signed: bool = False

    def add(self, v: np.ndarray, rng: np.random.Generator) -> None:
        flat = np.asarray(v, dtype=np.float32).reshape(-1)
        if flat.size == 0:
            return
        self.amax = max(self.amax, float(np.abs(flat).max()))
        self.signed |= bool(flat.min() < 0)
        if flat.size > _SAMPLES_PER_BATCH:
            flat = flat[rng.integers(0, flat.size, _SAMPLES_PER_BATCH)]
        self.samples.append(np.abs(flat))


def threshold_percentile(absval: np.ndarray, amax: float, pct: float = 99.99) -> float:
    """Clipping threshold at the ``pct`` percentile of |x|."""
    if absval.size == 0 or amax == 0:
        return max(amax, 1e-8)
    return float(max(np.percentile(absval, pct), amax * 1e-3, 1e-8))


def threshold_mse(absval: np.ndarray, amax: float, levels: int = 127,
                  min_fraction: float = MSE_MIN_FRACTION) -> float:
    """The threshold T minimising E[(x - Q_T(x))^2] for the symmetric quantiser with step
    T/levels, evaluated on a histogram of |x| (2048 bins) over candidate T in (0, amax]."""
    if absval.size == 0 or amax == 0:
        return max(amax, 1e-8)
    hist, edges = np.histogram(absval, bins=_HIST_BINS, range=(0.0, amax))
    centres = (edges[:-1] + edges[1:]) / 2
    nz = hist > 0
    hist, centres = hist[nz].astype(np.float64), centres[nz]
    cands = amax * np.linspace(min_fraction, 1.0, 256)
    errs = np.empty(cands.size)
    for k, t in enumerate(cands):
        step = t / levels
        q = np.minimum(np.round(centres / step), levels) * step
        errs[k] = np.dot(hist, (centres - q) ** 2)
    return float(cands[int(np.argmin(errs))])


def calibrate(graph: Graph, calibration: Iterable[Mapping[str, np.ndarray]],
              tensors: Iterable[str] | None = None, method: str = "mse",
              percentile: float = 99.99, seed: int = 0) -> dict[str, float]:
    """Per-tensor clipping thresholds (real units) for the float ``graph``."""
    if method not in CALIBRATION_METHODS:
        raise CompileError(f"calibration method must be one of {CALIBRATION_METHODS}, "
                           f"not {method!r}")
    want = set(tensors) if tensors is not None else None
    stats: dict[str, _Stats] = {}
    rng = np.random.default_rng(seed)

    def observe(name: str, value: np.ndarray) -> None:
        if (want is None or name in want) and value.dtype.kind == "f":
            stats.setdefault(name, _Stats()).add(value, rng)

    for feeds in check_batches(graph, calibration):
        for i in graph.inputs:
            observe(i, feeds[i])
        with np.errstate(over="ignore", invalid="ignore"):
            reference.run(graph, feeds, observe=observe)
    out: dict[str, float] = {}
    for name, st in stats.items():
        absval = np.concatenate(st.samples) if st.samples else np.zeros(0, np.float32)
        if method == "minmax":
            t = st.amax
        elif method == "percentile":
            t = threshold_percentile(absval, st.amax, percentile)
        else:
            t = threshold_mse(absval, st.amax)
        if not np.isfinite(t) or not np.isfinite(st.amax):
            raise CompileError(f"calibration: tensor {name!r} overflows float32 on the "
                               f"calibration data (its largest magnitude is {st.amax:.3g})")
        out[name] = max(float(t), 1e-8)
    return out
