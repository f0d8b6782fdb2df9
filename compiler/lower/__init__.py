"""From a quantised graph to the runtime's plan: the lowering passes, then :func:`build_plan`.

The passes (each ``apply(graph) -> (graph, changed)``, in the compiler's one pipeline):
``fold_narrow_input`` (:mod:`.narrow`), ``partition`` (:mod:`.partition`), ``assign_layouts``
(:mod:`.layout`), ``plan_memory`` (:mod:`.memory`). :func:`build_plan` (:mod:`.build`) then
turns each node into a step.
"""

from __future__ import annotations

from functools import partial

from tessera.compiler.lower.build import build_plan, check_config
from tessera.compiler.lower.layout import assign_layouts
from tessera.compiler.lower.memory import plan_memory
from tessera.compiler.lower.narrow import fold_narrow_input
from tessera.compiler.lower.partition import accel_capable, partition, partition_report
from tessera.compiler.passes.pipeline import Pass
from tessera.config import Config

__all__ = ["lowering_passes", "build_plan", "check_config", "assign_layouts", "plan_memory",
           "fold_narrow_input", "partition", "partition_report", "accel_capable"]


def lowering_passes(cfg: Config) -> list[Pass]:
    """The lowering passes for ``cfg``, in order."""
    return [Pass(fn.__name__, partial(fn, cfg=cfg))
            for fn in (fold_narrow_input, partition, assign_layouts, plan_memory)]
