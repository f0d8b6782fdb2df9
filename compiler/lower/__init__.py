"""From a quantised graph to the runtime's plan: the lowering passes, then :func:`build_plan`.

The passes (each ``apply(graph) -> (graph, changed)``, in the compiler's one pipeline):
``fold_narrow_input`` (:mod:`.narrow`), ``partition`` (:mod:`.partition`), ``assign_layouts``
(:mod:`.layout`), ``group_siblings`` (:mod:`.siblings`), ``plan_memory`` (:mod:`.memory`).
:func:`build_plan` (:mod:`.build`) then turns each node (or group of sibling nodes) into a
step.
"""

from __future__ import annotations

from functools import partial

from tessera.compiler.lower.build import build_plan, check_config
from tessera.compiler.lower.layout import assign_layouts
from tessera.compiler.lower.memory import plan_memory
from tessera.compiler.lower.narrow import fold_narrow_input
from tessera.compiler.lower.partition import (
    HOST,
    HostModel,
    accel_capable,
    partition,
    partition_report,
)
from tessera.compiler.lower.siblings import group_siblings
from tessera.compiler.passes.pipeline import Pass
from tessera.config import Config

__all__ = ["lowering_passes", "build_plan", "check_config", "assign_layouts", "plan_memory",
           "fold_narrow_input", "group_siblings", "partition", "partition_report", "accel_capable",
           "HostModel"]


def lowering_passes(cfg: Config, host: HostModel | None = None) -> list[Pass]:
    """The lowering passes for ``cfg``, in order (``host``: the partition's cost model of the
    host, default :data:`~tessera.compiler.lower.partition.HOST`)."""
    part = partial(partition, cfg=cfg, host=host or HOST)
    part.__name__ = "partition"
    return [Pass(fn.__name__, fn if fn is part else partial(fn, cfg=cfg))
            for fn in (fold_narrow_input, part, assign_layouts, group_siblings, plan_memory)]
