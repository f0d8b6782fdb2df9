"""Reference semantics: transposed convolution, resize, layer norm, log-softmax, top-k, max-pool
indices."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tessera.compiler.ir import Node
from tessera.runtime.cpu.resize import axis_table

__all__ = ["KERNELS"]


def _conv_transpose2d(n: Node, x: np.ndarray, w: np.ndarray,
                      b: np.ndarray | None = None) -> list[np.ndarray]:
    a = n.attrs
    (sh, sw), (dh, dw), (oph, opw) = a["strides"], a["dilations"], a["output_padding"]
    pt, pl, pb, pr = a["pads"]
    g = int(a["groups"])
    bt, c, h, wd = x.shape
    _, mg, kh, kw = w.shape
    full_h = sh * (h - 1) + (kh - 1) * dh + 1 + oph
    full_w = sw * (wd - 1) + (kw - 1) * dw + 1 + opw
    full = np.zeros((bt, mg * g, full_h, full_w), np.float64)
    xg = x.astype(np.float64).reshape(bt, g, c // g, h, wd)
    wg = w.astype(np.float64).reshape(g, c // g, mg, kh, kw)
    for ky in range(kh):
        for kx in range(kw):
            # (bt, g, mg, h, w) contribution of tap (ky, kx)
            part = np.einsum("bgchw,gcm->bgmhw", xg, wg[:, :, :, ky, kx])
            full[:, :, ky * dh: ky * dh + sh * (h - 1) + 1: sh,
                 kx * dw: kx * dw + sw * (wd - 1) + 1: sw] += part.reshape(bt, mg * g, h, wd)
    out = full[:, :, pt: full_h - pb, pl: full_w - pr]
    if b is not None:
        out = out + b.reshape(1, -1, 1, 1)
    return [out.astype(x.dtype)]


def _resize(n: Node, x: np.ndarray) -> list[np.ndarray]:
    a = n.attrs
    r = x.ndim
    roi = list(a["roi"]) or [0.0] * r + [1.0] * r
    out = x.astype(np.float64) if a["mode"] != "nearest" else x
    outside = np.zeros(tuple(a["out_shape"]), bool)
    for d in range(r):
        t = axis_table(a["mode"], a["coord"], a["nearest_mode"], x.shape[d],
                       int(a["out_shape"][d]), float(a["scales"][d]), (roi[d], roi[d + r]),
                       float(a["cubic_coeff_a"]), bool(a["exclude_outside"]),
                       bool(a["antialias"]))
        if t.identity:
            continue
        taken = np.take(out, t.idx, axis=d)  # axes: ..., out_d, taps, ...
        if a["mode"] == "nearest":
            out = taken[(slice(None),) * (d + 1) + (0,)]
        else:
            wshape = (1,) * d + t.w.shape + (1,) * (r - d - 1)
            out = (taken * t.w.astype(np.float64).reshape(wshape)).sum(axis=d + 1)
        mshape = (1,) * d + (len(t.outside),) + (1,) * (r - d - 1)
        outside = outside | t.outside.reshape(mshape)
    out = np.where(outside, a["extrapolation_value"], out) if outside.any() else out
    return [np.asarray(out).astype(x.dtype)]


def _layernorm(n: Node, x: np.ndarray, scale: np.ndarray | None = None,
               bias: np.ndarray | None = None) -> list[np.ndarray]:
    ax = int(n.attrs["axis"]) % x.ndim
    axes = tuple(range(ax, x.ndim))
    xf = x.astype(np.float64)
    mean = xf.mean(axis=axes, keepdims=True)
    var = ((xf - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (xf - mean) / np.sqrt(var + n.attrs["epsilon"])
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return [y.astype(x.dtype)]


def _log_softmax(n: Node, x: np.ndarray) -> list[np.ndarray]:
    ax = int(n.attrs["axis"])
    xf = x.astype(np.float64)
    s = xf - xf.max(axis=ax, keepdims=True)
    return [(s - np.log(np.exp(s).sum(axis=ax, keepdims=True))).astype(x.dtype)]


def _topk(n: Node, x: np.ndarray) -> list[np.ndarray]:
    a = n.attrs
    ax = int(a["axis"]) % x.ndim
    key = -x if a["largest"] else x
    if x.dtype.kind == "f":  # NaNs last
        key = np.where(np.isnan(x), np.inf, key)
    idx = np.argsort(key, axis=ax, kind="stable")
    idx = np.take(idx, np.arange(int(a["k"])), axis=ax)
    return [np.take_along_axis(x, idx, axis=ax), idx.astype(np.int64)]


def _maxpool_indices(n: Node, x: np.ndarray) -> list[np.ndarray]:
    """onnxruntime's rule: per window, the first tap (row-major) greater than every earlier one,
    starting from the lowest finite value (row and column -1 when none is)."""
    from tessera.compiler.ir import pool_out_size
    a = n.attrs
    bt, c, h, w = x.shape
    (kh, kw), (sh, sw), (dh, dw) = a["kernel"], a["strides"], a["dilations"]
    pt, pl, pb, pr = a["pads"]
    oh = pool_out_size(h, kh, sh, pt, pb, dh, bool(a["ceil_mode"]))
    ow = pool_out_size(w, kw, sw, pl, pr, dw, bool(a["ceil_mode"]))
    lowest = np.finfo(np.float32).min if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    best = np.full((bt, c, oh, ow), lowest, x.dtype)
    row = np.full((bt, c, oh, ow), -1, np.int64)
    col = np.full((bt, c, oh, ow), -1, np.int64)
    for i in range(kh):
        ys = np.arange(oh) * sh - pt + i * dh
        for j in range(kw):
            xs = np.arange(ow) * sw - pl + j * dw
            inside = ((ys >= 0) & (ys < h))[:, None] & ((xs >= 0) & (xs < w))[None, :]
            v = x[:, :, np.clip(ys, 0, h - 1)][:, :, :, np.clip(xs, 0, w - 1)]
            up = inside & (v > best)
            best = np.where(up, v, best)
            row = np.where(up, ys[:, None], row)
            col = np.where(up, xs[None, :], col)
    flat = row * w + col if int(a["storage_order"]) == 0 else row + col * h
    plane = (np.arange(bt * c, dtype=np.int64) * h * w).reshape(bt, c, 1, 1)
    return [flat + plane]


KERNELS: dict[str, Callable[..., list[np.ndarray]]] = {
    "maxpool_indices": _maxpool_indices,
    "conv_transpose2d": _conv_transpose2d,
    "resize": _resize,
    "layernorm": _layernorm,
    "log_softmax": _log_softmax,
    "topk": _topk,
}
