"""Reference semantics: expand, tile, gather with constant indices."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tessera.compiler.ir import Node

__all__ = ["KERNELS"]


def _expand(n: Node, x: np.ndarray) -> list[np.ndarray]:
    shape = np.broadcast_shapes(x.shape, tuple(int(d) for d in n.attrs["shape"]))
    return [np.ascontiguousarray(np.broadcast_to(x, shape))]


def _gather(n: Node, x: np.ndarray) -> list[np.ndarray]:
    a = n.attrs
    idx = np.array(a["indices"], np.int64).reshape(tuple(a["indices_shape"]))
    return [np.take(x, idx, axis=int(a["axis"]))]


KERNELS: dict[str, Callable[..., list[np.ndarray]]] = {
    "expand": _expand,
    "tile": lambda n, x: [np.tile(x, tuple(int(r) for r in n.attrs["repeats"]))],
    "gather": _gather,
}
