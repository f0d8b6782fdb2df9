"""The Pareto plot of a sweep: cycles against LUTs, one panel per model, points labelled.

A point is on the Pareto front when no other point of the same model has at most its LUTs and
at most its cycles with one of the two strictly smaller. Front points are joined by a step line
and labelled with the Config fields that vary in the panel (and the DRAM timing when the
sweep varied it); the others are drawn faded, with fainter labels when a panel has at most
:data:`MAX_LABELLED` of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tessera.errors import ExploreError

__all__ = ["pareto_front", "pareto_plot", "MAX_LABELLED"]

MAX_LABELLED = 40
"""Dominated points of a panel are labelled too (in grey) when there are at most this many."""


def pareto_front(rows: list[dict[str, Any]], x: str = "lut", y: str = "cycles"
                 ) -> list[dict[str, Any]]:
    """The rows not dominated in (``x``, ``y``), both minimised, sorted by ``x``; rows missing
    either value are left out."""
    pts = sorted((r for r in rows if r.get(x) is not None and r.get(y) is not None),
                 key=lambda r: (r[x], r[y]))
    front, best = [], None
    for r in pts:
        if best is None or r[y] < best:
            front.append(r)
            best = r[y]
    return front


def _labeller(rows: list[dict[str, Any]]):
    """A label function for the points of one panel: the Config fields that vary across the
    panel as ``field=value`` (the short config label when none does), plus the DRAM timing when
    that varies."""
    configs = [json.loads(r["config_json"]) if r.get("config_json") else {} for r in rows]
    names = sorted({k for c in configs for k in c})
    varying = [k for k in names if len({json.dumps(c.get(k)) for c in configs}) > 1]
    dram_varies = len({(r["read_latency"], r["beats_per_cycle"]) for r in rows}) > 1
    bw_varies = len({r["beats_per_cycle"] for r in rows}) > 1

    def label(r: dict[str, Any]) -> str:
        cfg = json.loads(r["config_json"]) if varying else {}
        text = " ".join(f"{k}={cfg.get(k)}" for k in varying) or (r.get("label") or "?")
        if dram_varies:
            text += f" L{r['read_latency']}"
            if bw_varies:
                text += f" x{r['beats_per_cycle']:g}"
        return text

    return label


def pareto_plot(rows: list[dict[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """Draw the Pareto front of cycles against LUTs of ``rows`` (one panel per model) as a PNG
    at ``path``; :class:`ExploreError` when no row has both figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    good = [r for r in rows if r.get("lut") is not None and r.get("cycles") is not None]
    if not good:
        raise ExploreError("nothing to plot: no point has both cycles and a LUT count (sweep "
                           "with --area, and check the error column of the results)")
    models = list(dict.fromkeys(r["model"] for r in good))
    fig, axes = plt.subplots(1, len(models), figsize=(7.5 * len(models), 5.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        mine = [r for r in good if r["model"] == model]
        label = _labeller(mine)
        front = pareto_front(mine)
        on = {id(r) for r in front}
        off = [r for r in mine if id(r) not in on]
        ax.scatter([r["lut"] for r in off], [r["cycles"] for r in off], s=18, color="0.6",
                   label="dominated")
        ax.step([r["lut"] for r in front], [r["cycles"] for r in front], where="post",
                color="tab:red", linewidth=1.2)
        ax.scatter([r["lut"] for r in front], [r["cycles"] for r in front], s=30,
                   color="tab:red", zorder=3, label="Pareto front")
        for k, r in enumerate(front):  # neighbours alternate heights so labels do not overlap
            ax.annotate(label(r), (r["lut"], r["cycles"]), fontsize=8, xytext=(5, 4 + 13 * (k % 2)),
                        textcoords="offset points")
        if len(off) <= MAX_LABELLED:  # beyond that the labels of the dominated points clutter
            for k, r in enumerate(sorted(off, key=lambda r: (r["lut"], r["cycles"]))):
                ax.annotate(label(r), (r["lut"], r["cycles"]), fontsize=7, color="0.45",
                            xytext=(5, -11 - 12 * (k % 2)), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("LUT4 (Yosys synth_ecp5)")
        ax.set_ylabel("cycles (one inference)")
        ax.set_title(f"{model}: {len(front)} of {len(mine)} points on the front")
        ax.grid(True, which="both", alpha=0.3)
        ax.margins(x=0.3, y=0.15)  # room for the labels of the outermost points
        ax.legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    try:
        fig.savefig(out, dpi=120)
    except OSError as exc:
        raise ExploreError(f"cannot write the plot {str(path)!r}: {exc}") from None
    finally:
        plt.close(fig)
    return out
