"""The Pareto plot of a sweep: cycles against LUTs, one panel per model, points labelled.

A point is on the Pareto front when no other point of the same model has at most its LUTs and
at most its cycles with one of the two strictly smaller. Front points are joined by a step line
and labelled with their config (and DRAM timing when the sweep varied it); the others are
drawn faded, with fainter labels when a panel has at most :data:`MAX_LABELLED` of them.
"""

from __future__ import annotations

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


def _label(r: dict[str, Any], dram_varies: bool) -> str:
    text = r.get("label") or "?"
    if dram_varies:
        text += f" L{r['read_latency']}"
        if r["beats_per_cycle"] != 1.0:
            text += f" x{r['beats_per_cycle']:g}"
    return text


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
        dram_varies = len({(r["read_latency"], r["beats_per_cycle"]) for r in mine}) > 1
        front = pareto_front(mine)
        on = {id(r) for r in front}
        off = [r for r in mine if id(r) not in on]
        ax.scatter([r["lut"] for r in off], [r["cycles"] for r in off], s=18, color="0.6",
                   label="dominated")
        ax.step([r["lut"] for r in front], [r["cycles"] for r in front], where="post",
                color="tab:red", linewidth=1.2)
        ax.scatter([r["lut"] for r in front], [r["cycles"] for r in front], s=30,
                   color="tab:red", zorder=3, label="Pareto front")
        for r in front:
            ax.annotate(_label(r, dram_varies), (r["lut"], r["cycles"]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
        if len(off) <= MAX_LABELLED:  # beyond that the labels of the dominated points clutter
            for r in off:
                ax.annotate(_label(r, dram_varies), (r["lut"], r["cycles"]), fontsize=6,
                            color="0.45", xytext=(4, -9), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("LUT4 (Yosys synth_ecp5)")
        ax.set_ylabel("cycles (one inference)")
        ax.set_title(f"{model}: {len(front)} of {len(mine)} points on the front")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
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
