"""One self-contained ``report.html`` for a run directory: plots and tables read from its files.

The report reads files only, never models. A missing file means its stage did not run: the
report says so in one line and skips that plot, so a partial run still gets a report. Pool text
of harmful pairs (hidden label "bad", kind containing "harm") is masked wherever it would show.

    from winnow.report import write_report
    write_report("runs/my-run")   # -> runs/my-run/report.html
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from winnow.data import Example, read_examples
from winnow.errors import WinnowError
from winnow.io import atomic_open, read_jsonl
from winnow.metrics import auroc
from winnow.report_plots import (
    _arms,
    _arms_plot,
    _label,
    _round_plot,
    _training_plot,
    _trajectories,
    _weight_hist,
)

log = logging.getLogger(__name__)

Row = dict[str, Any]

HIDDEN = "[harmful text hidden]"
TEXT_CHARS = 160
N_EXTREMES = 10


# --- loading ------------------------------------------------------------------------------------


@dataclass
class _Run:
    """The files of one run directory; ``None`` (or empty) where a file is missing."""

    root: Path
    config: str | None = None
    pool: dict[str, Example] = field(default_factory=dict)
    labels: dict[str, Row] = field(default_factory=dict)
    weights: list[Row] | None = None
    snapshots: Row | None = None
    weigh_metrics: list[Row] | None = None
    selection: Row | None = None
    kept: set[str] | None = None
    refine_metrics: list[Row] | None = None
    train: dict[str, list[list[Row]]] = field(default_factory=dict)  # arm -> metric rows per seed
    results: dict[str, list[Row]] = field(default_factory=dict)  # arm -> one ``metrics`` dict per seed
    summary: Row | None = None
    problems: list[str] = field(default_factory=list)


def _load(root: Path) -> _Run:
    run = _Run(root)

    def get(rel: str, reader: Any) -> Any:
        path = root / rel
        if not path.exists():
            return None
        try:
            return reader(path)
        except Exception as e:  # a damaged file must not sink the whole report
            log.warning("report: could not read %s: %s", path, e)
            run.problems.append(f"{rel} could not be read: {e}")
            return None

    def read_json(path: Path) -> Any:
        return json.loads(path.read_text(encoding="utf-8"))

    run.config = get("config.yaml", lambda p: p.read_text(encoding="utf-8"))
    run.pool = {e.id: e for e in get("task/pool.jsonl", read_examples) or []}
    run.labels = {str(r["id"]): r for r in get("task/pool_labels.jsonl", read_jsonl) or []}
    run.weights = get("weigh/weights.jsonl", read_jsonl)
    run.snapshots = get("weigh/snapshots.json", read_json)
    run.weigh_metrics = get("weigh/metrics.jsonl", read_jsonl)
    run.selection = get("select/selection.json", read_json)
    kept = get("select/kept.jsonl", read_jsonl)
    run.kept = None if kept is None else {str(r["id"]) for r in kept}
    run.refine_metrics = get("refine/metrics.jsonl", read_jsonl)
    for path in sorted(root.glob("arms/*/seed*/train/metrics.jsonl")):
        rows = get(str(path.relative_to(root)), read_jsonl)
        if rows:
            run.train.setdefault(path.parts[-4], []).append(rows)
    for path in sorted(root.glob("arms/*/seed*/eval/results.json")):
        res = get(str(path.relative_to(root)), read_json)
        if res and isinstance(res.get("metrics"), dict):
            run.results.setdefault(path.parts[-4], []).append(res["metrics"])
    run.summary = get("summary.json", read_json)
    return run


# --- small helpers ------------------------------------------------------------------------------


def _hidden(run: _Run, ex_id: str) -> bool:
    """Whether the example is a harmful pair whose text must not be shown."""
    lab = run.labels.get(ex_id, {})
    return lab.get("label") == "bad" and "harm" in str(lab.get("kind", ""))


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= TEXT_CHARS else text[: TEXT_CHARS - 1] + "…"


def _num(x: Any, spec: str = ".4g") -> str:
    return format(x, spec) if isinstance(x, int | float) and not isinstance(x, bool) else "—"


def _plot(alt: str, draw: Callable[..., Figure], *args: Any) -> str:
    """``draw(*args)`` as an embedded PNG ``<img>``, or a line saying why it could not be drawn."""
    try:
        buf = io.BytesIO()
        draw(*args).savefig(buf, format="png", dpi=100)
    except Exception as e:  # odd data in one file must not sink the whole report
        log.warning("report: could not draw the %s plot: %s", alt, e)
        return f'<p class="missing">Could not draw the {alt} plot: {html.escape(repr(e))}</p>'
    return f'<img alt="{alt}" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode("ascii")}">'


def _missing(stage: str, what: str) -> str:
    return f'<p class="missing">The <b>{stage}</b> stage did not run (no <code>{what}</code>).</p>'


def _table(header: list[str], rows: list[list[str]]) -> str:
    """An HTML table; cells must already be escaped."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# --- summary table ------------------------------------------------------------------------------


def _summary_grid(summary: Row) -> tuple[list[str], list[list[str]]]:
    """Header and rows (arm x metric, "mean ± std") of a ``summary.json``."""
    arms: dict[str, dict[str, Row]] = summary.get("arms") or {}
    metrics = list(dict.fromkeys(m for stats in arms.values() for m in stats))
    rows = []
    for arm, stats in arms.items():
        cells = []
        for m in metrics:
            s = stats.get(m) or {}
            mean, std = _num(s.get("mean")), _num(s.get("std"), ".2g")
            cells.append(mean if std == "—" or mean == "—" else f"{mean} ± {std}")
        rows.append([arm, *cells])
    return ["arm", *metrics], rows


def summary_markdown(summary: dict[str, Any]) -> str:
    """The arm x metric table of a ``summary.json`` in markdown, each cell "mean ± std".

    >>> print(summary_markdown({"arms": {"bds": {"loss": {"mean": 1.25, "std": 0.05, "values": [1.2, 1.3]}}}}))
    | arm | loss |
    |---|---|
    | bds | 1.25 ± 0.05 |
    """
    header, rows = _summary_grid(summary)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _arm_stats(run: _Run) -> dict[str, dict[str, Row]]:
    """Per arm and metric: mean, std and values, from ``summary.json`` or else the per-seed results."""
    if run.summary and run.summary.get("arms"):
        return run.summary["arms"]
    out: dict[str, dict[str, Row]] = {}
    for arm, per_seed in run.results.items():
        for m in dict.fromkeys(k for r in per_seed for k in r if not k.startswith("n_")):  # counts are no metric
            vals = [float(r[m]) for r in per_seed if isinstance(r.get(m), int | float)]
            if vals:
                out.setdefault(arm, {})[m] = {"mean": statistics.fmean(vals), "std": statistics.pstdev(vals),
                                              "values": vals}
    return out


def _summary_table(run: _Run) -> str:
    stats = _arm_stats(run)
    if not stats:
        return _missing("eval", "summary.json")
    note = "" if run.summary and run.summary.get("arms") else "<p>From the per-seed results (no summary.json).</p>"
    header, rows = _summary_grid({"arms": stats})
    return note + _table([html.escape(h) for h in header], [[html.escape(c) for c in r] for r in rows])


# --- sections -----------------------------------------------------------------------------------

def _overview(run: _Run) -> str:
    s = run.summary or {}
    facts = [("run", run.root.name), ("task", s.get("task")), ("model", s.get("model")),
             ("seeds", ", ".join(map(str, s.get("seeds") or []))), ("judge accuracy", _num(s.get("judge_accuracy"))),
             ("wall time (min)", _num(s["wall_s"] / 60, ".1f") if isinstance(s.get("wall_s"), int | float) else "")]
    out = [_table(["", ""], [[k, html.escape(str(v))] for k, v in facts if v and v != "—"])]
    done = {"weigh": run.weights is not None or run.snapshots is not None, "select": run.selection is not None,
            "refine": run.refine_metrics is not None, "train": bool(run.train),
            "eval": run.summary is not None or bool(run.results)}
    out.append("<p>Stages: " + ", ".join(f"{st} {'✓' if ok else '(did not run)'}" for st, ok in done.items()) + "</p>")
    notes = list(s.get("notes") or []) + run.problems
    if notes:
        out.append("<ul>" + "".join(f"<li>{html.escape(str(n))}</li>" for n in notes) + "</ul>")
    return "<h2>Overview</h2>" + "".join(out)


def _weights_section(run: _Run) -> str:
    if run.weights is None and run.snapshots is None and run.weigh_metrics is None:
        return "<h2>Weights</h2>" + _missing("weigh", "weigh/")
    out = ["<h2>Weights</h2>"]
    if not run.labels:
        out.append("<p>No hidden labels (<code>task/pool_labels.jsonl</code>): weights are not split by label.</p>")
    scored = [r for r in run.weights or [] if r.get("score") is not None and r.get("weight") is not None]
    out.append("<h3>Weight distribution</h3>" + (_plot("weight histogram", _weight_hist, run, scored) if scored
                                                 else _missing("weigh", "weigh/weights.jsonl")))
    snaps = run.snapshots or {}
    out.append("<h3>Weight trajectories</h3>" + (_plot("weight trajectory", _trajectories, run, snaps)
                                                 if snaps.get("ids") and snaps.get("rounds")
                                                 else _missing("weigh", "weigh/snapshots.json")))
    panels = [("validation loss", ("val_loss",)), ("penalty gap", ("gap",))]
    out.append("<h3>BDS rounds</h3>" + (_plot("BDS rounds", _round_plot, run.weigh_metrics, panels,
                                              "BDS validation loss and gap per round")
                                        if run.weigh_metrics else _missing("weigh", "weigh/metrics.jsonl")))
    return "".join(out)


def _selection_section(run: _Run) -> str:
    """What ``select/selection.json`` says, plus how many bad pairs were kept when labels are known."""
    sel = run.selection
    if sel is None:
        return "<h2>Selection</h2>" + _missing("select", "select/selection.json")
    rows = [(k, str(v)) for k, v in sel.items() if isinstance(v, str | int | float | bool)]
    ranked = [r for r in run.weights or [] if r.get("rank") is not None]
    kept = run.kept
    if kept is None and ranked and isinstance(sel.get("kept"), int):
        kept = {str(r["id"]) for r in ranked if r["rank"] <= sel["kept"]}
    if run.labels and kept is not None:
        rows += _selection_quality(run, kept, ranked)
    return "<h2>Selection</h2>" + _table(["quantity", "value"], [[html.escape(k), html.escape(v)] for k, v in rows])


def _selection_quality(run: _Run, kept: set[str], ranked: list[Row]) -> list[tuple[str, str]]:
    """Bad pairs kept and removed, and how well the scores rank good above bad (AUROC)."""
    bad = {i for i, r in run.labels.items() if r.get("label") == "bad"}
    n_bad_kept = len(kept & bad)
    rows = [("bad pairs kept", f"{n_bad_kept} of {len(bad)}"),
            ("bad share of kept", _num(n_bad_kept / len(kept), ".3f") if kept else "—"),
            ("bad pairs removed (recall)", _num(1 - n_bad_kept / len(bad), ".3f") if bad else "—")]
    pairs = [(float(r["score"]), _label(run, str(r["id"])) == "good") for r in ranked if r.get("score") is not None]
    if len({y for _, y in pairs}) == 2:
        rows.append(("AUROC of scores (good vs bad)", _num(auroc(*zip(*pairs, strict=True)), ".3f")))
    return rows


def _example_row(run: _Run, r: Row) -> list[str]:
    ex_id = str(r["id"])
    ex = run.pool.get(ex_id)
    if _hidden(run, ex_id):
        prompt = response = f"<i>{HIDDEN}</i>"
    else:
        prompt, response = (html.escape(_short(t)) for t in ((ex.prompt, ex.response) if ex else ("—", "—")))
    lab = run.labels.get(ex_id)
    label = html.escape(f"{lab.get('label')} ({lab.get('kind')})") if lab else "—"
    return [str(r.get("rank") or "—"), _num(r.get("weight")), label, html.escape(ex_id), prompt, response]


def _examples_section(run: _Run) -> str:
    out = ["<h2>Lowest- and highest-weighted examples</h2>"]
    rows = sorted((r for r in run.weights or [] if r.get("score") is not None), key=lambda r: float(r["weight"]))
    if not rows:
        return out[0] + _missing("weigh", "weigh/weights.jsonl")
    if not run.pool:
        out.append("<p>No <code>task/pool.jsonl</code>: example text is not shown.</p>")
    header = ["rank", "weight", "label", "id", "prompt", "response"]
    for title, part in (("lowest", rows[:N_EXTREMES]), ("highest", rows[::-1][:N_EXTREMES])):
        out.append(f"<h3>{len(part)} {title}</h3>" + _table(header, [_example_row(run, r) for r in part]))
    return "".join(out)


def _later_sections(run: _Run) -> str:
    out = ["<h2>Refinement</h2>"]
    panels = [("refusal share of generations", ("refusal_share",)),
              ("BMO weight of generations", ("bmo_mean", "bmo_min", "bmo_max")),
              ("validation loss", ("val_loss",))]
    out.append(_plot("refinement", _round_plot, run.refine_metrics, panels, "Self-refinement rounds")
               if run.refine_metrics else _missing("refine", "refine/metrics.jsonl"))
    out.append("<h2>Training curves</h2>")
    out.append(_plot("training curve", _training_plot, run) if run.train
               else _missing("train", "arms/*/seed*/train/metrics.jsonl"))
    out.append("<h2>Arm comparison</h2>")
    stats = _arm_stats(run)
    out.append(_plot("arm comparison", _arms_plot, stats, _arms(run)) if stats else _missing("eval", "summary.json"))
    if run.config is not None:
        out.append("<h2>Configuration</h2><details><summary>config.yaml</summary><pre>"
                   f"{html.escape(run.config)}</pre></details>")
    return "".join(out)


_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }} th {{ background: #f3f3f3; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }}
img {{ max-width: 100%; display: block; margin: 0.6em 0; }} pre {{ background: #f7f7f7; padding: 0.6em; }}
.missing {{ color: #8a6d3b; background: #fcf8e3; padding: 0.3em 0.6em; }}
</style></head><body>
"""


def _render(run: _Run) -> str:
    s = run.summary or {}
    title = "Winnow report" + (f": {s['task']} / {s['model']}" if s.get("task") and s.get("model") else "")
    parts = [_overview(run), "<h2>Summary</h2>", _summary_table(run), _weights_section(run),
             _selection_section(run), _examples_section(run), _later_sections(run)]
    head = _HEAD.format(title=html.escape(title)) + f"<h1>{html.escape(title)}</h1>"
    return head + "\n".join(parts) + "</body></html>\n"


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.html`` (self-contained: plots embedded as PNG) into ``run_dir``; return its path.

    Reads only the run directory's files. A missing file means its stage did not run: the
    report says so and skips that plot. Raises ``WinnowError`` when ``run_dir`` is no folder.
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise WinnowError(f"{root}: no such run directory")
    page = _render(_load(root))
    path = root / "report.html"
    with atomic_open(path) as f:
        f.write(page)
    log.info("wrote %s", path)
    return path
