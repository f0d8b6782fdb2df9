"""The ``fuse_elementwise`` pass: activation functions exported as chains of elementwise ops
become one IR op.

- SiLU / Swish: ``x * sigmoid(x)`` -> ``silu(x)``;
- Mish: ``x * tanh(softplus(x))`` -> ``mish(x)``;
- HardSigmoid spelled out: ``clip(x + 3, 0, 6) / 6`` (or ``* (1/6)``) -> ``hard_sigmoid(x,
  alpha=1/6, beta=1/2)``, unless ``x`` is the only use of a conv/dense output (there the add
  folds into the layer's bias and the clip into its epilogue, which the accelerator runs);
- HardSwish: ``x * hard_sigmoid(x, 1/6, 1/2)`` and ``x * clip(x + 3, 0, 6) / 6`` ->
  ``hard_swish(x)``;
- GELU (erf form): ``x * 0.5 * (1 + erf(x / sqrt(2)))`` in PyTorch's and TF's operand orders ->
  ``gelu(x)``.

An intermediate tensor is absorbed only when the chain is its sole use and it is not a graph
output; the result equals the chain up to float32 rounding.
"""

from __future__ import annotations

import math

from tessera.compiler.ir import Graph, Node
from tessera.compiler.passes.pipeline import register

__all__ = ["fuse_elementwise"]


class _View:
    def __init__(self, g: Graph):
        self.g = g
        self.prod = g.producers()
        self.cons = g.consumers()

    def scalar(self, t: str) -> float | None:
        """The value of a constant that holds one number (any shape of size 1)."""
        v = self.g.constants.get(t)
        if v is None or v.size != 1 or v.dtype.kind != "f":
            return None
        return float(v.reshape(-1)[0])

    def only_use(self, t: str) -> Node | None:
        """The producer of ``t`` when ``t`` has exactly one consumer and is not an output."""
        if t in self.g.outputs or len(self.cons.get(t, [])) != 1:
            return None
        return self.prod.get(t)

    def producer(self, t: str, op: str, sole: bool = True) -> Node | None:
        p = self.only_use(t) if sole else self.prod.get(t)
        return p if p is not None and p.op == op and p.attrs.get("act", "none") == "none" \
            else None

    def plain(self, n: Node) -> bool:
        return n.attrs.get("act", "none") == "none"


def _close(v: float | None, want: float, rel: float = 1e-4) -> bool:
    return v is not None and math.isclose(v, want, rel_tol=rel)


def _clip_x_plus_3(v: _View, t: str) -> tuple[str, list[Node]] | None:
    """(x, nodes) when ``t = clip(x + 3, 0, 6)``: an add then a 0..6 clip, or an add whose
    fused activation is that clip."""
    c = v.only_use(t)
    if c is None:
        return None
    if c.op == "clip" and c.attrs["min"] == 0.0 and c.attrs["max"] == 6.0:
        add = v.producer(c.inputs[0], "add")
        nodes = [c, add]
    elif c.op == "add" and c.attrs["act"] == "clip" and c.attrs["act_min"] == 0.0 \
            and c.attrs["act_max"] == 6.0:
        add, nodes = c, [c]
    else:
        return None
    if add is None:
        return None
    for side in (0, 1):
        if _close(v.scalar(add.inputs[1 - side]), 3.0):
            return add.inputs[side], nodes
    return None


def _hard_sigmoid_of(v: _View, t: str) -> tuple[str, list[Node]] | None:
    """``t = clip(x + 3, 0, 6) / 6`` or ``* (1/6)``, or hard_sigmoid(x, 1/6, 1/2)."""
    n = v.only_use(t)
    if n is None or not v.plain(n):
        return None
    if n.op == "hard_sigmoid" and _close(n.attrs["alpha"], 1 / 6) and \
            _close(n.attrs["beta"], 0.5):
        return n.inputs[0], [n]
    scale = (v.scalar(n.inputs[1]) if n.op == "div" else None)
    if n.op == "div" and _close(scale, 6.0) or n.op == "mul" and (
            _close(v.scalar(n.inputs[1]), 1 / 6) or _close(v.scalar(n.inputs[0]), 1 / 6)):
        inner = n.inputs[0] if n.op == "div" or v.scalar(n.inputs[0]) is None else n.inputs[1]
        m = _clip_x_plus_3(v, inner)
        if m is not None:
            return m[0], m[1] + [n]
    return None


def _linear_output(v: _View, x: str) -> bool:
    p = v.prod.get(x)
    return p is not None and p.op in ("conv2d", "dense") and len(v.cons.get(x, [])) == 1


def _match(v: _View, n: Node) -> tuple[str, str, dict, list[Node]] | None:
    """(op, x, attrs, absorbed nodes) when ``n`` ends a fusable chain."""
    if not v.plain(n):
        return None
    if n.op == "mul":
        for side in (0, 1):
            x, other = n.inputs[side], n.inputs[1 - side]
            p = v.producer(other, "sigmoid")
            if p is not None and p.inputs[0] == x:
                return "silu", x, {}, [p]
            t = v.producer(other, "tanh")
            sp = v.producer(t.inputs[0], "softplus") if t is not None else None
            if sp is not None and sp.inputs[0] == x:
                return "mish", x, {}, [t, sp]
            hs = _hard_sigmoid_of(v, other)
            if hs is not None and hs[0] == x:
                return "hard_swish", x, {}, hs[1]
            gelu = _gelu_half(v, x, other)
            if gelu is not None:
                return "gelu", x, {}, gelu
        # (x * 0.5) * (1 + erf(x / sqrt2))
        for side in (0, 1):
            half = v.producer(n.inputs[side], "mul")
            if half is None:
                continue
            for hs_side in (0, 1):
                if _close(v.scalar(half.inputs[1 - hs_side]), 0.5):
                    x = half.inputs[hs_side]
                    tail = _one_plus_erf(v, n.inputs[1 - side], x)
                    if tail is not None:
                        return "gelu", x, {}, [half] + tail
        # (x * (1 + erf(x / sqrt2))) * 0.5
        for side in (0, 1):
            if _close(v.scalar(n.inputs[1 - side]), 0.5):
                inner = v.producer(n.inputs[side], "mul")
                if inner is None:
                    continue
                for xs in (0, 1):
                    x = inner.inputs[xs]
                    tail = _one_plus_erf(v, inner.inputs[1 - xs], x)
                    if tail is not None:
                        return "gelu", x, {}, [inner] + tail
    if n.op == "div" and _close(v.scalar(n.inputs[1]), 6.0):
        # (x * clip(x + 3, 0, 6)) / 6
        m = v.producer(n.inputs[0], "mul")
        if m is not None:
            for side in (0, 1):
                c = _clip_x_plus_3(v, m.inputs[1 - side])
                if c is not None and c[0] == m.inputs[side]:
                    return "hard_swish", c[0], {}, [m] + c[1]
    if n.op in ("div", "mul"):
        hs = _hard_sigmoid_of(_Sole(v, n), n.outputs[0])
        if hs is not None and not _linear_output(v, hs[0]):
            return "hard_sigmoid", hs[0], {"alpha": 1 / 6, "beta": 0.5}, \
                [m for m in hs[1] if m is not n]
    return None


class _Sole(_View):
    """A view in which ``n``'s output counts as used once (it ends the chain)."""

    def __init__(self, v: _View, n: Node):
        self.g, self.prod, self.n = v.g, v.prod, n
        self.cons = dict(v.cons)
        self.cons[n.outputs[0]] = [n]

    def only_use(self, t: str) -> Node | None:
        if t == self.n.outputs[0]:
            return self.n
        return super().only_use(t)


def _one_plus_erf(v: _View, t: str, x: str) -> list[Node] | None:
    """``t = 1 + erf(x / sqrt(2))`` (or ``erf(x * 1/sqrt(2)) + 1``)."""
    a = v.producer(t, "add")
    if a is None:
        return None
    for side in (0, 1):
        if not _close(v.scalar(a.inputs[1 - side]), 1.0):
            continue
        e = v.producer(a.inputs[side], "erf")
        if e is None:
            continue
        s = v.only_use(e.inputs[0])
        if s is None or not v.plain(s) or s.inputs[0] != x:
            continue
        k = v.scalar(s.inputs[1])
        if s.op == "div" and _close(k, math.sqrt(2)) or s.op == "mul" and _close(
                k, math.sqrt(0.5)):
            return [a, e, s]
    return None


def _gelu_half(v: _View, x: str, other: str) -> list[Node] | None:
    """``other = 0.5 * (1 + erf(x / sqrt2))`` (TF order: x * (0.5 * (1 + erf)))."""
    m = v.producer(other, "mul")
    if m is None:
        return None
    for side in (0, 1):
        if _close(v.scalar(m.inputs[1 - side]), 0.5):
            tail = _one_plus_erf(v, m.inputs[side], x)
            if tail is not None:
                return [m] + tail
    return None


@register("fuse_elementwise")
def fuse_elementwise(g: Graph) -> tuple[Graph, bool]:
    """Fuse the chains listed in the module docstring, repeatedly."""
    changed = False
    for _ in range(len(g.nodes) + 1):
        v = _View(g)
        for n in g.nodes:
            found = _match(v, n)
            if found is None:
                continue
            op, x, attrs, absorbed = found
            fused = Node(op, (x,), n.outputs, attrs, n.name)
            drop = {id(m) for m in absorbed}
            nodes = [fused if m is n else m for m in g.nodes if id(m) not in drop]
            g = g.replace(nodes=nodes)
            changed = True
            break
        else:
            return g, changed
    return g, changed

