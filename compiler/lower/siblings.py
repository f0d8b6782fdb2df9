"""The ``group_siblings`` pass: a cheap strided 1x1 convolution placed beside a sibling that
reads the same input, so :func:`~tessera.compiler.lower.build.build_plan` can emit both as one
accelerator stream (:mod:`tessera.runtime.accel.group`).

A ResNet downsample (1x1, stride 2) does a few GEMM steps per output row and waits on its
epilogue; its sibling (the block's first 3x3 convolution, same input) keeps the GEMM busy. The
pass finds, for each accelerator ``qconv2d`` with a 1x1 kernel and a stride above 1, an earlier
accelerator ``qconv2d`` of the same input with a larger kernel, moves the 1x1 node right after
it (every input of the moved node is defined before that point, so the order stays valid and
the memory plan sees its output produced there) and records the pair: ``attrs["group"]`` on
the first names the second, ``attrs["grouped_with"]`` on the second names the first. Whether
the pair really shares a stream is decided by ``build_plan`` (the tiles must fit together);
if not, the nodes become separate steps in the new order. Runs after ``assign_layouts``
(pairs are found on the exact blocked tensors) and before ``plan_memory``.
"""

from __future__ import annotations

from tessera.compiler.ir import Graph, Node
from tessera.config import Config

__all__ = ["group_siblings"]


def _conv(n: Node) -> bool:
    return (n.op == "qconv2d" and n.attrs.get("target") == "accel"
            and n.attrs.get("groups", 1) == 1 and "group" not in n.attrs
            and "grouped_with" not in n.attrs)


def _cheap(g: Graph, n: Node) -> bool:
    kh, kw = g.constants[n.inputs[1]].shape[2:]
    return kh == kw == 1 and max(n.attrs["strides"]) > 1


def group_siblings(g: Graph, cfg: Config) -> tuple[Graph, bool]:
    if any("group" in n.attrs for n in g.nodes):
        return g, False
    nodes = list(g.nodes)
    changed = False
    k = 0
    while k < len(nodes):
        b = nodes[k]
        if not (_conv(b) and _cheap(g, b)):
            k += 1
            continue
        for j in range(k):
            a = nodes[j]
            if not (_conv(a) and a.inputs[0] == b.inputs[0] and not _cheap(g, a)
                    and g.constants[a.inputs[1]].shape[2:] != (1, 1)):
                continue
            made = {o for n in nodes[:j + 1] for o in n.outputs}
            if not all(not t or t in g.constants or t in g.inputs or t in made
                       for t in b.inputs):
                continue
            nodes[j] = a.with_attrs(group=b.name)
            del nodes[k]
            nodes.insert(j + 1, b.with_attrs(grouped_with=a.name))
            changed = True
            break
        k += 1
    return (g.replace(nodes=nodes), True) if changed else (g, False)
