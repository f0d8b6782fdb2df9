"""Reference semantics: elementwise math, activations, comparisons, logic, reductions."""

from __future__ import annotations

import math as _m
from collections.abc import Callable

import numpy as np

from tessera.compiler.ir import Node

__all__ = ["KERNELS", "erf"]

_erf = np.vectorize(_m.erf, otypes=[np.float64])


def erf(x: np.ndarray) -> np.ndarray:
    """The error function, elementwise, in float64."""
    x = np.asarray(x, np.float64)
    return _erf(x) if x.size else x.copy()


def _f(fn: Callable[[Node, np.ndarray], np.ndarray]) -> Callable:
    """A float unary kernel computed in float64 and returned in the input dtype."""
    def k(n: Node, x: np.ndarray) -> list[np.ndarray]:
        with np.errstate(all="ignore"):
            return [np.asarray(fn(n, x.astype(np.float64))).astype(x.dtype)]
    return k


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def _gelu(n: Node, x: np.ndarray) -> np.ndarray:
    if n.attrs["approximate"] == "tanh":
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def _elu(x: np.ndarray, alpha: float) -> np.ndarray:
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


def _keep(fn: Callable[[np.ndarray], np.ndarray]) -> Callable:
    """A kernel valid for every dtype (abs, sign, floor ... of integers are exact)."""
    return lambda n, x: [np.asarray(fn(x)).astype(x.dtype)]


def _mod(n: Node, a: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
    with np.errstate(all="ignore"):
        out = np.fmod(a, b) if n.attrs["fmod"] else np.mod(a, b)
    return [np.asarray(out).astype(np.result_type(a, b))]


def _isinf(n: Node, x: np.ndarray) -> list[np.ndarray]:
    pos = np.isposinf(x) if n.attrs["detect_positive"] else np.zeros(x.shape, bool)
    neg = np.isneginf(x) if n.attrs["detect_negative"] else np.zeros(x.shape, bool)
    return [pos | neg]


def _reduce(n: Node, x: np.ndarray) -> list[np.ndarray]:
    a = n.attrs
    axes = tuple(int(v) % x.ndim for v in a["axes"]) if x.ndim else ()
    keep = bool(a["keepdims"])
    fn = a["fn"]
    flt = x.dtype.kind == "f"
    xf = x.astype(np.float64) if flt else x.astype(np.int64)
    with np.errstate(all="ignore"):
        if fn in ("max", "min"):
            if flt:
                init = -np.inf if fn == "max" else np.inf
            elif x.dtype == np.bool_:
                init = fn != "max"
                xf = x
            else:
                info = np.iinfo(x.dtype)
                init = info.min if fn == "max" else info.max
            red = np.max if fn == "max" else np.min
            out = red(xf, axis=axes, keepdims=keep, initial=init)
        elif fn == "sum":
            out = np.sum(xf, axis=axes, keepdims=keep)
        elif fn == "prod":
            out = np.prod(xf, axis=axes, keepdims=keep)
        elif fn == "l1":
            out = np.sum(np.abs(xf), axis=axes, keepdims=keep)
        elif fn == "l2":
            out = np.sqrt(np.sum(xf * xf, axis=axes, keepdims=keep))
        elif fn == "sum_square":
            out = np.sum(xf * xf, axis=axes, keepdims=keep)
        elif fn == "log_sum":
            out = np.log(np.sum(xf, axis=axes, keepdims=keep))
        else:  # log_sum_exp
            m = np.max(xf, axis=axes, keepdims=True, initial=-np.inf)
            m = np.where(np.isfinite(m), m, 0)
            s = np.log(np.sum(np.exp(xf - m), axis=axes, keepdims=True)) + m
            out = s if keep else np.squeeze(s, axis=axes)
    return [np.asarray(out).astype(x.dtype)]


def _argmax(n: Node, x: np.ndarray) -> list[np.ndarray]:
    a = n.attrs
    ax = int(a["axis"]) % x.ndim
    fn = np.argmax if a["fn"] == "max" else np.argmin
    if a["select_last_index"]:
        idx = x.shape[ax] - 1 - fn(np.flip(x, axis=ax), axis=ax)
    else:
        idx = fn(x, axis=ax)
    if a["keepdims"]:
        idx = np.expand_dims(idx, ax)
    return [np.asarray(idx, np.int64)]


KERNELS: dict[str, Callable[..., list[np.ndarray]]] = {
    "abs": _keep(np.abs),
    "sign": _keep(np.sign),
    "floor": _keep(np.floor),
    "ceil": _keep(np.ceil),
    "round": _keep(np.round),
    "log": _f(lambda n, x: np.log(x)),
    "reciprocal": _f(lambda n, x: 1.0 / x),
    "erf": _f(lambda n, x: erf(x)),
    "sin": _f(lambda n, x: np.sin(x)),
    "cos": _f(lambda n, x: np.cos(x)),
    "softplus": _f(lambda n, x: _softplus(x)),
    "softsign": _f(lambda n, x: x / (1 + np.abs(x))),
    "hard_sigmoid": _f(lambda n, x: np.clip(n.attrs["alpha"] * x + n.attrs["beta"], 0, 1)),
    "hard_swish": _f(lambda n, x: x * np.clip(x / 6 + 0.5, 0, 1)),
    "silu": _f(lambda n, x: x / (1 + np.exp(-n.attrs["alpha"] * x))),
    "mish": _f(lambda n, x: x * np.tanh(_softplus(x))),
    "gelu": _f(_gelu),
    "elu": _f(lambda n, x: _elu(x, n.attrs["alpha"])),
    "selu": _f(lambda n, x: n.attrs["gamma"] * _elu(x, n.attrs["alpha"])),
    "celu": _f(lambda n, x: np.maximum(x, 0) + np.minimum(
        0, n.attrs["alpha"] * np.expm1(np.minimum(x, 0) / n.attrs["alpha"]))),
    "thresholded_relu": _f(lambda n, x: np.where(x > n.attrs["alpha"], x, 0)),
    "mod": _mod,
    "prelu": lambda n, x, s: [np.where(x < 0, x * s, x).astype(x.dtype)],
    "equal": lambda n, a, b: [np.equal(a, b)],
    "less": lambda n, a, b: [np.less(a, b)],
    "greater": lambda n, a, b: [np.greater(a, b)],
    "less_equal": lambda n, a, b: [np.less_equal(a, b)],
    "greater_equal": lambda n, a, b: [np.greater_equal(a, b)],
    "and": lambda n, a, b: [np.logical_and(a, b)],
    "or": lambda n, a, b: [np.logical_or(a, b)],
    "xor": lambda n, a, b: [np.logical_xor(a, b)],
    "not": lambda n, x: [np.logical_not(x)],
    "isnan": lambda n, x: [np.isnan(x)],
    "isinf": _isinf,
    "where": lambda n, c, x, y: [np.where(c, x, y).astype(x.dtype)],
    "reduce": _reduce,
    "argmax": _argmax,
}
