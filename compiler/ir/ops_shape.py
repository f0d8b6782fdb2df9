"""IR ops: data movement beyond reshape/transpose/concat/slice/pad — expand, tile, gather.

All are dtype-generic copies (int8 tensors pass through them unchanged, keeping their scale).
Semantics are ONNX's (executable form: :mod:`tessera.compiler.refops.shape`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tessera.compiler.ir.ops import broadcast_shape, define, need_inputs, op_error
from tessera.compiler.ir.tensor import TensorInfo

if TYPE_CHECKING:
    from tessera.compiler.ir.graph import Graph, Node

__all__: list[str] = []


@define("expand", "broadcast x to numpy-broadcast(x.shape, shape)", shape=())
def _expand(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    need_inputs(node, ins, 0)
    out = broadcast_shape(node, ins[0].shape, tuple(int(d) for d in node.attrs["shape"]))
    return [TensorInfo(out, ins[0].dtype, ins[0].scale)]


@define("tile", "repeat x repeats[i] times along axis i", repeats=())
def _tile(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    need_inputs(node, ins, 0)
    s, reps = ins[0].shape, tuple(int(r) for r in node.attrs["repeats"])
    if len(reps) != len(s) or any(r < 0 for r in reps):
        raise op_error(node, f"repeats {reps} must be {len(s)} non-negative integers")
    return [TensorInfo(tuple(d * r for d, r in zip(s, reps)), ins[0].dtype, ins[0].scale)]


@define("gather", "take constant indices (shape indices_shape, flattened in indices, already "
        "non-negative) along axis", axis=0, indices=(), indices_shape=())
def _gather(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    need_inputs(node, ins, 0)
    s = ins[0].shape
    r = len(s)
    if not -r <= int(node.attrs["axis"]) < r:
        raise op_error(node, f"axis {node.attrs['axis']} out of range for rank {r}")
    ax = int(node.attrs["axis"]) % r
    idx = tuple(int(i) for i in node.attrs["indices"])
    ishape = tuple(int(d) for d in node.attrs["indices_shape"])
    if int(np.prod(ishape, dtype=np.int64)) != len(idx):
        raise op_error(node, f"{len(idx)} indices do not fill indices_shape {ishape}")
    if any(not 0 <= i < s[ax] for i in idx):
        raise op_error(node, f"indices must be in [0, {s[ax]}) along axis {ax}")
    return [TensorInfo(s[:ax] + ishape + s[ax + 1:], ins[0].dtype, ins[0].scale)]
