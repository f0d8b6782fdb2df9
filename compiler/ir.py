"""The compiler's graph IR: one small, typed, immutable-ish graph every pass speaks.

A :class:`Graph` is a list of named inputs, named outputs, nodes in topological order, constants
(numpy arrays) and a :class:`TensorInfo` (shape, dtype and, for quantised tensors, a scale) for
every tensor. Tensors are named by strings; an absent optional input is ``""``. Nodes are frozen;
passes build new graphs with :meth:`Graph.replace` instead of mutating one while iterating.

Shape inference lives next to each op's attribute defaults in :data:`OPS`; :func:`infer` builds
the tensor table of a graph and :meth:`Graph.verify` checks structure and shapes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from tessera.errors import CompileError

__all__ = [
    "TensorInfo", "Node", "Graph", "OpSpec", "OPS", "DTYPES", "ACTIVATIONS", "infer",
    "conv_out_size", "pool_out_size", "GraphBuilder", "MemoryPlan", "blocked_shape",
]

DTYPES = ("float32", "int8", "int32", "int64", "uint8", "bool")
ACTIVATIONS = ("none", "relu", "clip")


@dataclass(frozen=True)
class TensorInfo:
    """Static type of one tensor. ``scale`` is set on quantised (int8/int32) tensors only:
    real value = integer value * scale (symmetric, zero point 0)."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    scale: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if self.dtype not in DTYPES:
            raise CompileError(f"dtype must be one of {DTYPES}, not {self.dtype!r}")

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize

    def __str__(self) -> str:
        q = f" @{self.scale:.4g}" if self.scale is not None else ""
        return f"{self.dtype}[{','.join(map(str, self.shape))}]{q}"


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


# -- op table ---------------------------------------------------------------------------------

InferFn = Callable[[Node, list[TensorInfo | None], Graph], list[TensorInfo]]


@dataclass(frozen=True)
class OpSpec:
    """An op of the IR: attribute defaults and shape/dtype inference."""

    name: str
    infer: InferFn
    defaults: Mapping[str, Any] = field(default_factory=dict)
    doc: str = ""


OPS: dict[str, OpSpec] = {}


def _op(name: str, doc: str = "", **defaults: Any) -> Callable[[InferFn], InferFn]:
    def deco(fn: InferFn) -> InferFn:
        OPS[name] = OpSpec(name, fn, defaults, doc)
        return fn
    return deco


def _err(node: Node, msg: str) -> CompileError:
    return CompileError(f"node {node.name!r} ({node.op}): {msg}")


def _need(node: Node, ins: list[TensorInfo | None], *idx: int) -> None:
    for i in idx:
        if i >= len(ins) or ins[i] is None:
            raise _err(node, f"input {i} is required")


def conv_out_size(size: int, k: int, stride: int, pad0: int, pad1: int, dil: int = 1,
                  ceil: bool = False) -> int:
    eff = dil * (k - 1) + 1
    span = size + pad0 + pad1 - eff
    out = (-(-span // stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + pad0:
        out -= 1  # the last window must start inside the input or its leading pad
    return out


pool_out_size = conv_out_size


def broadcast_shape(node: Node, *shapes: tuple[int, ...]) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise _err(node, f"shapes {' and '.join(map(str, shapes))} do not broadcast") from None


_FLOAT_EPI = dict(act="none", act_min=0.0, act_max=6.0)


@_op("conv2d", "y = act(conv(x, w, groups) + b [+ residual]); x NCHW, w OIHW, pads (t,l,b,r)",
     strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1, **_FLOAT_EPI)
def _conv2d(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0, 1)
    x, w = ins[0], ins[1]
    if len(x.shape) != 4 or len(w.shape) != 4:
        raise _err(node, f"conv2d needs 4-D input and weight, got {x.shape} and {w.shape}")
    n, c, h, wd = x.shape
    o, ci, kh, kw = w.shape
    grp = int(node.attrs["groups"])
    if grp < 1 or c % grp or o % grp or ci * grp != c:
        raise _err(node, f"input channels {c}, weight {w.shape} and groups {grp} disagree")
    (sh, sw), (dh, dw) = node.attrs["strides"], node.attrs["dilations"]
    pt, pl, pb, pr = node.attrs["pads"]
    oh = conv_out_size(h, kh, sh, pt, pb, dh)
    ow = conv_out_size(wd, kw, sw, pl, pr, dw)
    if oh < 1 or ow < 1:
        raise _err(node, f"kernel {kh}x{kw} does not fit input {h}x{wd} with the given pads")
    if len(ins) > 2 and ins[2] is not None and ins[2].shape != (o,):
        raise _err(node, f"bias must have shape ({o},), not {ins[2].shape}")
    out = (n, o, oh, ow)
    if len(ins) > 3 and ins[3] is not None and ins[3].shape != out:
        raise _err(node, f"residual must have shape {out}, not {ins[3].shape}")
    return [TensorInfo(out, x.dtype)]


@_op("dense", "y = act(x @ w.T + b [+ residual]); x [N,K], w [M,K]", **_FLOAT_EPI)
def _dense(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0, 1)
    x, w = ins[0], ins[1]
    if len(x.shape) != 2 or len(w.shape) != 2 or x.shape[1] != w.shape[1]:
        raise _err(node, f"dense needs x [N,K] and w [M,K], got {x.shape} and {w.shape}")
    if len(ins) > 2 and ins[2] is not None and ins[2].shape != (w.shape[0],):
        raise _err(node, f"bias must have shape ({w.shape[0]},), not {ins[2].shape}")
    out = (x.shape[0], w.shape[0])
    if len(ins) > 3 and ins[3] is not None and ins[3].shape != out:
        raise _err(node, f"residual must have shape {out}, not {ins[3].shape}")
    return [TensorInfo(out, x.dtype)]


@_op("matmul", "numpy matmul semantics (batched, broadcast)")
def _matmul(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0, 1)
    a, b = ins[0].shape, ins[1].shape
    if len(a) < 1 or len(b) < 1:
        raise _err(node, "matmul operands must have rank >= 1")
    a2 = (1,) + a if len(a) == 1 else a
    b2 = b + (1,) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise _err(node, f"inner dimensions of {a} and {b} differ")
    batch = broadcast_shape(node, a2[:-2], b2[:-2])
    out = batch + (a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return [TensorInfo(out, ins[0].dtype)]


def _binary(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0, 1)
    return [TensorInfo(broadcast_shape(node, ins[0].shape, ins[1].shape), ins[0].dtype)]


for _name in ("add", "sub", "mul", "div"):
    _op(_name, f"elementwise {_name} with numpy broadcasting, then act",
        **_FLOAT_EPI)(_binary)
for _name in ("max", "min", "pow"):
    _op(_name, f"elementwise {_name} with numpy broadcasting")(_binary)


def _unary(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0)
    return [TensorInfo(ins[0].shape, ins[0].dtype)]


_op("relu", "max(x, 0)")(_unary)
_op("clip", "min(max(x, min), max)", min=-np.inf, max=np.inf)(_unary)
_op("sigmoid", "1 / (1 + exp(-x))")(_unary)
_op("tanh", "tanh(x)")(_unary)
_op("exp", "exp(x)")(_unary)
_op("sqrt", "sqrt(x)")(_unary)
_op("neg", "-x")(_unary)
_op("leaky_relu", "x if x >= 0 else alpha * x", alpha=0.01)(_unary)
_op("identity", "y = x")(_unary)
_op("softmax", "softmax along one axis", axis=-1)(_unary)
_op("lrn", "local response normalisation across channels (ONNX LRN)",
    size=5, alpha=1e-4, beta=0.75, bias=1.0)(_unary)


@_op("batchnorm", "inference batch norm: (x - mean) / sqrt(var + eps) * scale + bias on axis 1",
     epsilon=1e-5)
def _batchnorm(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0, 1, 2, 3, 4)
    c = ins[0].shape[1] if len(ins[0].shape) > 1 else None
    for i in range(1, 5):
        if ins[i].shape != (c,):
            raise _err(node, f"parameter {i} must have shape ({c},), not {ins[i].shape}")
    return [TensorInfo(ins[0].shape, ins[0].dtype)]


def _pool(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0)
    x = ins[0]
    if len(x.shape) != 4:
        raise _err(node, f"pooling needs a 4-D NCHW input, got {x.shape}")
    kh, kw = node.attrs["kernel"]
    sh, sw = node.attrs["strides"]
    pt, pl, pb, pr = node.attrs["pads"]
    ceil = bool(node.attrs["ceil_mode"])
    oh = pool_out_size(x.shape[2], kh, sh, pt, pb, 1, ceil)
    ow = pool_out_size(x.shape[3], kw, sw, pl, pr, 1, ceil)
    if oh < 1 or ow < 1:
        raise _err(node, f"window {kh}x{kw} does not fit input {x.shape[2:]}")
    return [TensorInfo((x.shape[0], x.shape[1], oh, ow), x.dtype, x.scale)]


_op("maxpool", "max over windows; pads count as -inf", kernel=(2, 2), strides=(2, 2),
    pads=(0, 0, 0, 0), ceil_mode=False)(_pool)
_op("avgpool", "mean over windows", kernel=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0),
    ceil_mode=False, count_include_pad=False)(_pool)


def _global_pool(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0)
    x = ins[0]
    if len(x.shape) < 3:
        raise _err(node, f"global pooling needs rank >= 3, got {x.shape}")
    return [TensorInfo(x.shape[:2] + (1,) * (len(x.shape) - 2), x.dtype)]


_op("global_avgpool", "mean over all spatial axes (keeps them as size 1)")(_global_pool)
_op("global_maxpool", "max over all spatial axes (keeps them as size 1)")(_global_pool)


@_op("mean", "mean over axes", axes=(-1,), keepdims=True)
def _mean(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0)
    shape = ins[0].shape
    axes = {a % len(shape) for a in node.attrs["axes"]}
    out = tuple(1 if i in axes else d for i, d in enumerate(shape)
                if node.attrs["keepdims"] or i not in axes)
    return [TensorInfo(out, ins[0].dtype)]


@_op("flatten", "reshape to [prod(shape[:axis]), prod(shape[axis:])]", axis=1)
def _flatten(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0)
    s = ins[0].shape
    a = node.attrs["axis"] % (len(s) + 1) if node.attrs["axis"] < 0 else node.attrs["axis"]
    return [TensorInfo((int(np.prod(s[:a])), int(np.prod(s[a:]))), ins[0].dtype, ins[0].scale)]


@_op("reshape", "static reshape (shape fully known, no -1 or 0)", shape=())
def _reshape(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0)
    shape = tuple(int(d) for d in node.attrs["shape"])
    if any(d < 0 for d in shape) or int(np.prod(shape)) != ins[0].size:
        raise _err(node, f"cannot reshape {ins[0].shape} to {shape}")
    return [TensorInfo(shape, ins[0].dtype, ins[0].scale)]


@_op("transpose", "permute axes", perm=())
def _transpose(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0)
    s = ins[0].shape
    perm = tuple(node.attrs["perm"]) or tuple(reversed(range(len(s))))
    if sorted(perm) != list(range(len(s))):
        raise _err(node, f"perm {perm} is not a permutation of {len(s)} axes")
    return [TensorInfo(tuple(s[p] for p in perm), ins[0].dtype, ins[0].scale)]


@_op("concat", "concatenate along axis", axis=1)
def _concat(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    if not ins or any(i is None for i in ins):
        raise _err(node, "concat needs at least one input, all present")
    r = len(ins[0].shape)
    ax = node.attrs["axis"] % r
    for i in ins[1:]:
        if len(i.shape) != r or any(a != b for k, (a, b) in enumerate(zip(i.shape, ins[0].shape))
                                    if k != ax):
            raise _err(node, f"input shapes {[i.shape for i in ins]} differ off axis {ax}")
    shape = list(ins[0].shape)
    shape[ax] = sum(i.shape[ax] for i in ins)
    return [TensorInfo(tuple(shape), ins[0].dtype)]


@_op("slice", "static slice: per-axis starts/ends/steps (numpy semantics, clamped)",
     starts=(), ends=(), axes=(), steps=())
def _slice(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0)
    shape = list(ins[0].shape)
    a = node.attrs
    steps = a["steps"] or (1,) * len(a["starts"])
    for s, e, ax, st in zip(a["starts"], a["ends"], a["axes"], steps):
        shape[ax] = len(range(*slice(s, e, st).indices(shape[ax])))
    return [TensorInfo(tuple(shape), ins[0].dtype, ins[0].scale)]


@_op("pad", "constant pad; pads = begins of every axis then ends (ONNX order)",
     pads=(), value=0.0)
def _pad(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0)
    s = ins[0].shape
    p = node.attrs["pads"]
    if len(p) != 2 * len(s):
        raise _err(node, f"pads must have {2 * len(s)} entries, not {len(p)}")
    shape = tuple(d + p[i] + p[i + len(s)] for i, d in enumerate(s))
    if min(shape) < 0:
        raise _err(node, f"pads {p} make a negative dimension")
    return [TensorInfo(shape, ins[0].dtype, ins[0].scale)]


@_op("cast", "convert dtype", to="float32")
def _cast(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0)
    return [TensorInfo(ins[0].shape, node.attrs["to"])]


# -- quantised ops (integer semantics are in compiler.reference) ------------------------------

@_op("quantize", "float -> int8: clip(round_half_even(x / scale), lo, hi)",
     scale=1.0, lo=-128, hi=127)
def _quantize(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0)
    return [TensorInfo(ins[0].shape, "int8", float(node.attrs["scale"]))]


@_op("dequantize", "int -> float: x * scale", scale=1.0)
def _dequantize(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0)
    return [TensorInfo(ins[0].shape, "float32")]


def _qout(node: Node, shape: tuple[int, ...]) -> list[TensorInfo]:
    return [TensorInfo(shape, "int8", float(node.attrs["out_scale"]))]


_QEPI = dict(epilogue=None, out_scale=1.0)
# An accelerator layer reads and writes SPEC §2 blocked tensors once layouts are assigned
# (``layout="blocked"``); ``in_shape`` is then the logical NCHW / NC shape of its input.
_QLAYOUT = dict(layout="nchw", block=16, batch=1, in_shape=())


def blocked_shape(shape: tuple[int, ...], block: int, batch: int) -> tuple[int, ...]:
    """The packed shape of a 4-D NCHW or 2-D NC tensor (SPEC §2)."""
    n, c = -(-shape[0] // batch), -(-shape[1] // block)
    return (n, c) + tuple(shape[2:]) + (batch, block)


def _logical(node: Node, ins: list, infer: InferFn, g: Graph) -> list[TensorInfo]:
    """Inference of a (possibly blocked) accelerator layer: its logical output, or that
    output's blocked shape when ``layout == "blocked"``."""
    a = node.attrs
    if a["layout"] == "nchw":
        return infer(node, ins, g)
    if a["layout"] != "blocked":
        raise _err(node, f"layout must be 'nchw' or 'blocked', not {a['layout']!r}")
    _need(node, ins, 0)
    blk, bat = int(a["block"]), int(a["batch"])
    x = tuple(a["in_shape"])
    if len(x) not in (2, 4) or ins[0].shape != blocked_shape(x, blk, bat):
        raise _err(node, f"blocked input {ins[0].shape} does not pack in_shape {x}")
    plain = [TensorInfo(x, ins[0].dtype, ins[0].scale)] + list(ins[1:3])
    out = infer(node, plain, g)[0]
    if len(ins) > 3 and ins[3] is not None:
        if ins[3].shape != blocked_shape(out.shape, blk, bat):
            raise _err(node, f"blocked residual must have shape "
                             f"{blocked_shape(out.shape, blk, bat)}, not {ins[3].shape}")
    return [replace(out, shape=blocked_shape(out.shape, blk, bat))]


@_op("qconv2d", "int8 conv: acc = conv(x, w) + b (int32), then the requant epilogue",
     strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1, **_QEPI, **_QLAYOUT)
def _qconv2d(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    return _logical(node, ins, lambda n, i, gr: _qout(n, _conv2d(n, i, gr)[0].shape), g)


@_op("qdense", "int8 dense: acc = x @ w.T + b (int32), then the requant epilogue", **_QEPI,
     **_QLAYOUT)
def _qdense(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    return _logical(node, ins, lambda n, i, gr: _qout(n, _dense(n, i, gr)[0].shape), g)


@_op("qadd", "int8 add of two rescaled branches, then the requant epilogue", **_QEPI)
def _qadd(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0, 1)
    if ins[0].shape != ins[1].shape:
        raise _err(node, f"qadd needs equal shapes, got {ins[0].shape} and {ins[1].shape}")
    return _qout(node, ins[0].shape)


@_op("requant", "int8/int32 -> int8 through the requant epilogue", **_QEPI)
def _requant(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0)
    return _qout(node, ins[0].shape)


@_op("qavgpool", "int8 window sum (int32) then the requant epilogue (divisor folded in)",
     kernel=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0), ceil_mode=False,
     count_include_pad=False, **_QEPI)
def _qavgpool(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    return _qout(node, _pool(node, ins, g)[0].shape)


@_op("qglobal_avgpool", "int8 spatial sum (int32) then the requant epilogue", **_QEPI)
def _qglobal_avgpool(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    return _qout(node, _global_pool(node, ins, g)[0].shape)


# -- layout ops -------------------------------------------------------------------------------

@_op("pack", "NCHW -> (N/B, ceil(C/BLK), H, W, B, BLK), zero padded (SPEC §2); 2-D NC -> "
     "(N/B, ceil(C/BLK), B, BLK)", block=16, batch=1)
def _pack(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0)
    s = ins[0].shape
    if len(s) not in (2, 4):
        raise _err(node, f"pack needs a 2-D or 4-D tensor, got {s}")
    packed = blocked_shape(s, int(node.attrs["block"]), int(node.attrs["batch"]))
    return [TensorInfo(packed, ins[0].dtype, ins[0].scale)]


@_op("unpack", "inverse of pack, cropping to the logical shape", shape=())
def _unpack(node: Node, ins: list, g: Graph) -> list[TensorInfo]:
    _need(node, ins, 0)
    return [TensorInfo(tuple(node.attrs["shape"]), ins[0].dtype, ins[0].scale)]


# -- inference driver -------------------------------------------------------------------------

def _const_info(v: np.ndarray) -> TensorInfo:
    dt = str(v.dtype)
    if dt == "float64":
        dt = "float32"
    return TensorInfo(v.shape, dt if dt in DTYPES else "float32")


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
        ti = _const_info(v)
        old = keep.get(k)
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
