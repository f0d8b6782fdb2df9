"""The ``assign_layouts`` pass: SPEC §2 blocked tensors where the accelerator reads and writes.

After partitioning, every accelerator layer reads its input (and residual) and writes its output
in the blocked layout: the pass rewrites it to ``layout="blocked"`` on tensors named
``T@blocked``, and inserts a ``pack`` node (CPU) before the first accelerator use of a plain
tensor and an ``unpack`` node before the first CPU use (or graph output) of a blocked one. A
chain of accelerator layers stays blocked. The graph still runs on the reference interpreter,
which is how the pass is tested.
"""

from __future__ import annotations

from tessera.compiler.ir import Graph, Node
from tessera.compiler.lower.partition import targets_assigned
from tessera.config import Config
from tessera.errors import CompileError

__all__ = ["assign_layouts", "blocked_name"]


def blocked_name(tensor: str) -> str:
    return f"{tensor}@blocked"


def assign_layouts(g: Graph, cfg: Config) -> tuple[Graph, bool]:
    targets_assigned(g, "assign_layouts")
    if any(n.attrs.get("layout") == "blocked" for n in g.nodes):
        return g, False
    nodes: list[Node] = []
    have: dict[str, set[str]] = {i: {"nchw"} for i in g.inputs}

    def ensure(t: str, layout: str) -> str:
        """The name of ``t`` in ``layout``, converting on the CPU at this point if needed."""
        if not t or t in g.constants:
            return t
        known = have.get(t)
        if not known:
            raise CompileError(f"tensor {t!r} is used before it is produced")
        key = t if layout == "nchw" else blocked_name(t)
        if layout in known:
            return key
        info = g.tensors[t]
        if info.dtype != "int8" or len(info.shape) not in (2, 4):
            raise CompileError(f"tensor {t!r} ({info}) cannot move between the CPU and the "
                               f"accelerator layouts")
        if layout == "blocked":
            nodes.append(Node("pack", (t,), (key,), {"block": cfg.block_in, "batch": cfg.batch,
                                                     "target": "cpu"}, name=f"pack:{t}"))
        else:
            nodes.append(Node("unpack", (blocked_name(t),), (t,),
                              {"shape": info.shape, "target": "cpu"}, name=f"unpack:{t}"))
        known.add(layout)
        return key

    for n in g.nodes:
        if n.attrs["target"] == "accel":
            x = n.inputs[0]
            ins = (ensure(x, "blocked"), n.inputs[1], n.input(2)) + (
                (ensure(n.input(3), "blocked"),) if n.input(3) else ())
            out = n.outputs[0]
            nodes.append(n.replace(inputs=ins, outputs=(blocked_name(out),)).with_attrs(
                layout="blocked", block=cfg.block_in, batch=cfg.batch,
                in_shape=g.tensors[x].shape))
            have[out] = {"blocked"}
        else:
            nodes.append(n.replace(inputs=tuple(ensure(i, "nchw") for i in n.inputs)))
            for o in n.outputs:
                have[o] = {"nchw"}
    for o in g.outputs:
        ensure(o, "nchw")
    return g.replace(nodes=nodes), True
