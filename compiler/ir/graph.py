"""Nodes, graphs, their memory placement, shape inference over a graph, and a graph builder
(see :mod:`tessera.compiler.ir`)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from tessera.compiler.ir.ops import OPS
from tessera.compiler.ir.tensor import DTYPES, TensorInfo
from tessera.errors import CompileError

__all__ = ["Node", "Graph", "MemoryPlan", "infer", "GraphBuilder"]


@dataclass(frozen=True, eq=False)
class Node:
    """One operation. ``attrs`` is treated as read-only; use :meth:`with_attrs` to change it."""

    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Mapping[str, Any] = field(default_factory=dict)
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        spec = OPS.get(self.op)
        attrs = dict(spec.defaults) if spec is not None else {}
        attrs.update(self.attrs)
        object.__setattr__(self, "attrs", attrs)
        if not self.name:
            object.__setattr__(self, "name", f"{self.op}:{self.outputs[0] if self.outputs else ''}")

    def with_attrs(self, **attrs: Any) -> Node:
        return replace(self, attrs={**self.attrs, **attrs})

    def replace(self, **changes: Any) -> Node:
        return replace(self, **changes)

    def input(self, i: int) -> str:
        """Input ``i`` or ``""`` when absent."""
        return self.inputs[i] if i < len(self.inputs) else ""

    def __str__(self) -> str:
        defaults = OPS[self.op].defaults if self.op in OPS else {}
        shown = {k: v for k, v in self.attrs.items() if not _same(defaults.get(k, _MISSING), v)}
        attrs = " ".join(f"{k}={_fmt(v)}" for k, v in shown.items())
        args = ", ".join(i or "_" for i in self.inputs)
        return f"{', '.join(self.outputs)} = {self.op}({args}){' ' + attrs if attrs else ''}"


_MISSING = object()


def _same(a: Any, b: Any) -> bool:
    if a is _MISSING:
        return False
    try:
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    except Exception:  # noqa: BLE001 - incomparable values are simply different
        return False


def _fmt(v: Any) -> str:
    if isinstance(v, np.ndarray):
        if v.size <= 8:
            return np.array2string(v, separator=",", precision=4).replace("\n", "")
        return f"array{list(v.shape)}"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return "(" + ",".join(_fmt(x) for x in v) + ")"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{_fmt(x)}" for k, x in v.items()) + "}"
    return str(v)


@dataclass(frozen=True)
class MemoryPlan:
    """Arena offsets (bytes) of every non-constant tensor of a graph, their reserved sizes, and
    live ranges in node indices (defined at ``live[t][0]``, last read at ``live[t][1]``; graph
    inputs and outputs live from -1 to the end)."""

    offsets: dict[str, int]
    sizes: dict[str, int]
    live: dict[str, tuple[int, int]]
    arena_size: int

    def overlaps(self) -> list[tuple[str, str]]:
        """Pairs of tensors live at the same time whose arena ranges intersect (should be [])."""
        names = sorted(self.offsets, key=self.offsets.__getitem__)
        bad = []
        for a_i, a in enumerate(names):
            for b in names[a_i + 1:]:
                if self.offsets[b] >= self.offsets[a] + self.sizes[a]:
                    break
                la, lb = self.live[a], self.live[b]
                if la[0] <= lb[1] and lb[0] <= la[1]:
                    bad.append((a, b))
        return bad


class Graph:
    """A computation graph. Construct with :meth:`Graph.build` to run shape inference.

    ``memory`` is the arena placement of its tensors once the ``plan_memory`` pass has run;
    any rewrite (:meth:`replace`) drops it.
    """

    def __init__(self, inputs: Sequence[str], outputs: Sequence[str], nodes: Iterable[Node],
                 constants: Mapping[str, np.ndarray], tensors: Mapping[str, TensorInfo],
                 name: str = "graph", memory: MemoryPlan | None = None):
        self.inputs = tuple(inputs)
        self.outputs = tuple(outputs)
        self.nodes = tuple(nodes)
        self.constants = dict(constants)
        self.tensors = dict(tensors)
        self.name = name
        self.memory = memory

    def with_memory(self, memory: MemoryPlan) -> Graph:
        """The same graph with an arena placement."""
        return Graph(self.inputs, self.outputs, self.nodes, self.constants, self.tensors,
                     self.name, memory)

    @classmethod
    def build(cls, inputs: Mapping[str, TensorInfo], outputs: Sequence[str],
              nodes: Iterable[Node], constants: Mapping[str, np.ndarray] | None = None,
              name: str = "graph") -> Graph:
        """A graph whose tensor table is inferred from its input types and constants."""
        g = cls(list(inputs), outputs, nodes, constants or {}, dict(inputs), name)
        return infer(g)

    def replace(self, *, nodes: Iterable[Node] | None = None,
                constants: Mapping[str, np.ndarray] | None = None,
                outputs: Sequence[str] | None = None, inputs: Sequence[str] | None = None,
                tensors: Mapping[str, TensorInfo] | None = None, reinfer: bool = True) -> Graph:
        """A new graph with some parts swapped; unused constants are dropped and, unless
        ``reinfer`` is False, the tensor table is re-inferred (keeping quantisation scales)."""
        nodes = tuple(self.nodes if nodes is None else nodes)
        outputs = tuple(self.outputs if outputs is None else outputs)
        inputs = tuple(self.inputs if inputs is None else inputs)
        consts = dict(self.constants if constants is None else constants)
        used = {i for n in nodes for i in n.inputs} | set(outputs)
        consts = {k: v for k, v in consts.items() if k in used}
        base = dict(self.tensors if tensors is None else tensors)
        g = Graph(inputs, outputs, nodes, consts, base, self.name)
        return infer(g, keep=base) if reinfer else g

    # -- queries ------------------------------------------------------------------------------

    def producers(self) -> dict[str, Node]:
        return {o: n for n in self.nodes for o in n.outputs}

    def consumers(self) -> dict[str, list[Node]]:
        out: dict[str, list[Node]] = {}
        for n in self.nodes:
            for i in n.inputs:
                if i:
                    out.setdefault(i, []).append(n)
        return out

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise CompileError(f"graph {self.name!r} has no tensor {name!r}") from None

    def is_const(self, name: str) -> bool:
        return name in self.constants

    def fresh(self, base: str) -> str:
        """A tensor/node name not used in this graph."""
        taken = set(self.tensors) | set(self.constants) | {n.name for n in self.nodes}
        if base not in taken:
            return base
        for k in itertools.count(1):
            if f"{base}_{k}" not in taken:
                return f"{base}_{k}"
        raise AssertionError("unreachable")

    def namer(self) -> Callable[[str], str]:
        """A generator of names used neither in this graph nor handed out by it before (for a
        rewrite that names several new tensors and nodes before the graph holds them)."""
        taken = set(self.tensors) | set(self.constants) | {n.name for n in self.nodes}

        def fresh(base: str) -> str:
            name, k = base, 0
            while name in taken:
                k += 1
                name = f"{base}_{k}"
            taken.add(name)
            return name
        return fresh

    def ops(self) -> list[str]:
        return [n.op for n in self.nodes]

    # -- printing and checking ----------------------------------------------------------------

    def dump(self) -> str:
        """Readable text form: one line per input, constant, node and output."""
        lines = [f"graph {self.name} {{"]
        for i in self.inputs:
            lines.append(f"  input  {i}: {self.tensors.get(i, '?')}")
        for k, v in self.constants.items():
            q = self.tensors.get(k)
            scale = f" @{q.scale:.4g}" if q is not None and q.scale is not None else ""
            lines.append(f"  const  {k}: {v.dtype}[{','.join(map(str, v.shape))}]{scale}")
        for n in self.nodes:
            types = ", ".join(str(self.tensors.get(o, "?")) for o in n.outputs)
            lines.append(f"  {n}    # {types}  [{n.name}]")
        for o in self.outputs:
            lines.append(f"  output {o}: {self.tensors.get(o, '?')}")
        if self.memory is not None:
            m = self.memory
            lines.append(f"  # arena: {m.arena_size} bytes")
            for t in sorted(m.offsets, key=lambda t: (m.offsets[t], t)):
                lo, hi = m.live[t]
                lines.append(f"  arena  {t}: [{m.offsets[t]:#x}, {m.offsets[t] + m.sizes[t]:#x})"
                             f" live {lo}..{hi}")
        lines.append("}")
        return "\n".join(lines)

    __str__ = dump

    def verify(self) -> Graph:
        """Check the graph is well formed; raises CompileError listing every problem found."""
        problems: list[str] = []
        defined = set(self.inputs) | set(self.constants)
        if len(set(self.inputs)) != len(self.inputs):
            problems.append("duplicate graph input names")
        for c, v in self.constants.items():
            if not isinstance(v, np.ndarray):
                problems.append(f"constant {c!r} is not a numpy array")
        names: set[str] = set()
        for n in self.nodes:
            if n.name in names:
                problems.append(f"node name {n.name!r} is used twice")
            names.add(n.name)
            if n.op not in OPS:
                problems.append(f"node {n.name!r}: unknown op {n.op!r}")
            for i in n.inputs:
                if i and i not in defined:
                    problems.append(f"node {n.name!r} ({n.op}) reads {i!r} before it is defined")
            for o in n.outputs:
                if o in defined:
                    problems.append(f"node {n.name!r} ({n.op}) redefines tensor {o!r}")
                defined.add(o)
        for o in self.outputs:
            if o not in defined:
                problems.append(f"graph output {o!r} is never defined")
        if problems:
            raise CompileError(f"invalid graph {self.name!r}:\n  " + "\n  ".join(problems))
        fresh = infer(Graph(self.inputs, self.outputs, self.nodes, self.constants,
                            {i: self.tensors[i] for i in self.inputs if i in self.tensors},
                            self.name))
        for t, ti in fresh.tensors.items():
            have = self.tensors.get(t)
            if have is None or have.shape != ti.shape or have.dtype != ti.dtype:
                problems.append(f"tensor {t!r}: recorded {have}, inferred {ti}")
        if problems:
            raise CompileError(f"invalid graph {self.name!r}:\n  " + "\n  ".join(problems))
        return self


# -- inference driver -------------------------------------------------------------------------

_DTYPE_NAMES: dict[np.dtype, str] = {}  # str(dtype) is slow; graphs re-infer often


def _const_dtype(v: np.ndarray) -> str:
    dt = _DTYPE_NAMES.get(v.dtype)
    if dt is None:
        dt = _DTYPE_NAMES[v.dtype] = str(v.dtype)
    if dt == "float64":
        dt = "float32"
    return dt if dt in DTYPES else "float32"


def _const_info(v: np.ndarray) -> TensorInfo:
    return TensorInfo(v.shape, _const_dtype(v))


def infer(g: Graph, keep: Mapping[str, TensorInfo] | None = None) -> Graph:
    """Recompute the tensor table of ``g`` from its inputs and constants, in node order.

    Input tensor infos are taken from ``g.tensors``; quantisation scales of other tensors are
    kept from ``keep`` (or ``g.tensors``) when the inferred op does not set one.
    """
    keep = g.tensors if keep is None else keep
    tensors: dict[str, TensorInfo] = {}
    for i in g.inputs:
        if i not in g.tensors:
            raise CompileError(f"graph input {i!r} has no shape/dtype")
        tensors[i] = g.tensors[i]
    for k, v in g.constants.items():
        old = keep.get(k)
        if old is not None and old.shape == v.shape and old.dtype == _const_dtype(v) \
                and (old.scale is None or old.scale):
            tensors[k] = old  # equal to what the lines below would build
            continue
        ti = _const_info(v)
        tensors[k] = replace(ti, scale=old.scale) if old is not None and old.scale else ti
    for n in g.nodes:
        spec = OPS.get(n.op)
        if spec is None:
            raise CompileError(f"node {n.name!r}: unknown op {n.op!r}")
        ins: list[TensorInfo | None] = []
        for i in n.inputs:
            if not i:
                ins.append(None)
            elif i in tensors:
                ins.append(tensors[i])
            else:
                raise CompileError(f"node {n.name!r} ({n.op}) reads undefined tensor {i!r}")
        outs = spec.infer(n, ins, g)
        for o, ti in zip(n.outputs, outs):
            old = keep.get(o)
            if ti.scale is None and old is not None and old.scale is not None \
                    and old.dtype == ti.dtype:
                ti = replace(ti, scale=old.scale)
            tensors[o] = ti
    return Graph(g.inputs, g.outputs, g.nodes, g.constants, tensors, g.name)


class GraphBuilder:
    """Small helper for building graphs by hand (tests, zoo-like snippets)::

        b = GraphBuilder()
        x = b.input("x", (1, 3, 8, 8))
        w = b.const("w", np.ones((4, 3, 3, 3), np.float32))
        y = b.node("conv2d", [x, w], pads=(1, 1, 1, 1))
        g = b.build([y])
    """

    def __init__(self, name: str = "graph"):
        self.name = name
        self.inputs: dict[str, TensorInfo] = {}
        self.constants: dict[str, np.ndarray] = {}
        self.nodes: list[Node] = []
        self._count = itertools.count()

    def input(self, name: str, shape: Sequence[int], dtype: str = "float32") -> str:
        self.inputs[name] = TensorInfo(tuple(shape), dtype)
        return name

    def const(self, name: str, value: np.ndarray) -> str:
        self.constants[name] = np.asarray(value)
        return name

    def node(self, op: str, inputs: Sequence[str], n_out: int = 1, name: str = "",
             **attrs: Any) -> Any:
        k = next(self._count)
        outs = tuple(f"{op}{k}" if n_out == 1 else f"{op}{k}_{j}" for j in range(n_out))
        self.nodes.append(Node(op, tuple(inputs), outs, attrs, name or f"{op}_{k}"))
        return outs[0] if n_out == 1 else outs

    def build(self, outputs: Sequence[str]) -> Graph:
        return Graph.build(self.inputs, outputs, self.nodes, self.constants, self.name).verify()
