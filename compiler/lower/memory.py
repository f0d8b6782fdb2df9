"""The ``plan_memory`` pass: every non-constant tensor gets an offset in one device arena.

Each tensor lives from the node that produces it (graph inputs: from the start) to the last node
that reads it (graph inputs and outputs: to the end); a tensor takes the lowest offset whose
range no live tensor overlaps (first fit, tensors in order of definition), each range rounded up
to :data:`~tessera.runtime.plan.ALIGN` bytes, or to the config's ``dram_align`` (its largest
DRAM element) when that is larger, so that every slot starts on an element of every memory
type. The plan is attached to the graph
(``graph.memory``); any later rewrite drops it.
"""

from __future__ import annotations

from tessera.compiler.ir import Graph, MemoryPlan
from tessera.config import Config
from tessera.errors import CompileError
from tessera.runtime.layout import ceil_div
from tessera.runtime.plan import ALIGN, REGION_LIMIT

__all__ = ["plan_memory"]


def plan_memory(g: Graph, cfg: Config | None = None) -> tuple[Graph, bool]:
    end = len(g.nodes)
    first: dict[str, int] = {i: -1 for i in g.inputs}
    last: dict[str, int] = {}
    for k, n in enumerate(g.nodes):
        for o in n.outputs:
            first.setdefault(o, k)
            last[o] = max(last.get(o, k), k)
        for i in n.inputs:
            if i and i not in g.constants:
                last[i] = k
    for t in first:
        last.setdefault(t, first[t])
    for t in set(g.inputs) | set(g.outputs):
        last[t] = end
    unit = ALIGN if cfg is None else max(ALIGN, cfg.dram_align)
    sizes = {t: ceil_div(max(g.tensors[t].nbytes, 1), unit) * unit for t in first}
    offsets: dict[str, int] = {}
    placed: list[str] = []
    top = 0
    for t in sorted(first, key=lambda t: (first[t], t)):
        live = [p for p in placed if not (last[p] < first[t] or last[t] < first[p])]
        pos = 0
        for p in sorted(live, key=offsets.__getitem__):
            if pos + sizes[t] <= offsets[p]:
                break
            pos = max(pos, offsets[p] + sizes[p])
        offsets[t] = pos
        placed.append(t)
        top = max(top, pos + sizes[t])
    if top > REGION_LIMIT:
        raise CompileError(f"the model needs {top} arena bytes; at most {REGION_LIMIT} are "
                           f"supported")
    live_ranges = {t: (first[t], last[t]) for t in first}
    return g.with_memory(MemoryPlan(offsets, sizes, live_ranges, top)), True
