"""ONNX -> IR. Imports a model with static shapes, folding shape arithmetic and constants.

Handles the default-domain opsets 7–23 (attribute-form and input-form variants of Clip, Pad,
Slice, Squeeze/Unsqueeze, ReduceMean, Softmax). Anything computable from constants alone
(initializers, Constant, ConstantOfShape, Shape of a static tensor, Gather, Range, Cast, ...) is
evaluated at import time. An unsupported model raises one :class:`CompileError` listing every
offending node (name, op, reason).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnx
from onnx import numpy_helper

from tessera.compiler.frontend.context import ONNX_DTYPES, Ctx, Unsupported, attrs_of
from tessera.compiler.frontend.converters import CONVERTERS, SUPPORTED_ONNX_OPS
from tessera.compiler.frontend.qlinear import QUANT_CONVERTERS
from tessera.compiler.ir import Graph, TensorInfo
from tessera.errors import CompileError
from tessera.files import open_regular

__all__ = ["import_onnx", "load_model", "SUPPORTED_ONNX_OPS"]

MIN_OPSET, MAX_OPSET = 7, 23


def load_model(model: str | Path | bytes | onnx.ModelProto) -> onnx.ModelProto:
    """Accept a path, serialized bytes or a ModelProto."""
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (str, Path)):
        # a regular file only: never block on a FIFO or read a device such as /dev/zero
        os.close(open_regular(model, "ONNX model", CompileError)[0])
    try:
        if isinstance(model, (bytes, bytearray)):
            return onnx.load_from_string(bytes(model))
        if isinstance(model, (str, Path)):
            return onnx.load(str(model))
    except Exception as exc:  # noqa: BLE001 - onnx raises many types for a corrupt file
        raise CompileError(f"cannot load ONNX model {str(model)[:80]!r}: {exc}") from None
    raise CompileError(f"model must be a path, bytes or onnx.ModelProto, not "
                       f"{type(model).__name__}")


# -- driver -------------------------------------------------------------------------------------

def _value_shape(vi: onnx.ValueInfoProto) -> list[int | str]:
    dims = vi.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]


def import_onnx(model: str | Path | bytes | onnx.ModelProto,
                input_shapes: Mapping[str, Sequence[int]] | None = None) -> Graph:
    """Import an ONNX model into a verified IR graph with static shapes.

    ``input_shapes`` overrides (or fixes symbolic) input shapes, e.g. ``{"x": (1, 3, 32, 32)}``.
    Raises CompileError listing every unsupported node, or naming an input whose shape is not
    static.
    """
    m = load_model(model)
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not MIN_OPSET <= opset <= MAX_OPSET:
        raise CompileError(f"ONNX default-domain opset {opset} is not supported (need "
                           f"{MIN_OPSET}..{MAX_OPSET})")
    g = m.graph
    ctx = Ctx(opset)
    for init in g.initializer:
        ctx.add_const(init.name, numpy_helper.to_array(init))
    overrides = dict(input_shapes or {})
    inputs: list[str] = []
    problems: list[str] = []
    for vi in g.input:
        if vi.name in ctx.consts:
            continue
        dtype = ONNX_DTYPES.get(vi.type.tensor_type.elem_type)
        if dtype is None:
            problems.append(f"input {vi.name!r}: element type "
                            f"{vi.type.tensor_type.elem_type} is not supported")
            continue
        shape = overrides.pop(vi.name, None)
        if shape is None:
            shape = _value_shape(vi)
            if any(not isinstance(d, int) or d <= 0 for d in shape):
                problems.append(f"input {vi.name!r} has non-static shape {shape}; pass "
                                f"input_shapes={{{vi.name!r}: (...)}}")
                continue
        ctx.infos[vi.name] = TensorInfo(tuple(int(d) for d in shape), dtype)
        inputs.append(vi.name)
    if overrides:
        problems.append(f"input_shapes names unknown input(s) {sorted(overrides)}; inputs are "
                        f"{[vi.name for vi in g.input if vi.name not in ctx.consts]}")
    if problems:
        raise CompileError("cannot import model:\n  " + "\n  ".join(problems))

    errors: list[str] = []
    poisoned: set[str] = set()
    for k, n in enumerate(g.node):
        label = n.name or f"{n.op_type}_{k}"
        ctx.cur = label
        if any(i in poisoned for i in n.input if i):
            poisoned.update(o for o in n.output if o)
            continue
        conv = CONVERTERS.get(n.op_type) if n.domain in ("", "ai.onnx") else None
        conv = QUANT_CONVERTERS.get((n.domain, n.op_type), conv)
        try:
            if conv is None:
                dom = f" (domain {n.domain!r})" if n.domain not in ("", "ai.onnx") else ""
                raise Unsupported(f"operator {n.op_type}{dom} is not supported")
            missing = [i for i in n.input if i and i not in ctx.infos]
            if missing:
                raise Unsupported(f"reads undefined tensor(s) {missing}")
            conv(ctx, n, attrs_of(n))
        except Unsupported as exc:
            errors.append(f"node {label!r} ({n.op_type}): {exc}")
            poisoned.update(o for o in n.output if o)
        except (ValueError, IndexError, KeyError, TypeError) as exc:
            errors.append(f"node {label!r} ({n.op_type}): cannot convert ({exc!r})")
            poisoned.update(o for o in n.output if o)
    if errors:
        raise CompileError(f"model has {len(errors)} unsupported node(s):\n  "
                           + "\n  ".join(errors))
    outputs = [o.name for o in g.output]
    tensors = dict(ctx.infos)
    graph = Graph(inputs, outputs, ctx.nodes, ctx.consts, tensors, g.name or "model")
    return graph.replace(nodes=graph.nodes).verify()
