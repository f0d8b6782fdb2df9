"""ONNX -> IR. Imports a model with static shapes, folding shape arithmetic and constants.

Handles the default-domain opsets 7–25. A node of a later opset imports when its op's schema
there has the signature (attributes and their defaults, inputs, outputs) of its opset-25 version
(later versions that only widened the type constraints) or is a version the converter implements
(:data:`NEWER_VERSIONS`); a node of an opset below 7 imports when its op is unchanged up to opset
7. Zero-sized dimensions are static shapes like any other. Anything computable
from constants alone (initializers, Constant, ConstantOfShape, Shape of a static tensor, Gather,
Range, Cast, ...) is evaluated at import time. An unsupported model raises one
:class:`~tessera.compiler.frontend.context.ImportProblems` (a :class:`CompileError`) listing every
offending node with its name, op, domain and reason — nodes downstream of a failure included:
the outputs of a node that cannot be converted take their types from ONNX shape inference, so
conversion continues past it. A node that cannot even be checked because it needs a value an
unsupported node computes is listed separately, naming the node it depends on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import onnx
from onnx import numpy_helper

# The op families register their converters on import.
from tessera.compiler.frontend import ops_math, ops_nn, ops_rnn, ops_shape, qlinear  # noqa: F401
from tessera.compiler.frontend.context import (
    ONNX_DTYPES,
    Ctx,
    ImportProblems,
    Unsupported,
    attrs_of,
    onnx_dtype_name,
)
from tessera.compiler.frontend.registry import CONVERTERS, domain_of, supported_ops
from tessera.compiler.ir import Graph, Node, TensorInfo
from tessera.errors import CompileError
from tessera.files import open_regular

__all__ = ["import_onnx", "load_model", "SUPPORTED_ONNX_OPS", "MIN_OPSET", "MAX_OPSET"]

MIN_OPSET = 7  # older models import node by node (see the module docstring)
MAX_OPSET = 25  # the newest default-domain opset whose op schemas the converters implement
# schema versions after MAX_OPSET that the converters implement in full
NEWER_VERSIONS = {"SpaceToDepth": 28, "Range": 27}
SUPPORTED_ONNX_OPS = supported_ops()


def load_model(model: str | Path | bytes | onnx.ModelProto) -> onnx.ModelProto:
    """Accept a path, serialized bytes or a ModelProto."""
    if isinstance(model, onnx.ModelProto):
        return model
    if not isinstance(model, (bytes, bytearray, str, Path)):
        raise CompileError(f"model must be a path, bytes or onnx.ModelProto, not "
                           f"{type(model).__name__}")
    if isinstance(model, (str, Path)):
        # a regular file only: never block on a FIFO or read a device such as /dev/zero
        os.close(open_regular(model, "ONNX model", CompileError)[0])
    try:
        if isinstance(model, (bytes, bytearray)):
            return onnx.load_from_string(bytes(model))
        return onnx.load(str(model))
    except Exception as exc:  # noqa: BLE001 - onnx raises many types for a corrupt file
        raise CompileError(f"cannot load ONNX model {str(model)[:80]!r}: {exc}") from None


def _value_shape(vi: onnx.ValueInfoProto) -> list[int | str]:
    dims = vi.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]


def _default_opset(m: onnx.ModelProto) -> int | None:
    return next((o.version for o in m.opset_import if domain_of(o.domain) == ""), None)


@lru_cache(maxsize=1024)
def _schema(op: str, opset: int) -> onnx.defs.OpSchema | None:
    """ONNX's schema of ``op`` at ``opset`` (memoised: a model asks per node, ~0.2 ms each)."""
    try:
        return onnx.defs.get_schema(op, opset, "")
    except onnx.defs.SchemaError:
        return None


def _since_version(n: onnx.NodeProto, opset: int) -> int | None:
    """The opset version that defined the schema of ``n`` in a model of ``opset``, or None when
    ONNX does not know the op."""
    s = _schema(n.op_type, opset)
    return None if s is None else s.since_version


def _signature(s: onnx.defs.OpSchema) -> tuple:
    attrs = tuple((name, a.type, a.default_value.SerializeToString())
                  for name, a in sorted(s.attributes.items()))
    return (attrs, tuple((i.name, i.option) for i in s.inputs),
            tuple((o.name, o.option) for o in s.outputs))


def _version_problem(n: onnx.NodeProto, opset: int) -> str | None:
    """Why the converters cannot take this node's schema version, or None."""
    since = _since_version(n, opset)
    if since is None:
        return None
    if since > MAX_OPSET and since > NEWER_VERSIONS.get(n.op_type, 0):
        known = _schema(n.op_type, MAX_OPSET)
        if known is None or _signature(known) != _signature(_schema(n.op_type, opset)):
            return (f"{n.op_type} of opset {opset} is the version of opset {since}, whose "
                    f"signature differs from the opset-{MAX_OPSET} version the converters know")
    if since < MIN_OPSET and _since_version(n, MIN_OPSET) != since:
        return (f"{n.op_type} of opset {opset} is the version of opset {since}, older than the "
                f"opset-{MIN_OPSET} version the converters know")
    return None


class _Types:
    """Static tensor types from ONNX shape inference (computed on first use)."""

    def __init__(self, m: onnx.ModelProto, inputs: Mapping[str, TensorInfo]):
        self.m, self.inputs = m, inputs
        self._types: dict[str, TensorInfo] | None = None

    def get(self, name: str) -> TensorInfo | None:
        if self._types is None:
            self._types = self._infer()
        return self._types.get(name)

    def _infer(self) -> dict[str, TensorInfo]:
        m = onnx.ModelProto()
        m.CopyFrom(self.m)
        for vi in m.graph.input:
            ti = self.inputs.get(vi.name)
            if ti is None:
                continue
            shape = vi.type.tensor_type.shape
            shape.ClearField("dim")
            for d in ti.shape:
                shape.dim.add().dim_value = d
        try:
            m = onnx.shape_inference.infer_shapes(m, check_type=False, strict_mode=False,
                                                  data_prop=True)
        except Exception:  # noqa: BLE001 - inference is best effort: without it, types stop
            return {}
        out: dict[str, TensorInfo] = {}
        for vi in list(m.graph.value_info) + list(m.graph.output):
            dtype = ONNX_DTYPES.get(vi.type.tensor_type.elem_type)
            if dtype is None or not vi.type.tensor_type.HasField("shape"):
                continue
            shape = _value_shape(vi)
            if all(isinstance(d, int) and d >= 0 for d in shape):
                out[vi.name] = TensorInfo(tuple(shape), dtype)
        return out


def _ancestors(g: onnx.GraphProto, inputs: Sequence[str]) -> dict[str, frozenset[str]]:
    """For every tensor, the graph inputs its value depends on."""
    dep: dict[str, frozenset[str]] = {i: frozenset([i]) for i in inputs}
    for n in g.node:
        s = frozenset().union(*(dep.get(i, frozenset()) for i in n.input if i))
        for o in n.output:
            if o:
                dep[o] = s
    return dep


def _label(n: onnx.NodeProto, k: int) -> str:
    return n.name or f"{n.op_type}_{k}"


def _problem(n: onnx.NodeProto, label: str, reason: str, **extra: Any) -> dict[str, Any]:
    return {"node": label, "op": n.op_type, "domain": n.domain or "ai.onnx", "reason": reason,
            "depends_on": [], "needs_constant": [], **extra}


def _format(p: dict[str, Any]) -> str:
    return f"node {p['node']!r} (op {p['op']}, domain {p['domain']!r}): {p['reason']}"


def import_onnx(model: str | Path | bytes | onnx.ModelProto,
                input_shapes: Mapping[str, Sequence[int]] | None = None) -> Graph:
    """Import an ONNX model into a verified IR graph with static shapes.

    ``input_shapes`` overrides (or fixes symbolic) input shapes, e.g. ``{"x": (1, 3, 32, 32)}``.
    Raises :class:`ImportProblems` (a CompileError) listing every unsupported node, or naming an
    input whose shape is not static.
    """
    m = load_model(model)
    opset = _default_opset(m)
    if opset is None or opset < 1:
        raise CompileError(f"the model must import a default-domain (ai.onnx) opset >= 1, not "
                           f"{opset}")
    opsets = {domain_of(o.domain): int(o.version) for o in m.opset_import}
    g = m.graph
    ctx = Ctx(opset, opsets)
    for n in g.node:
        for i in dict.fromkeys(x for x in n.input if x):
            ctx.readers.setdefault(i, []).append(n.op_type)
    ctx.graph_outputs = frozenset(o.name for o in g.output)
    problems: list[str] = []
    for init in g.initializer:
        try:
            ctx.add_const(init.name, numpy_helper.to_array(init))
        except Unsupported as exc:
            problems.append(f"initializer {init.name!r}: {exc}")
        except Exception as exc:  # noqa: BLE001 - malformed tensor data in an untrusted file
            problems.append(f"initializer {init.name!r} cannot be read: {exc}")
    overrides = dict(input_shapes or {})
    inputs: list[str] = []
    for vi in g.input:
        if vi.name in ctx.consts:
            continue
        elem = vi.type.tensor_type.elem_type
        dtype = ONNX_DTYPES.get(elem)
        if dtype is None:
            problems.append(f"input {vi.name!r}: element type {onnx_dtype_name(elem)} is not "
                            f"supported (supported: float, double as float, int8, uint8, int32, "
                            f"int64, bool)")
            continue
        shape = overrides.pop(vi.name, None)
        if shape is None:
            shape = _value_shape(vi)
            if not vi.type.tensor_type.HasField("shape"):
                shape = ["unknown rank"]
            if any(not isinstance(d, int) or d < 0 for d in shape):
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
    _convert_nodes(m, ctx, inputs)
    return _finish(g, ctx, inputs)


def _convert_nodes(m: onnx.ModelProto, ctx: Ctx, inputs: list[str]) -> None:
    g = m.graph
    types = _Types(m, {i: ctx.infos[i] for i in inputs})
    deps = _ancestors(g, inputs)
    errors: list[dict[str, Any]] = []
    dependent: list[dict[str, Any]] = []
    unknown: dict[str, str] = {}  # tensor -> failing node label, when its type is unknown
    for k, n in enumerate(g.node):
        label = _label(n, k)
        ctx.cur = label
        blocked = sorted({unknown[i] for i in n.input if i in unknown})
        if blocked:
            dependent.append(_problem(n, label, "its inputs come from unsupported node(s) "
                                      f"{blocked} whose output types are unknown",
                                      depends_on=blocked))
            unknown.update({o: label for o in n.output if o})
            continue
        try:
            _convert_one(ctx, n)
        except (Unsupported, ValueError, IndexError, KeyError, TypeError) as exc:
            if isinstance(exc, Unsupported):
                reason = str(exc)
            else:
                reason = f"cannot convert ({type(exc).__name__}: {exc})"
            need = sorted(deps.get(exc.tensor, frozenset())) \
                if isinstance(exc, Unsupported) and exc.tensor else []
            feeder = ctx.placeholders.get(exc.tensor) \
                if isinstance(exc, Unsupported) and exc.tensor else None
            if feeder is not None:
                dependent.append(_problem(n, label, f"{reason}; it is computed by unsupported "
                                          f"node {feeder!r}", depends_on=[feeder],
                                          needs_constant=need))
            else:
                errors.append(_problem(n, label, reason, needs_constant=need))
            for o in n.output:
                if not o or o in ctx.infos:
                    continue
                ti = types.get(o)
                if ti is None:
                    unknown[o] = label
                else:
                    ctx.infos[o] = ti
                    ctx.placeholders[o] = label
    if errors or dependent:
        lines = [f"model has {len(errors)} unsupported node(s):"] + [
            "  " + _format(p) for p in errors]
        if dependent:
            lines.append(f"and {len(dependent)} node(s) that cannot be checked because they "
                         f"depend on unsupported nodes:")
            lines += ["  " + _format(p) for p in dependent]
        raise ImportProblems("\n".join(lines), errors + dependent)


def _convert_one(ctx: Ctx, n: onnx.NodeProto) -> None:
    dom = domain_of(n.domain)
    conv = CONVERTERS.get((dom, n.op_type))
    if conv is None:
        if dom not in ("", "ai.onnx.ml") or _since_version(n, ctx.opset) is not None:
            raise Unsupported(f"operator {n.op_type} is not supported")
        raise Unsupported(f"operator {n.op_type} is not an ONNX operator of domain "
                          f"{n.domain or 'ai.onnx'!r}")
    if dom == "":
        problem = _version_problem(n, ctx.opset)
        if problem:
            raise Unsupported(problem)
    missing = [i for i in n.input if i and i not in ctx.infos]
    if missing:
        raise Unsupported(f"reads undefined tensor(s) {missing}")
    conv(ctx, n, attrs_of(n))


def _finish(g: onnx.GraphProto, ctx: Ctx, inputs: list[str]) -> Graph:
    outputs = [o.name for o in g.output]
    missing = [o for o in outputs if o not in ctx.infos]
    if missing:
        raise CompileError(f"graph output(s) {missing} are never computed")
    nodes = list(ctx.nodes)
    consts = dict(ctx.consts)
    renamed: dict[str, str] = {}
    for o in dict.fromkeys(outputs):
        if o in consts:  # a computed-at-import output still needs a run-time tensor
            src = ctx.tmp(f"{o}:value")
            consts[src] = consts.pop(o)
            renamed[o] = src
    if renamed:
        nodes = [n.replace(inputs=tuple(renamed.get(i, i) for i in n.inputs)) for n in nodes]
        nodes += [Node("identity", (src,), (o,), {}, f"{o}:materialise")
                  for o, src in renamed.items()]
    tensors = dict(ctx.infos)
    graph = Graph(inputs, outputs, nodes, consts, tensors, g.name or "model")
    return graph.replace(nodes=graph.nodes).verify()
