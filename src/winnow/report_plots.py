"""The report's figures: matplotlib ``Figure`` objects drawn from a loaded run (no pyplot, no files)."""

from __future__ import annotations

import statistics
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

if TYPE_CHECKING:
    from winnow.report import _Run

Row = dict[str, Any]

MAX_LINES = 150  # faint trajectory lines drawn per label; more only slow the plot down
WIDE = 100.0  # a max/min ratio above this gets a log axis
ARM_COLOURS = {"direct": "#4c72b0", "bds": "#dd8452", "bds_refine": "#55a868", "oracle": "#8172b3",
               "random": "#937860"}
_SPARE = ("#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd", "#c44e52")
LABEL_COLOURS = {"good": "#2a9d8f", "bad": "#d62828", "all": "#457b9d"}


def _label(run: _Run, ex_id: str) -> str:
    """The hidden label of an example: "all" when the run has no labels."""
    return str(run.labels.get(ex_id, {}).get("label", "unknown")) if run.labels else "all"


def _arm_colour(arm: str) -> str:
    """The same colour for an arm in every plot (and every report)."""
    return ARM_COLOURS.get(arm) or _SPARE[zlib.crc32(arm.encode()) % len(_SPARE)]


def _arms(run: _Run) -> list[str]:
    """Every arm the run knows of, the built-in ones first in their usual order."""
    names = set((run.summary or {}).get("arms", {})) | set(run.train) | set(run.results)
    order = list(ARM_COLOURS)
    return sorted(names, key=lambda a: (order.index(a) if a in order else len(order), a))


def _wide(values: np.ndarray) -> bool:
    return values.size > 0 and bool((values > 0).all()) and values.max() / values.min() > WIDE


def _figure(n_panels: int, width: float = 5.0, height: float = 3.6) -> tuple[Figure, list[Any]]:
    fig = Figure(figsize=(width * n_panels, height), layout="constrained")
    return fig, list(np.atleast_1d(fig.subplots(1, n_panels)))


# --- figures --------------------------------------------------------------------------------------


def _weight_hist(run: _Run, rows: list[Row]) -> Figure:
    """Weight histogram, one panel per hidden label, log x when the weights span a wide range."""
    groups: dict[str, list[float]] = {}
    for r in rows:
        groups.setdefault(_label(run, str(r["id"])), []).append(float(r["weight"]))
    w = np.array([x for g in groups.values() for x in g])
    lo, hi = float(w.min()), float(w.max())
    log_x = _wide(w)
    bins = np.geomspace(lo, hi, 41) if log_x else np.linspace(lo - 0.5 * (lo == hi), hi + 0.5 * (lo == hi), 41)
    fig = Figure(figsize=(7, 2.2 + 1.6 * len(groups)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(groups), 1, sharex=True))
    for ax, (lab, vals) in zip(axes, sorted(groups.items()), strict=True):
        ax.hist(vals, bins=bins, color=LABEL_COLOURS.get(lab, "#888888"), alpha=0.85)
        ax.set_ylabel("examples")
        ax.set_title(f"{lab} (n={len(vals)}, median weight {np.median(vals):.3g})", fontsize=10)
        if log_x:
            ax.set_xscale("log")
    axes[-1].set_xlabel("weight" + (" (log scale)" if log_x else ""))
    fig.suptitle("Example weights" + (" by hidden label" if run.labels else ""))
    return fig


def _trajectories(run: _Run, snaps: Row) -> Figure:
    """A faint line per example (a sample when there are many) and the bold per-label median."""
    ids = [str(i) for i in snaps["ids"]]
    w = np.asarray(snaps["rounds"], dtype=float)  # (R, N)
    x = np.arange(1, w.shape[0] + 1)
    groups: dict[str, list[int]] = {}
    for j, ex_id in enumerate(ids):
        groups.setdefault(_label(run, ex_id), []).append(j)
    fig, (ax,) = _figure(1, 7.5, 4.2)
    for lab, idx in sorted(groups.items(), key=lambda kv: (kv[0] == "bad", kv[0])):  # bad drawn on top
        colour = LABEL_COLOURS.get(lab, "#888888")
        pick = idx[:: max(1, -(-len(idx) // MAX_LINES))]
        ax.add_collection(LineCollection([np.column_stack([x, w[:, j]]) for j in pick],
                                         colors=colour, alpha=0.15, linewidths=0.7))
        ax.plot(x, np.median(w[:, idx], axis=1), color=colour, linewidth=2.5, marker="o" if len(x) < 2 else None,
                label=f"{lab} median (n={len(idx)})")
    ax.autoscale_view()
    if _wide(w):
        ax.set_yscale("log")
    ax.set(xlabel="round", ylabel="weight", title="Weight trajectories over BDS rounds")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="best", fontsize=8)
    return fig


def _round_plot(rows: list[Row], panels: list[tuple[str, tuple[str, ...]]], title: str) -> Figure:
    """One panel per (name, keys) of per-round rows, a line per key; keys no row has are skipped."""
    has = lambda k: any(isinstance(r.get(k), int | float) for r in rows)  # noqa: E731
    panels = [(name, [k for k in keys if has(k)]) for name, keys in panels if any(has(k) for k in keys)]
    fig, axes = _figure(max(1, len(panels)), 4.6)
    x = [r.get("round", i + 1) for i, r in enumerate(rows)]
    for ax, (name, keys) in zip(axes, panels, strict=False):
        for k in keys:
            ax.plot(x, [r[k] if isinstance(r.get(k), int | float) else np.nan for r in rows], marker="o", label=k)
        ax.set(xlabel="round", ylabel=name, title=name[:1].upper() + name[1:])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(keys) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def _mean_curve(per_seed: list[list[Row]], key: str) -> tuple[list[float], list[float]]:
    """Steps and the mean of ``key`` over the seeds that logged it at each step."""
    at: dict[float, list[float]] = {}
    for rows in per_seed:
        for r in rows:
            if isinstance(r.get(key), int | float) and "step" in r:
                at.setdefault(float(r["step"]), []).append(float(r[key]))
    steps = sorted(at)
    return steps, [statistics.fmean(at[s]) for s in steps]


def _training_plot(run: _Run) -> Figure:
    """Training and validation loss of every arm, mean over seeds."""
    fig, axes = _figure(2, 5.2)
    for arm in _arms(run):
        per_seed = run.train.get(arm, [])
        for ax, key, style in ((axes[0], "loss", "-"), (axes[1], "val_loss", "o-")):
            steps, mean = _mean_curve(per_seed, key)
            if steps:
                ax.plot(steps, mean, style, color=_arm_colour(arm), label=f"{arm} ({len(per_seed)} seeds)",
                        markersize=3)
    for ax, name in zip(axes, ("training loss", "validation loss"), strict=True):
        ax.set(xlabel="step", ylabel=name, title=name.capitalize())
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle("Final fine-tune per arm (mean over seeds)")
    return fig


def _arms_plot(stats: dict[str, dict[str, Row]], arms: list[str]) -> Figure:
    """One bar panel per metric: the mean per arm, std error bars, seeds as dots."""
    arms = [a for a in arms if a in stats]
    metrics = list(dict.fromkeys(m for a in arms for m in stats[a] if not m.startswith("n_")))
    ncols = min(3, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig = Figure(figsize=(4.4 * ncols, 3.4 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax, m in zip(axes, metrics, strict=False):
        have = [a for a in arms if isinstance((stats[a].get(m) or {}).get("mean"), int | float)]
        means = [stats[a][m]["mean"] for a in have]
        stds = [stats[a][m].get("std") or 0.0 for a in have]
        ax.bar(have, means, yerr=stds, capsize=4, color=[_arm_colour(a) for a in have], alpha=0.85)
        for i, a in enumerate(have):
            vals = stats[a][m].get("values") or []
            ax.plot([i] * len(vals), vals, "k.", markersize=4)
        ax.set(title=m, ylabel=m)
        ax.tick_params(axis="x", labelrotation=20)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    fig.suptitle("Arms compared (bars: mean over seeds, error bars: std, dots: seeds)")
    return fig
