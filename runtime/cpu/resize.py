"""The Resize CPU kernel (ONNX Resize / Upsample with a static output shape) and its sampling
tables, which are also the numpy reference's (one definition of the coordinate arithmetic).

Resizing is separable: along each axis, output position ``o`` reads input taps ``idx[o, t]`` with
weights ``w[o, t]`` (1 tap for nearest, 2 for linear, 4 for cubic); an N-D output element is the
sum over the product of its axes' taps. :func:`axis_table` computes one axis' taps as
onnxruntime does, in float32: the source coordinate ``x`` of ``o`` under the coordinate
transformation mode (half_pixel, half_pixel_symmetric, pytorch_half_pixel, align_corners,
asymmetric, tf_half_pixel_for_nn, tf_crop_and_resize), then

- nearest: ``floor(x)`` or ``ceil(x)`` by ``nearest_mode`` (round_prefer_floor/ceil round to
  nearest and break ties down/up), clamped into the input;
- linear: taps ``floor(x)`` and ``floor(x) + 1`` weighted ``1 - f`` and ``f``;
- cubic: taps ``floor(x) - 1 .. floor(x) + 2`` with Keys' coefficients (``cubic_coeff_a``);

with ``antialias`` a downsampled (scale < 1) linear or cubic axis stretches the filter by
``1 / scale`` and renormalises it (ONNX's antialiasing); taps outside the input read the nearest
edge element, or with ``exclude_outside`` get weight 0 and the rest are renormalised. Under
tf_crop_and_resize a source coordinate outside the input gives ``extrapolation_value``. A
nearest-mode axis of scale 1 is copied unchanged (as onnxruntime does). Nearest works on every
dtype (a gather); linear and cubic on float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from llvmlite import ir

from tessera.runtime.cpu.builder import (
    DTYPES,
    F32,
    I8,
    I64,
    KernelBuilder,
    Spec,
    check,
    check_attrs,
    check_inputs,
    contiguous_strides,
    fail,
    float_attr,
    int_attr,
    ints_attr,
    size,
)

__all__ = ["GENERATORS", "AxisTable", "axis_table", "MODES", "COORD_MODES", "NEAREST_MODES"]

MODES = ("nearest", "linear", "cubic")
COORD_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
               "asymmetric", "tf_half_pixel_for_nn", "tf_crop_and_resize")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
MAX_TAPS = 256  # product over the resized axes of their taps per output element
_ANY = ("float32", "int8", "int32", "int64", "bool", "uint8")


@dataclass(frozen=True)
class AxisTable:
    """Taps of one axis: ``idx`` [out, taps] input indices (in range), ``w`` [out, taps]
    float32 weights, ``outside`` [out] (tf_crop_and_resize extrapolation), the input length."""

    idx: np.ndarray
    w: np.ndarray
    outside: np.ndarray
    in_len: int

    @property
    def identity(self) -> bool:
        """Every output position reads its own input position with weight 1 (and the other
        taps, if any, with weight 0)."""
        n = len(self.outside)
        if self.outside.any() or n != self.in_len:
            return False
        own = self.idx == np.arange(n)[:, None]
        return bool(np.all(np.where(own, self.w, 0).sum(axis=1) == 1)
                    and np.all(np.where(own, 0, self.w) == 0))


def _source(coord: str, out_len: int, in_len: int, scale: float,
            roi: tuple[float, float]) -> np.ndarray:
    f = np.float32
    y = np.arange(out_len, dtype=f)
    s, n_in, n_out = f(scale), f(in_len), f(out_len)
    half = f(0.5)
    if coord == "half_pixel":
        return (y + half) / s - half
    if coord == "half_pixel_symmetric":
        adjustment = n_out / (s * n_in)
        center = n_in / f(2)
        offset = center * (f(1) - adjustment)
        return offset + (y + half) / s - half
    if coord == "pytorch_half_pixel":
        return (y + half) / s - half if out_len > 1 else np.zeros(out_len, f)
    if coord == "align_corners":
        return y * (n_in - f(1)) / (n_out - f(1)) if out_len > 1 else np.zeros(out_len, f)
    if coord == "asymmetric":
        return y / s
    if coord == "tf_half_pixel_for_nn":
        return (y + half) / s
    start, end = f(roi[0]), f(roi[1])
    if out_len > 1:
        return start * (n_in - f(1)) + y * (end - start) * (n_in - f(1)) / (n_out - f(1))
    return np.full(out_len, f(0.5) * (start + end) * (n_in - f(1)), f)


def _cubic(t: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic weights of taps -1, 0, 1, 2 at fractional offset ``t`` (float64)."""
    def near(d: np.ndarray) -> np.ndarray:  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d: np.ndarray) -> np.ndarray:  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)


def _keys(d: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic kernel at distances ``d``."""
    d = np.abs(d)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def axis_table(mode: str, coord: str, nearest_mode: str, in_len: int, out_len: int,
               scale: float, roi: tuple[float, float] = (0.0, 1.0), cubic_coeff_a: float = -0.75,
               exclude_outside: bool = False, antialias: bool = False) -> AxisTable:
    """The taps of one axis (see the module docstring)."""
    if mode == "nearest" and scale == 1.0 and in_len == out_len and coord != "tf_crop_and_resize":
        # onnxruntime copies an axis nearest resize leaves at scale 1 (tf_half_pixel_for_nn
        # would otherwise shift it by half a pixel)
        return AxisTable(np.arange(in_len)[:, None], np.ones((in_len, 1), np.float32),
                         np.zeros(in_len, bool), in_len)
    x = _source(coord, out_len, in_len, scale, roi)
    outside = ((x < 0) | (x > in_len - 1)) if coord == "tf_crop_and_resize" \
        else np.zeros(out_len, bool)
    fl = np.floor(x).astype(np.int64)
    if mode == "nearest":
        frac = x - np.floor(x)
        if nearest_mode == "round_prefer_floor":
            idx = fl + (frac > 0.5)
        elif nearest_mode == "round_prefer_ceil":
            idx = fl + (frac >= 0.5)
        elif nearest_mode == "floor":
            idx = fl
        else:
            idx = np.ceil(x).astype(np.int64)
        return AxisTable(np.clip(idx, 0, in_len - 1)[:, None], np.ones((out_len, 1), np.float32),
                         outside, in_len)
    t = (x - fl).astype(np.float64)
    if antialias and scale < 1:
        # downsampling: the filter is stretched by 1 / scale and renormalised
        s = float(scale)
        support = 1 if mode == "linear" else 2  # the filter's half width at scale 1
        first = int(np.floor(-support / s)) + 1
        offs = np.arange(first, support - first + (2 - support))
        dist = (offs[None, :] - t[:, None]) * s
        w = np.clip(1 - np.abs(dist), 0, 1) if mode == "linear" else _keys(dist, cubic_coeff_a)
        w = w / w.sum(axis=1, keepdims=True)
        taps = fl[:, None] + offs[None, :]
    elif mode == "linear":
        taps, w = fl[:, None] + np.arange(2), np.stack([1 - t, t], axis=1)
    else:
        taps, w = fl[:, None] + np.arange(-1, 3), _cubic(t, cubic_coeff_a)
    if exclude_outside:
        w = np.where((taps < 0) | (taps >= in_len), 0.0, w)
        total = w.sum(axis=1, keepdims=True)
        w = w / np.where(total == 0, 1.0, total)
    return AxisTable(np.clip(taps, 0, in_len - 1), w.astype(np.float32), outside, in_len)


def _tables(op: str, attrs: dict[str, Any], shape: tuple[int, ...]
            ) -> tuple[str, tuple[int, ...], list[AxisTable], float]:
    check_attrs(op, attrs, ("mode", "coord", "nearest_mode", "scales", "out_shape", "roi",
                            "cubic_coeff_a", "exclude_outside", "extrapolation_value",
                            "antialias"))
    rank = len(shape)
    mode = attrs.get("mode", "nearest")
    coord = attrs.get("coord", "half_pixel")
    nearest_mode = attrs.get("nearest_mode", "round_prefer_floor")
    for key, value, allowed in (("mode", mode, MODES), ("coord", coord, COORD_MODES),
                                ("nearest_mode", nearest_mode, NEAREST_MODES)):
        check(value in allowed, op, f"{key} must be one of {', '.join(allowed)}, not {value!r}")
    out = ints_attr(op, attrs, "out_shape", rank)
    check(all(d >= 1 for d in out), op, f"out_shape must be positive, not {out}")
    check(all(d >= 1 for d in shape), op, f"input must not be empty, got shape {shape}")
    scales = attrs.get("scales")
    if not isinstance(scales, list) or len(scales) != rank or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in scales):
        raise fail(op, f"scales must be {rank} positive numbers, not {scales!r}")
    roi = attrs.get("roi", [])
    if coord == "tf_crop_and_resize":
        check(isinstance(roi, list) and len(roi) == 2 * rank and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in roi), op,
            f"roi must be {2 * rank} numbers for tf_crop_and_resize, not {roi!r}")
    else:
        roi = [0.0] * rank + [1.0] * rank
    a = float_attr(op, attrs, "cubic_coeff_a", -0.75)
    excl = int_attr(op, attrs, "exclude_outside", 0)
    check(excl in (0, 1), op, f"exclude_outside must be 0 or 1, not {excl}")
    extra = float_attr(op, attrs, "extrapolation_value", 0.0)
    anti = int_attr(op, attrs, "antialias", 0)
    check(anti in (0, 1), op, f"antialias must be 0 or 1, not {anti}")
    tables = [axis_table(mode, coord, nearest_mode, shape[d], out[d], float(scales[d]),
                         (float(roi[d]), float(roi[d + rank])), a, bool(excl), bool(anti))
              for d in range(rank)]
    return mode, out, tables, extra


def _resize(op: str, attrs: dict[str, Any], in_specs: list[Spec]) -> tuple[str, str, list[Spec]]:
    check_inputs(op, in_specs, (1,))
    shape, dtype = in_specs[0]
    dt = dtype.name
    mode, out, tables, extra = _tables(op, attrs, shape)
    check(dt in _ANY, op, f"input dtype must be one of {', '.join(_ANY)}")
    check(mode == "nearest" or dt == "float32", op, f"{mode} resize needs float32, not {dt}")
    moved = [d for d, t in enumerate(tables) if not t.identity]
    taps = [tables[d].idx.shape[1] for d in moved]
    check(int(np.prod(taps, dtype=np.int64)) <= MAX_TAPS, op,
          f"{int(np.prod(taps))} taps per output element exceed {MAX_TAPS}")
    ty = DTYPES[dt]
    kb = KernelBuilder(f"tsr_resize_{mode}_{dt}", 1, 1)
    b = kb.b
    x, y = kb.ins[0], kb.outs[0]
    istr, ostr = contiguous_strides(shape), contiguous_strides(out)
    idx_tab = {d: kb.table(tables[d].idx.reshape(-1).tolist(), I64) for d in moved}
    w_tab = {d: kb.table(tables[d].w.reshape(-1).tolist(), F32) for d in moved
             if mode != "nearest"}
    extrap = [d for d in moved if tables[d].outside.any()]
    out_tab = {d: kb.table(tables[d].outside.astype(int).tolist(), I8) for d in extrap}
    if size(out):
        with kb.nest(list(out), name="o") as oi:
            base = kb.index([(oi[d], istr[d]) for d in range(len(shape)) if d not in moved])
            per_axis = []
            for d, n_taps in zip(moved, taps, strict=True):
                rows = []
                for t in range(n_taps):
                    at = kb.index([(oi[d], n_taps)], base=t)
                    i = kb.load(idx_tab[d], I64, at)
                    wv = kb.load(w_tab[d], F32, at) if mode != "nearest" else None
                    rows.append((b.mul(i, kb.i64(istr[d]), flags=("nsw",)), wv))
                per_axis.append(rows)
            combos: list[tuple[ir.Value, ir.Value | None]] = [(base, None)]
            for rows in per_axis:
                combos = [(b.add(off, o2, flags=("nsw",)),
                           w2 if w1 is None else (w1 if w2 is None else b.fmul(w1, w2)))
                          for off, w1 in combos for o2, w2 in rows]
            if mode == "nearest":
                val = kb.load(x, ty, combos[0][0])
            else:
                val = kb.fconst(0.0)
                for off, wv in combos:
                    term = kb.load(x, F32, off)
                    val = b.fadd(val, term if wv is None else b.fmul(term, wv))
            if extrap:
                flag = ir.Constant(I8, 0)
                for d in extrap:
                    flag = b.or_(flag, kb.load(out_tab[d], I8, oi[d]))
                val = b.select(b.icmp_unsigned("!=", flag, ir.Constant(I8, 0)),
                               kb.const(ty, extra), val)
            kb.store(val, y, ty, kb.index(list(zip(oi, ostr, strict=True))))
    return kb.finish(), kb.name, [(out, dtype)]


GENERATORS = {"Resize": _resize}
