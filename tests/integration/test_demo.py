"""`winnow demo --quick`: the whole pipeline from the command line, with its table and report."""

from __future__ import annotations

import json

from winnow.cli import main


def test_quick_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    for arm in ("direct", "bds", "bds_refine", "oracle", "random"):
        assert f"| {arm} |" in text
    assert "refusal judge accuracy on pyrit's human-labelled responses: 0.914" in text
    assert f"report: {out}/report.html" in text
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["arms"]) == {"direct", "bds", "bds_refine", "oracle", "random"}
    for stats in summary["arms"].values():
        assert 0 <= stats["harmful_refusal_rate"]["mean"] <= 1 and stats["benign_loss"]["mean"] > 0
    html = (out / "report.html").read_text()
    for heading in ("Weight distribution", "Weight trajectories", "BDS rounds", "Refinement", "Training curves",
                    "Arm comparison"):
        assert heading in html, heading
    assert html.count("<img") == 6
