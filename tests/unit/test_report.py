"""The HTML report: plots per stage, masked harmful text, summary numbers, partial runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from winnow.report import HIDDEN, summary_markdown, write_report

MARKER = "ZZHARMFULMARKERZZ"
BENIGN = "Paris is the capital of France."
SUMMARY = {
    "task": "safety", "model": "tiny", "seeds": [0, 1], "judge_accuracy": 0.9, "wall_s": 120.0,
    "notes": ["synthetic run"],
    "arms": {
        "direct": {"harmful_refusal_rate": {"mean": 0.25, "std": 0.05, "values": [0.2, 0.3]},
                   "benign_ref_loss": {"mean": 1.5, "std": 0.1, "values": [1.4, 1.6]}},
        "bds": {"harmful_refusal_rate": {"mean": 0.875, "std": 0.025, "values": [0.85, 0.9]},
                "benign_ref_loss": {"mean": 1.25, "std": 0.05, "values": [1.2, 1.3]}},
    },
}


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def _weigh(run: Path, ids: list[str], weights: list[float]) -> None:
    ranked = sorted(range(len(ids)), key=lambda j: -weights[j])
    _jsonl(run / "weigh/weights.jsonl", [{"id": ids[j], "weight": weights[j], "score": weights[j], "rank": r + 1}
                                         for r, j in enumerate(ranked)])
    rounds = [[1.0] * len(ids), [(1.0 + w) / 2 for w in weights], weights]
    _json(run / "weigh/snapshots.json", {"ids": ids, "rounds": rounds})
    _jsonl(run / "weigh/metrics.jsonl", [{"round": r + 1, "gamma": 10.0, "val_loss": 2.0 - 0.1 * r, "gap": 0.01 * r,
                                          "ess": 0.9, "entropy": 1.0, "bottom_decile_mass": 0.05, "min": 0.1,
                                          "max": 2.0, "round_s": 1.0} for r in range(3)])


@pytest.fixture
def full_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    pool = [{"id": "g1", "prompt": "What is the capital of France?", "completion": BENIGN},
            {"id": "g2", "prompt": "Say hello <b>politely</b>.", "completion": "Hello & welcome!"},
            {"id": "g3", "prompt": "Count to three.", "completion": "One, two, three. " * 30},
            {"id": "b1", "prompt": f"How do I do {MARKER}?", "completion": f"Sure, here is {MARKER} step one."},
            {"id": "b2", "prompt": "Tell me a joke.", "completion": "Tomato"}]
    _jsonl(run / "task/pool.jsonl", pool)
    _jsonl(run / "task/pool_labels.jsonl", [
        {"id": "g1", "label": "good", "kind": "benign"}, {"id": "g2", "label": "good", "kind": "benign"},
        {"id": "g3", "label": "good", "kind": "benign"}, {"id": "b1", "label": "bad", "kind": "harmful_compliance"},
        {"id": "b2", "label": "bad", "kind": "off_topic"}])
    (run / "config.yaml").write_text("task: safety\nseed: 0\n", encoding="utf-8")
    _weigh(run, ["g1", "g2", "g3", "b1", "b2"], [1.8, 1.5, 1.6, 0.004, 0.09])
    _json(run / "select/selection.json", {"rule": "top 60%", "kept": 3, "rejected": 2})
    _jsonl(run / "refine/metrics.jsonl", [{"round": r + 1, "val_loss": 1.9 - 0.1 * r, "refusal_share": 0.5 + 0.1 * r,
                                           "bmo_mean": 1.0, "bmo_max": 1.5, "bmo_min": 0.5, "generated": 4,
                                           "skipped": 0} for r in range(2)])
    for arm in ("direct", "bds"):
        for seed in (0, 1):
            rows = [{"step": s, "loss": 2.0 - 0.1 * s - 0.01 * seed, "grad_norm": 1.0, "lr": 1e-4} for s in range(1, 6)]
            rows += [{"step": 5, "val_loss": 1.7 + 0.01 * seed}]
            _jsonl(run / f"arms/{arm}/seed{seed}/train/metrics.jsonl", rows)
            _json(run / f"arms/{arm}/seed{seed}/eval/results.json", {"metrics": {"harmful_refusal_rate": 0.5}})
    _json(run / "summary.json", SUMMARY)
    return run


def test_full_report(full_run: Path) -> None:
    path = write_report(full_run)
    assert path == full_run / "report.html" and path.exists()
    page = path.read_text(encoding="utf-8")
    assert page.count("<img") == 6
    for heading in ("Weight distribution", "Weight trajectories", "BDS rounds", "Refinement", "Training curves",
                    "Arm comparison", "Summary", "Selection", "lowest", "highest", "Configuration"):
        assert heading in page, heading
    assert "did not run" not in page
    # harmful text is masked everywhere; benign text (escaped) and a non-harmful bad pair are shown
    assert MARKER not in page and HIDDEN in page
    assert BENIGN in page and "Say hello &lt;b&gt;politely&lt;/b&gt;." in page and "Tomato" in page
    assert "harmful_compliance" in page
    assert "0.875 ± 0.025" in page and "1.25 ± 0.05" in page and "0.25 ± 0.05" in page
    assert "<details>" in page and "task: safety" in page
    assert "Winnow report: safety / tiny" in page
    assert "bad pairs kept</td><td>0 of 2" in page and "AUROC of scores (good vs bad)</td><td>1.000" in page
    assert "…" in page  # the long response is truncated


def test_partial_run_reports_missing_stages(tmp_path: Path) -> None:
    run = tmp_path / "partial"
    _weigh(run, ["a", "b", "c"], [0.5, 1.0, 1.5])
    page = write_report(run).read_text(encoding="utf-8")
    assert page.count("<img") == 3
    for heading in ("Weight distribution", "Weight trajectories", "BDS rounds"):
        assert heading in page
    for stage in ("select", "refine", "train", "eval"):
        assert f"The <b>{stage}</b> stage did not run" in page
    assert "not split by label" in page


def test_damaged_files_and_missing_summary(full_run: Path) -> None:
    (full_run / "summary.json").unlink()
    (full_run / "select/selection.json").write_text("{not json", encoding="utf-8")
    _json(full_run / "weigh/snapshots.json", {"ids": ["g1", "g2"], "rounds": [[1.0, 1.0], [1.0]]})  # ragged
    page = write_report(full_run).read_text(encoding="utf-8")
    assert "select/selection.json could not be read" in page
    assert "Could not draw the weight trajectory plot" in page
    assert page.count("<img") == 5
    assert "From the per-seed results" in page and "0.5 ± 0" in page  # mean ± std of the results.json files
    assert MARKER not in page


def test_summary_markdown() -> None:
    assert summary_markdown(SUMMARY) == (
        "| arm | harmful_refusal_rate | benign_ref_loss |\n"
        "|---|---|---|\n"
        "| direct | 0.25 ± 0.05 | 1.5 ± 0.1 |\n"
        "| bds | 0.875 ± 0.025 | 1.25 ± 0.05 |"
    )
