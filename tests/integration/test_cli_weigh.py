"""`winnow weigh` and `winnow select` end to end on the tiny model."""

from __future__ import annotations

import json
import random

import pytest

from tests.conftest import write_jsonl
from winnow.cli import main
from winnow.data import read_examples
from winnow.io import read_jsonl


@pytest.fixture
def pool_val(tmp_path):
    rng = random.Random(0)
    pairs = sorted({(rng.randint(0, 99), rng.randint(0, 99)) for _ in range(120)})
    pool = [{"id": f"p{i}", "prompt": f"What is {a} plus {b}?", "completion": f"{a} plus {b} is {a + b}."}
            for i, (a, b) in enumerate(pairs[:40])]
    val = [{"prompt": f"What is {a} plus {b}?", "completion": f"{a} plus {b} is {a + b}."} for a, b in pairs[40:46]]
    return write_jsonl(tmp_path / "pool.jsonl", pool), write_jsonl(tmp_path / "val.jsonl", val)


def test_weigh_then_select_writes_weights_by_id(tmp_path, pool_val):
    pool, val = pool_val
    out = tmp_path / "weigh"
    assert main(["weigh", "--pool", str(pool), "--val", str(val), "--model", "tiny", "--out", str(out),
                 "--rounds", "3", "--steps-per-round", "2", "--no-progress"]) == 0
    rows = read_jsonl(out / "weights.jsonl")
    ids = {e.id for e in read_examples(pool)}
    assert {r["id"] for r in rows} == ids and sorted(r["rank"] for r in rows) == list(range(1, 41))
    assert abs(sum(r["weight"] for r in rows) / 40 - 1) < 1e-4  # N·softmax: mean weight 1
    assert all({"logit", "upper_loss", "lower_loss"} <= set(r) for r in rows)
    snaps = json.loads((out / "snapshots.json").read_text())
    assert len(snaps["rounds"]) == 3 and len(snaps["rounds"][0]) == 40
    assert [r["round"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]
    assert all((out / w / "model.safetensors").exists() for w in ("upper", "lower")) and (out / "done.json").exists()

    for budget, kept in (("0.75", 30), ("0.5", 20)):  # another budget never re-weighs
        sel = tmp_path / f"sel{budget}"
        assert main(["select", "--weights", str(out / "weights.jsonl"), "--pool", str(pool), "--top", budget,
                     "--out", str(sel)]) == 0
        k, r = read_jsonl(sel / "kept.jsonl"), read_jsonl(sel / "rejected.jsonl")
        assert len(k) == kept and len(r) == 40 - kept
        assert min(x["weight"] for x in k) >= max(x["weight"] for x in r)
        assert all("reason" in x and x["rank"] > kept for x in r)


@pytest.mark.parametrize("method", ["random", "length", "base_loss", "val_gain", "ifd", "lite"])
def test_baselines_and_lite_behind_the_same_interface(tmp_path, pool_val, method):
    pool, val = pool_val
    out = tmp_path / method
    assert main(["weigh", "--pool", str(pool), "--val", str(val), "--model", "tiny", "--out", str(out),
                 "--method", method, "--rounds", "2", "--steps-per-round", "2", "--no-progress"]) == 0
    rows = read_jsonl(out / "weights.jsonl")
    distinct = len({r["score"] for r in rows})  # a real per-example score (lengths here take 3 values)
    assert len(rows) == 40 and distinct >= (3 if method == "length" else 30)
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)


def test_weigh_and_select_bad_input(tmp_path, pool_val, capsys):
    pool, val = pool_val
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["weigh", "--pool", str(pool), "--val", str(empty), "--model", "tiny",
                 "--out", str(tmp_path / "a")]) == 2
    assert "empty.jsonl: the file is empty" in capsys.readouterr().err
    one = write_jsonl(tmp_path / "one.jsonl", [{"prompt": "q", "completion": "a"}])
    assert main(["weigh", "--pool", str(one), "--val", str(val), "--model", "tiny", "--out", str(tmp_path / "b")]) == 2
    assert "at least 2 examples" in capsys.readouterr().err
    w = write_jsonl(tmp_path / "w.jsonl", [{"id": "x", "weight": 1.0, "score": 1.0}])
    assert main(["select", "--weights", str(w), "--pool", str(pool), "--top", "0.5", "--out", str(tmp_path / "c")]) == 2
    assert "40 of 40 examples have no score" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in "abc")


def test_non_finite_losses_name_the_example_ids(tmp_path, pool_val, capsys):
    pool, val = pool_val
    # a learning rate this large blows the tiny model up within the first round
    code = main(["weigh", "--pool", str(pool), "--val", str(val), "--model", "tiny", "--out", str(tmp_path / "w"),
                 "--model-lr", "1e6", "--rounds", "1", "--steps-per-round", "4", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "non-finite" in err and "example ids ['p" in err
    assert not (tmp_path / "w" / "weights.jsonl").exists()
