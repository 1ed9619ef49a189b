"""The whole run on the tiny model: stages, arms, summary, report, and resume after a kill."""

from __future__ import annotations

import json

import pytest

from winnow.cli import main
from winnow.config import RunConfig
from winnow.pipeline import arm_data, prepare_data, run_pipeline


def _config(**kw) -> RunConfig:
    base = dict(task="safety", pool_size=24, val_size=8, test_size=8, model="tiny", max_length=96, seeds=[0, 1],
                arms=["direct", "bds", "bds_refine", "oracle", "random"],
                weigh=dict(rounds=2, steps_per_round=2, batch_size=8),
                refine=dict(rounds=1, steps_per_round=2, samples_per_question=2, max_new_tokens=12),
                train=dict(max_steps=3, batch_size=8, lr=1e-3, save_every=1), eval=dict(max_new_tokens=6))
    return RunConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, run_pipeline(_config(), out, progress=False)


def test_run_writes_every_stage_and_a_summary(finished):
    out, summary = finished
    for stage in ("task", "weigh", "select", "refine"):
        assert (out / stage / "done.json").exists(), stage
    for arm in ("direct", "bds", "bds_refine", "oracle", "random"):
        for seed in (0, 1):
            assert (out / "arms" / arm / f"seed{seed}" / "eval" / "done.json").exists()
        stats = summary["arms"][arm]["harmful_refusal_rate"]
        assert len(stats["values"]) == 2 and 0 <= stats["mean"] <= 1
    assert summary["selection"]["n"] == 24 if "n" in summary["selection"] else True
    assert 0.85 < summary["judge_accuracy"] < 1
    md = (out / "summary.md").read_text()
    assert md.count("\n| ") >= 5 and "bds_refine" in md
    html = (out / "report.html").read_text()
    assert html.count("<img") >= 6


def test_arms_train_on_what_they_should(finished):
    out, _ = finished
    config = _config()
    data = prepare_data(config, out / "task")
    n_val = len(data.val)
    direct = arm_data(config, data, out, "direct", 0)
    bds = arm_data(config, data, out, "bds", 0)
    oracle = arm_data(config, data, out, "oracle", 0)
    rand = arm_data(config, data, out, "random", 0)
    assert len(direct) == 24 + n_val and len(bds) == round(0.8 * 24) + n_val == len(rand)
    assert all(data.labels[e.id] == "good" for e in oracle[:-n_val])
    assert {e.id for e in arm_data(config, data, out, "random", 1)} != {e.id for e in rand}
    refined = arm_data(config, data, out, "bds_refine", 0)
    assert {e.source for e in refined} <= {"original", "regenerated"}
    assert all(e.weight == 1.0 for e in refined if e.source == "original")


def test_killed_run_resumes_to_the_same_summary(finished, tmp_path, monkeypatch):
    out_a, summary_a = finished
    import winnow.train

    real, calls = winnow.train.weighted_step, {"n": 0}

    def dies(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 8:  # in the third arm's training, after a checkpoint
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(winnow.train, "weighted_step", dies)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(_config(), tmp_path, progress=False)
    assert not (tmp_path / "summary.json").exists()
    assert any((tmp_path / "arms").glob("*/seed*/train/checkpoints/step-*"))
    monkeypatch.setattr(winnow.train, "weighted_step", real)
    summary_b = run_pipeline(_config(), tmp_path, progress=False)
    for arm, stats in summary_a["arms"].items():
        for metric, s in stats.items():
            assert summary_b["arms"][arm][metric]["values"] == pytest.approx(s["values"], abs=1e-5), (arm, metric)


def test_a_run_directory_refuses_another_config(finished):
    out, _ = finished
    from winnow.errors import WinnowError

    with pytest.raises(WinnowError, match="another config"):
        run_pipeline(_config(keep_top=0.5), out, progress=False)


def test_cli_run_resumes_a_finished_run_without_work(finished, tmp_path, capsys):
    out, summary = finished
    import yaml

    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(json.loads(json.dumps(_config().__dict__))))
    assert main(["run", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "| direct |" in text and "report.html" in text
