"""The target-independent graph rewrites: cleanup, constant and BN/affine folding, fusion.

Each is registered in :data:`~tessera.compiler.passes.pipeline.PASSES` under its name and has
the one pass contract ``apply(graph) -> (graph, changed)``; none mutates its input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from tessera.compiler.ir import Graph, Node
from tessera.compiler.passes.pipeline import PASSES, Pass, register
from tessera.compiler.reference import KERNELS
from tessera.errors import CompileError

__all__ = ["fold_constants", "remove_identity", "fold_batchnorm", "fold_affine",
           "fuse_activation", "fuse_residual", "dce", "GRAPH_PASSES"]

# The target-independent rewrites, in the order the compiler runs them.
GRAPH_PASSES = ("fold_constants", "remove_identity", "fuse_elementwise", "fold_batchnorm",
                "fold_affine", "fuse_activation", "fuse_residual", "dce")



def _substitute(nodes: Iterable[Node], mapping: dict[str, str]) -> list[Node]:
    out = []
    for n in nodes:
        if any(i in mapping for i in n.inputs):
            n = n.replace(inputs=tuple(mapping.get(i, i) for i in n.inputs))
        out.append(n)
    return out


# -- cleanup --------------------------------------------------------------------------------

@register("dce")
def dce(g: Graph) -> tuple[Graph, bool]:
    """Remove nodes none of whose outputs reach a graph output."""
    live = set(g.outputs)
    keep: list[Node] = []
    for n in reversed(g.nodes):
        if any(o in live for o in n.outputs):
            keep.append(n)
            live.update(i for i in n.inputs if i)
    if len(keep) == len(g.nodes):
        return g, False
    return g.replace(nodes=reversed(keep)), True


def _is_noop(g: Graph, n: Node) -> bool:
    a = n.attrs
    if n.op == "identity":
        return True
    src = g.tensors.get(n.inputs[0]) if n.inputs else None
    dst = g.tensors.get(n.outputs[0])
    if src is None or dst is None or src.shape != dst.shape:
        return False
    if n.op in ("reshape", "flatten", "slice"):
        return n.op != "slice" or src.shape == dst.shape
    if n.op == "transpose":
        return tuple(a["perm"]) == tuple(range(len(src.shape)))
    if n.op == "pad":
        return not any(a["pads"])
    if n.op == "concat":
        return len(n.inputs) == 1
    if n.op == "clip":
        return a["min"] == -np.inf and a["max"] == np.inf
    if n.op == "cast":
        return src.dtype == dst.dtype
    return False


@register("remove_identity")
def remove_identity(g: Graph) -> tuple[Graph, bool]:
    """Drop identity-like nodes (identity, no-op reshape/transpose/pad/clip/cast/concat) whose
    output is not a graph output, rewiring their consumers to their input."""
    mapping: dict[str, str] = {}
    kept: list[Node] = []
    for n in g.nodes:
        if _is_noop(g, n) and n.outputs[0] not in g.outputs:
            mapping[n.outputs[0]] = mapping.get(n.inputs[0], n.inputs[0])
            continue
        kept.append(n)
    if not mapping:
        return g, False
    return g.replace(nodes=_substitute(kept, mapping)), True


@register("fold_constants")
def fold_constants(g: Graph) -> tuple[Graph, bool]:
    """Evaluate nodes whose inputs are all constants."""
    consts = dict(g.constants)
    kept: list[Node] = []
    changed = False
    for n in g.nodes:
        if n.inputs and all((not i) or i in consts for i in n.inputs) and n.op in KERNELS \
                and not any(o in g.outputs for o in n.outputs):
            with np.errstate(all="ignore"):
                vals = KERNELS[n.op](n, *[consts[i] if i else None for i in n.inputs])
            for o, v in zip(n.outputs, vals):
                consts[o] = np.asarray(v).astype(g.tensors[o].dtype)
            changed = True
            continue
        kept.append(n)
    if not changed:
        return g, False
    return g.replace(nodes=kept, constants=consts), True


# -- folding into conv / dense ----------------------------------------------------------------

def _single_consumer(g: Graph, cons: dict[str, list[Node]], t: str) -> Node | None:
    users = cons.get(t, [])
    if len(users) != 1 or t in g.outputs:
        return None
    return users[0]


def _foldable_linear(n: Node) -> bool:
    return (n.op in ("conv2d", "dense") and n.attrs["act"] == "none"
            and not n.input(3))


def _rewrite(g: Graph, nodes: list[Node], consts: dict[str, np.ndarray]) -> Graph:
    return g.replace(nodes=nodes, constants=consts)


def _channel_vector(g: Graph, lin: Node, t: str) -> np.ndarray | None:
    """The per-output-channel values of constant ``t`` when it broadcasts along the channel
    axis of ``lin``'s output only; else None."""
    if t not in g.constants:
        return None
    v = g.constants[t]
    out = g.tensors[lin.outputs[0]].shape
    c = out[1]
    if v.ndim > len(out):
        return None
    full = (1,) * (len(out) - v.ndim) + v.shape
    if any(d != 1 for k, d in enumerate(full) if k != 1) or full[1] not in (1, c):
        return None
    return np.broadcast_to(v.reshape(-1), (c,)).astype(np.float32)


def _fold_into_linear(g: Graph, lin: Node, scale: np.ndarray | None,
                      shift: np.ndarray | None, consts: dict[str, np.ndarray],
                      out_name: str) -> Node:
    """New conv/dense computing ``lin(x) * scale + shift`` into tensor ``out_name``."""
    # one new weight array (the graph's constants are never written: no copy is made only
    # to be copied again; the values are those of the copies)
    w0 = g.constants[lin.inputs[1]]
    w = w0.astype(np.float32, copy=False)
    b = g.constants[lin.input(2)].astype(np.float32) if lin.input(2) else \
        np.zeros(w.shape[0], np.float32)
    if scale is not None:
        w = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))
        b = b * scale
    if shift is not None:
        b = b + shift
    wn = g.fresh(f"{lin.inputs[1]}_folded")
    bn = g.fresh(f"{lin.name}_bias_folded")
    consts[wn] = w.astype(np.float32, copy=w is w0)
    consts[bn] = b.astype(np.float32)
    return lin.replace(inputs=(lin.inputs[0], wn, bn), outputs=(out_name,))


@register("fold_batchnorm")
def fold_batchnorm(g: Graph) -> tuple[Graph, bool]:
    """conv2d/dense (constant weights) -> batchnorm: fold the BN into weights and bias.
    A batchnorm with no foldable producer becomes a per-channel mul + add of constants."""
    prod, cons = g.producers(), g.consumers()
    consts = dict(g.constants)
    nodes: list[Node] = []
    changed = False
    for n in g.nodes:
        if n.op != "batchnorm" or not all(i in consts for i in n.inputs[1:5]):
            nodes.append(n)
            continue
        gamma, beta, mean, var = (consts[i].astype(np.float64) for i in n.inputs[1:5])
        inv = gamma / np.sqrt(var + n.attrs["epsilon"])
        scale, shift = inv.astype(np.float32), (beta - mean * inv).astype(np.float32)
        lin = prod.get(n.inputs[0])
        if lin is not None and _foldable_linear(lin) and lin.inputs[1] in consts \
                and (not lin.input(2) or lin.input(2) in consts) \
                and _single_consumer(g, cons, n.inputs[0]) is n:
            idx = next(k for k, m in enumerate(nodes) if m is lin)
            nodes[idx] = _fold_into_linear(g, lin, scale, shift, consts, n.outputs[0])
            changed = True
            continue
        rank = len(g.tensors[n.inputs[0]].shape)
        shape = (-1,) + (1,) * (rank - 2)
        sn, bn = g.fresh(f"{n.name}_scale"), g.fresh(f"{n.name}_shift")
        consts[sn], consts[bn] = scale.reshape(shape), shift.reshape(shape)
        mid = g.fresh(f"{n.outputs[0]}_scaled")
        nodes.append(Node("mul", (n.inputs[0], sn), (mid,), {}, f"{n.name}_mul"))
        nodes.append(Node("add", (mid, bn), n.outputs, {}, f"{n.name}_add"))
        changed = True
    return (_rewrite(g, nodes, consts), True) if changed else (g, False)


@register("fold_affine")
def fold_affine(g: Graph) -> tuple[Graph, bool]:
    """conv2d/dense -> mul/add/sub/div by a per-output-channel constant: fold into weights/bias
    (this is also how a separate bias add becomes the conv's bias)."""
    prod, cons = g.producers(), g.consumers()
    consts = dict(g.constants)
    nodes = list(g.nodes)
    for k, n in enumerate(nodes):
        if n.op not in ("mul", "add", "sub", "div") or n.attrs["act"] != "none":
            continue
        for side in (0, 1):
            x, c = n.inputs[side], n.inputs[1 - side]
            lin = prod.get(x)
            if lin is None or not _foldable_linear(lin) or lin.inputs[1] not in consts \
                    or (lin.input(2) and lin.input(2) not in consts) \
                    or _single_consumer(g, cons, x) is not n or lin not in nodes:
                continue
            if (n.op in ("sub", "div") and side == 1):
                continue
            vec = _channel_vector(g, lin, c)
            if vec is None or g.tensors[n.outputs[0]].shape != g.tensors[x].shape:
                continue
            if n.op == "div" and np.any(vec == 0):
                continue
            scale = vec if n.op == "mul" else (1 / vec if n.op == "div" else None)
            shift = vec if n.op == "add" else (-vec if n.op == "sub" else None)
            idx = nodes.index(lin)
            nodes[idx] = _fold_into_linear(g, lin, scale, shift, consts, n.outputs[0])
            nodes[k] = None  # type: ignore[call-overload]
            out = _rewrite(g, [m for m in nodes if m is not None], consts)
            return out, True
    return g, False


# -- fusion ---------------------------------------------------------------------------------

_FUSE_INTO = ("conv2d", "dense", "add")


@register("fuse_activation")
def fuse_activation(g: Graph) -> tuple[Graph, bool]:
    """conv2d/dense/add -> relu or clip (single consumer): set the producer's ``act``."""
    prod, cons = g.producers(), g.consumers()
    nodes = list(g.nodes)
    changed = False
    for k, n in enumerate(nodes):
        if n is None or n.op not in ("relu", "clip"):
            continue
        p = prod.get(n.inputs[0])
        if p is None or p.op not in _FUSE_INTO or p.attrs["act"] != "none" \
                or _single_consumer(g, cons, n.inputs[0]) is not n:
            continue
        if n.op == "relu":
            fused = p.with_attrs(act="relu")
        elif n.attrs["min"] == 0.0 and n.attrs["max"] == np.inf:
            fused = p.with_attrs(act="relu")
        else:
            fused = p.with_attrs(act="clip", act_min=float(n.attrs["min"]),
                                 act_max=float(n.attrs["max"]))
        idx = next(j for j, m in enumerate(nodes) if m is p)
        nodes[idx] = fused.replace(outputs=n.outputs)
        nodes[k] = None  # type: ignore[call-overload]
        prod = {o: m for m in nodes if m is not None for o in m.outputs}
        changed = True
    if not changed:
        return g, False
    return g.replace(nodes=[m for m in nodes if m is not None]), True


@register("fuse_residual")
def fuse_residual(g: Graph) -> tuple[Graph, bool]:
    """conv2d/dense (no act) -> add(residual) [-> act]: one conv with a residual input, the
    add's activation applied after the sum (the accelerator adds the residual in its
    accumulator). The fused node takes the add's place in the order. When both inputs of the
    add are such convs, the one with the longer reduction per output (weight elements per
    output channel) carries the residual: its GEMM work per output row hides the longer
    epilogue (e.g. ResNet's 3x3 conv rather than its 1x1 downsample); ties go to the later."""
    prod, cons = g.producers(), g.consumers()
    order = {n: k for k, n in enumerate(g.nodes)}
    for n in g.nodes:
        if n.op != "add" or g.tensors[n.inputs[0]].shape != g.tensors[n.inputs[1]].shape:
            continue
        cands = []
        for side in (0, 1):
            p = prod.get(n.inputs[side])
            other = n.inputs[1 - side]
            if p is not None and _foldable_linear(p) and other not in g.constants \
                    and _single_consumer(g, cons, n.inputs[side]) is n \
                    and other != n.inputs[side]:
                red = 0
                if p.inputs[1] in g.constants:
                    w = g.constants[p.inputs[1]]
                    red = int(np.prod(w.shape[1:])) if w.ndim == 4 else int(w.shape[-1])
                cands.append(((red, order[p]), p, other))
        if not cands:
            continue
        _, p, other = max(cands, key=lambda c: c[0])
        inputs = (p.inputs[0], p.inputs[1], p.input(2), other)
        fused = p.replace(inputs=inputs, outputs=n.outputs, attrs={
            **p.attrs, "act": n.attrs["act"], "act_min": n.attrs["act_min"],
            "act_max": n.attrs["act_max"]})
        nodes = [fused if m is n else m for m in g.nodes if m is not p]
        return g.replace(nodes=nodes), True
    return g, False


def _fixpoint(fn: Callable[[Graph], tuple[Graph, bool]]) -> Callable[[Graph], tuple[Graph, bool]]:
    def run(g: Graph) -> tuple[Graph, bool]:
        any_change = False
        for _ in range(10_000):
            g, changed = fn(g)
            if not changed:
                return g, any_change
            any_change = True
        raise CompileError(f"pass {fn.__name__} did not converge")
    return run


for _name in ("fold_affine", "fuse_residual"):
    PASSES[_name] = Pass(_name, _fixpoint(PASSES[_name].apply))
