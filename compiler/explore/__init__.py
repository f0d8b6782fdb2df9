"""Design-space exploration: sweep models over accelerator configs and DRAM timings, measure
cycles (the fsim cycle model, or the RTL), utilisation, area and Fmax, keep the results in
SQLite and plot the Pareto front. :func:`explore` is ``tessera.explore``; ``tessera explore``
is its command line (:mod:`~tessera.compiler.explore.cli`)."""

from tessera.compiler.explore.db import COLUMNS, ResultsDB
from tessera.compiler.explore.plot import pareto_front, pareto_plot
from tessera.compiler.explore.space import (
    CONFIG_FIELDS,
    DRAM_KNOBS,
    Point,
    config_label,
    grid_points,
    parse_grid,
    random_configs,
)
from tessera.compiler.explore.sweep import explore

__all__ = ["explore", "ResultsDB", "COLUMNS", "pareto_front", "pareto_plot", "Point",
           "parse_grid", "grid_points", "random_configs", "config_label", "CONFIG_FIELDS",
           "DRAM_KNOBS"]
