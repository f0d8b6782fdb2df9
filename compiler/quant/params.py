"""Integer parameters of one int8 layer: weight scales, the int32 bias, the accumulator bound and
the requantisation epilogue.

Trained weights break naive per-channel quantisation in two ways, and this module is where both
are handled:

* **Near-dead channels.** A channel whose weights are ~1e-15..1e-40 (BatchNorm with a vanishing
  gamma) but whose bias is real would get a tiny scale ``max|w|/127``; its int32 bias
  ``b / (s_x * s_w)`` would then not fit, and an accumulator bound inflated by it would force a
  large pre-shift onto every channel of the layer. Here a channel's weight scale is never below
  ``WEIGHT_FLOOR_RATIO`` times the layer's largest (such a channel quantises to few or zero
  weight levels, which costs nothing measurable: its weights contribute far less than one
  output step), and never so small that its bias exceeds :data:`BIAS_LIMIT` accumulator units.
  The bias therefore never clamps; :class:`LayerQuant` records which channels were floored.
* **One channel ruining the others.** The epilogue's pre-shift is chosen from the per-channel
  product ``bound[c] * mult[c]`` (the real int32 magnitude each channel reaches), not from the
  largest bound times the largest multiplier, so a channel with a large bias and a small
  multiplier no longer costs the other channels their precision.

The accumulator bound is the worst case ``sum|w_q| * 128 + |b_q|`` per channel: it is safe for
every input (no run-time value can overflow an int32 step of the epilogue), and with per-channel
bounds it leaves at most a small pre-shift (:meth:`LayerQuant.preshift_error` measures the cost
in output steps; the SQNR report flags a layer where it matters).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tessera.compiler.quant import wround
from tessera.errors import CompileError
from tessera.isa import IMM_MAX
from tessera.runtime.accel.epilogue import MAX_SHIFT, Epilogue

__all__ = ["quantize_weight", "quantize_layer", "model_weight_scales", "LayerQuant",
           "make_epilogue", "preshift_error", "WEIGHT_FLOOR_RATIO", "INT32_LIMIT", "BIAS_LIMIT",
           "DEAD_RATIO"]

INT32_LIMIT = (1 << 31) - 1
# A channel's weight scale is at least this fraction of the layer's largest (measured, see the
# calibration study in bench/calibration_study.py).
WEIGHT_FLOOR_RATIO = 2.0 ** -8
# |bias_q| at most this many accumulator units (the weight scale is raised otherwise).
BIAS_LIMIT = 1 << 28
# Channels whose largest |w| is below this fraction of the layer's largest count as dead.
DEAD_RATIO = 1e-6


# float32 layers with at least this many weights are quantised by the one-pass JIT kernels of
# :mod:`~tessera.compiler.quant.wround` (the same values; compiling the kernels costs ~0.07 s
# once per process, so smaller layers keep the numpy passes: VGG-19's fc6 and fc7 take them;
# once the kernels are compiled, every layer of at least KERNEL_MIN_WEIGHTS takes them)
KERNEL_WEIGHTS = 1 << 23
KERNEL_MIN_WEIGHTS = 1 << 16


def _kernel_layer(w: np.ndarray) -> bool:
    if w.dtype != np.float32 or w.ndim < 1:
        return False
    return w.size >= KERNEL_WEIGHTS or (w.size >= KERNEL_MIN_WEIGHTS and wround.ready())


def prepare_weight_kernels(weights) -> None:
    """Compile the weight kernels up front when one of ``weights`` (a model's float32 layer
    weights) will take them anyway, so that its other layers take them too."""
    if any(w.dtype == np.float32 and w.size >= KERNEL_WEIGHTS for w in weights):
        wround.prepare()


def _channel_absmax(w: np.ndarray) -> np.ndarray:
    """max|w| per output channel as float64 (NaN if the channel has one)."""
    if _kernel_layer(w):
        return wround.channel_absmax(w)
    flat = w.reshape(w.shape[0], -1)
    return np.maximum(flat.max(axis=1), -flat.min(axis=1)).astype(np.float64)


_BLOCK = 1 << 16  # elements per block of the row-blocked loops below (cache-sized temporaries)


def _row_blocks(rows: int, cols: int):
    step = max(1, _BLOCK // max(1, cols))
    return (slice(r, r + step) for r in range(0, rows, step))


def _round_weights(w: np.ndarray, scale: np.ndarray, lo: int = -127,
                   bounded: bool = False) -> np.ndarray:
    """``clip(rint(w / scale[c]), lo, 127)`` as int8, the quotients in float64. ``bounded``:
    every ``scale[c]`` is at least ``max|w[c]| / 127``, so each quotient is within 127 up to
    the scale's one rounding (127 * (1 + 2**-52)) and rounds into [-127, 127] unclipped: the
    rounding is written straight into the int8 result."""
    flat = w.reshape(w.shape[0], -1)
    s = np.asarray(scale, np.float64).reshape(-1, 1)
    out = np.empty(flat.shape, np.int8)
    step = max(1, _BLOCK // max(1, flat.shape[1]))
    buf = np.empty((min(step, flat.shape[0]), flat.shape[1]))
    for rows in _row_blocks(*flat.shape):
        q = np.divide(flat[rows], s[rows], out=buf[: out[rows].shape[0]])
        if bounded:
            np.rint(q, out=out[rows], casting="unsafe")
        else:
            np.rint(q, out=q)
            out[rows] = np.clip(q, lo, 127, out=q)
    return out.reshape(w.shape)


def _quantized_weights(w: np.ndarray, scale: np.ndarray, lo: int = -127, bounded: bool = False
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(:func:`_round_weights`, then :func:`_weight_sums` of it): in one pass of the JIT
    kernel for a large float32 layer."""
    if _kernel_layer(w):
        return wround.round_rows(w, scale, lo, clip=not bounded)
    wq = _round_weights(w, scale, lo, bounded)
    return (wq, *_weight_sums(wq))


def _weight_sums(wq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sum w_q, sum |w_q|) per output channel, int64."""
    flat = wq.reshape(wq.shape[0], -1)
    total = flat.sum(axis=1, dtype=np.int64)
    mag = np.empty(flat.shape[0], np.int64)
    for rows in _row_blocks(*flat.shape):
        mag[rows] = np.abs(flat[rows], dtype=np.int16).sum(axis=1, dtype=np.int64)
    return total, mag


def _weight_scale(amax: np.ndarray, floor_ratio: float) -> np.ndarray:
    """:func:`quantize_weight`'s scales from the channels' max|w| (``amax``, finite)."""
    top = float(amax.max()) if amax.size else 0.0
    if top == 0.0:
        return np.ones(amax.shape[0])
    scale = np.maximum(amax, floor_ratio * top) / 127.0
    return np.where(scale > 0, scale, top / 127.0)  # all-zero channels


def quantize_weight(w: np.ndarray, floor_ratio: float = WEIGHT_FLOOR_RATIO
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8: ``(w_q int8, scale float64[O])`` with
    ``scale[c] = max(max|w[c]|, floor_ratio * max|w|) / 127`` (1.0 for an all-zero tensor)."""
    amax = _channel_absmax(w)
    top = float(amax.max()) if amax.size else 0.0
    if not np.isfinite(top):
        raise CompileError(f"weights must be finite, not {top!r}")
    scale = _weight_scale(amax, floor_ratio)
    return _quantized_weights(w, scale, bounded=True)[0], scale


@dataclass
class LayerQuant:
    """The integer form of ``y = x @ w + b`` for one layer, and what it cost.

    ``bound[c]`` is the largest |int32 accumulator + bias| channel ``c`` can reach for any int8
    input; ``floored`` marks channels whose scale was raised above ``max|w|/127`` (by the floor
    or to fit the bias), ``dead`` those whose weights are negligible (``< DEAD_RATIO`` of the
    layer's largest)."""

    wq: np.ndarray
    w_scale: np.ndarray
    bq: np.ndarray
    bound: np.ndarray
    floored: np.ndarray
    dead: np.ndarray
    bias_raised: np.ndarray
    notes: dict = field(default_factory=dict)


def quantize_layer(w: np.ndarray, bias: np.ndarray | None, x_scale: float, what: str,
                   floor_ratio: float = WEIGHT_FLOOR_RATIO, in_max: int = 128,
                   in_zero_point: int = 0, scales: np.ndarray | None = None) -> LayerQuant:
    """Quantise a conv/dense layer's weights (OIHW or OK) and bias for input scale ``x_scale``
    and zero point ``in_zero_point``: ``acc = sum(w_q * x_q) + b_q`` equals
    ``(sum(w * x) + bias) / (x_scale * w_scale)`` with ``x = (x_q - in_zero_point) * x_scale``.
    ``bias`` may carry real offsets of the output (an output zero point times its scale).
    ``scales`` (a pre-quantised model's own) replace the weight scales chosen here.

    Raises :class:`CompileError` naming ``what`` if the layer's worst-case accumulator does not
    fit int32 (a reduction longer than ~130k terms)."""
    w = np.asarray(w)
    o = w.shape[0]
    b = np.zeros(o) if bias is None else np.asarray(bias, np.float64).reshape(-1)
    if b.size != o:
        raise CompileError(f"{what}: bias must have {o} values, not {b.size}")
    if not np.all(np.isfinite(b)):
        raise CompileError(f"{what}: bias must be finite (channel "
                           f"{int(np.argmax(~np.isfinite(b)))})")
    amax = _channel_absmax(w)
    if not np.all(np.isfinite(amax)):
        raise CompileError(f"{what}: weights must be finite (channel "
                           f"{int(np.argmax(~np.isfinite(amax)))})")
    top = float(amax.max(initial=0.0))
    dead = amax < DEAD_RATIO * top if top > 0 else np.ones(o, bool)
    # the final scales first, then one rounding (a 100M-weight layer costs ~0.3 s a pass)
    lo = -127
    if scales is not None:
        scale = np.asarray(scales, np.float64).reshape(-1)
        lo = -128  # a model's own weights may use -128
        natural = scale.copy()
    else:
        scale = _weight_scale(amax, floor_ratio)
        natural = np.where(amax > 0, amax / 127.0, 0.0)
    if scales is None and top > 0 and dead.any():
        # a dead channel's weights round to zero at any scale: give it the layer's largest,
        # so its requantisation multiplier (which carries the bias) keeps full precision
        scale = np.where(dead, top / 127.0, scale)
    # the bias must fit BIAS_LIMIT accumulator units: raise the channel's scale if not
    need = np.abs(b) / (x_scale * BIAS_LIMIT)
    raised = need > scale
    if raised.any():
        scale = np.where(raised, need * (1 + 1e-9), scale)
        lo = -127
    wq, wsum, wmag = _quantized_weights(w, scale, lo, bounded=scales is None)
    bq = np.rint(b / (x_scale * scale))
    assert np.all(np.abs(bq) <= BIAS_LIMIT + 1)
    bq = bq.astype(np.int64) - int(in_zero_point) * wsum
    bound = wmag * in_max + np.abs(bq)
    if int(bound.max(initial=0)) > INT32_LIMIT:
        c = int(np.argmax(bound))
        raise CompileError(f"{what}: the int32 accumulator of output channel {c} can reach "
                           f"{int(bound[c])}, beyond int32 (a reduction of "
                           f"{wq[c].size} terms is too long for int8 x int8 into int32)")
    floored = scale > natural * (1 + 1e-12)
    return LayerQuant(wq, scale, bq.astype(np.int32), bound, floored, dead, raised)


def model_weight_scales(w: np.ndarray, tol: float = 1e-3) -> np.ndarray | None:
    """The per-output-channel scales a pre-quantised model's dequantised weights were made
    with: for each channel the ``s`` with every ``w / s`` an integer in [-128, 127] and the
    largest ``max|w| / s`` (None when some channel is not such a multiple, i.e. the weights are
    not the model's integers). All-zero channels get the layer's largest scale."""
    o = w.shape[0]
    flat = w.reshape(o, -1).astype(np.float64)
    amax = np.abs(flat).max(axis=1) if flat.size else np.zeros(o)
    if not np.all(np.isfinite(amax)) or amax.max(initial=0) == 0:
        return None
    out = np.zeros(o)
    probe = flat[:, : min(flat.shape[1], 64)]
    for c in np.flatnonzero(amax > 0):
        ks = np.arange(128, 0, -1, dtype=np.float64)
        r = probe[c][None, :] * ks[:, None] / amax[c]
        ok = np.all(np.abs(r - np.rint(r)) < tol, axis=1)
        for k in ks[ok]:
            q = flat[c] * k / amax[c]
            qi = np.rint(q)
            if np.all(np.abs(q - qi) < tol) and qi.min() >= -128 and qi.max() <= 127:
                out[c] = amax[c] / k
                break
        else:
            return None
    out[amax == 0] = out.max()
    return out


# -- requantisation epilogues -------------------------------------------------------------------

def _mult_shift(ratio: np.ndarray) -> int:
    """Largest total shift S with max(ratio) * 2**S <= IMM_MAX."""
    r = float(np.max(np.abs(ratio)))
    if r <= 0:
        return 0
    return min(int(math.floor(math.log2(IMM_MAX / r))), MAX_SHIFT)


def _main_branch(ratio: np.ndarray, bound: np.ndarray, headroom: int,
                 what: str) -> tuple[np.ndarray, int, int]:
    """(mult, pre_shift, shift) approximating ``acc * ratio`` with ``|acc[c]| <= bound[c]`` such
    that ``rshift(acc, pre) * mult`` plus rounding and ``headroom`` stays inside int32 for every
    channel."""
    total = _mult_shift(ratio)
    if total < 0:
        raise CompileError(f"{what}: requantisation ratio {float(np.max(ratio)):.4g} is too "
                           f"large for an int16 multiplier")
    mult = np.rint(ratio * 2.0 ** total).astype(np.int64)
    bound = np.broadcast_to(np.asarray(bound, np.int64), mult.shape)
    for pre in range(0, total + 1):
        b = -(-bound // (1 << pre)) + 1
        shift = total - pre
        if int(np.max(b * np.abs(mult))) + (1 << max(shift - 1, 0)) + headroom <= INT32_LIMIT:
            return mult, pre, shift
    # even shifting everything before the multiply overflows: reduce multiplier precision
    for drop in range(1, 16):
        if total - drop < 0:
            break
        m2 = np.rint(ratio * 2.0 ** (total - drop)).astype(np.int64)
        if int(np.max((bound + 1) * np.abs(m2))) + headroom <= INT32_LIMIT:
            return m2, 0, total - drop
    raise CompileError(f"{what}: accumulator bound {int(np.max(bound))} leaves no room for "
                       f"requantisation")


def make_epilogue(ratio: np.ndarray | float, acc_bound: int | np.ndarray, lo: int = -128,
                  hi: int = 127, residual_ratio: float | None = None, residual_bound: int = 128,
                  what: str = "layer", *, acc_offset: int = 0, res_offset: int = 0,
                  offset: int = 0) -> Epilogue:
    """Integer requantisation computing ``clip(round(acc * ratio [+ r * residual_ratio]))``.

    ``ratio`` is per output channel (or scalar): real output units per accumulator unit;
    ``acc_bound`` the largest |acc| (scalar, or per channel). Without a residual the result is
    ``clip(rshift(rshift(acc, pre) * M[c], shift))``. With one, both branches are brought to a
    common fixed-point scale with ``F`` extra fractional bits, added, and shifted by ``F``; ``F``
    is the largest (up to 12) keeping the sum inside int32. The offsets (zero points) are
    added to the accumulator, to the residual, and to the result before the clip; the bounds
    are those of the accumulator and residual with their offsets added.
    """
    offs = {"acc_offset": int(acc_offset), "res_offset": int(res_offset),
            "offset": int(offset)}
    ratio = np.atleast_1d(np.asarray(ratio, dtype=np.float64))
    bound = np.broadcast_to(np.atleast_1d(np.asarray(acc_bound, np.int64)), ratio.shape)
    if ratio.size > 1 and np.all(ratio == ratio[0]) and bound.size > 1:
        ratio, bound = ratio[:1], bound.max(keepdims=True)
    top = int(bound.max())
    if residual_ratio is None:
        mult, pre, shift = _main_branch(ratio, bound, 0, what)
        return Epilogue(mult, shift, pre, lo, hi, acc_bound=top, **offs)
    real_bound = float(np.max(bound * ratio)) + residual_bound * residual_ratio
    for frac in range(12, -1, -1):
        scale = 2.0 ** frac
        if (real_bound + 2) * scale * 1.01 >= 2 ** 30:
            continue
        rr = residual_ratio * scale
        rshift_total = _mult_shift(np.array([rr]))
        if rshift_total < 0:
            continue
        rmult = int(np.rint(rr * 2.0 ** rshift_total))
        headroom = int(residual_bound * rr) + 2
        try:
            mult, pre, shift = _main_branch(ratio * scale, bound, headroom, what)
        except CompileError:
            continue
        return Epilogue(mult, shift, pre, lo, hi, res_mult=rmult, res_shift=rshift_total,
                        final_shift=frac, acc_bound=top, **offs)
    raise CompileError(f"{what}: cannot build a residual requantisation that fits int32")


def preshift_error(epi: Epilogue) -> float:
    """Largest rounding error the epilogue's pre-shift adds, in output steps (``2**(pre-1)``
    accumulator units times the largest real ratio); 0 without a pre-shift."""
    if epi.pre_shift == 0:
        return 0.0
    ratio = float(np.max(np.abs(epi.mult))) / 2.0 ** (epi.pre_shift + epi.shift
                                                        + epi.final_shift)
    return ratio * 2.0 ** (epi.pre_shift - 1)
