"""`winnow refine` and `winnow eval` from the command line on the tiny model (real HF generation)."""

from __future__ import annotations

import json
import random

from tests.conftest import write_jsonl
from winnow.cli import main
from winnow.data import read_examples
from winnow.io import read_jsonl


def test_refine_then_train_then_eval(tmp_path, capsys):
    rng = random.Random(1)
    pairs = sorted({(rng.randint(0, 99), rng.randint(0, 99)) for _ in range(80)})[:36]
    rows = [{"id": f"p{i}", "prompt": f"What is {a} plus {b}?", "completion": f"{a} plus {b} is {a + b}."}
            for i, (a, b) in enumerate(pairs)]
    pool = write_jsonl(tmp_path / "pool.jsonl", rows[:24])
    val = write_jsonl(tmp_path / "val.jsonl", rows[24:30])
    test = write_jsonl(tmp_path / "test.jsonl", [{**r, "harmful": i % 2 == 0} for i, r in enumerate(rows[30:])])
    weights = write_jsonl(tmp_path / "w.jsonl", [{"id": r["id"], "weight": 0.1 if i < 6 else 1.0}
                                                  for i, r in enumerate(rows[:24])])
    out = tmp_path / "refine"
    assert main(["refine", "--pool", str(pool), "--val", str(val), "--weights", str(weights), "--model", "tiny",
                 "--out", str(out), "--keep-top", "0.75", "--rounds", "1", "--samples-per-question", "2",
                 "--steps-per-round", "2", "--max-new-tokens", "8", "--judge-refusals", "--no-progress"]) == 0
    assert "kept pairs" in capsys.readouterr().out
    refined = read_examples(out / "refined.jsonl")
    assert sum(e.source == "original" for e in refined) == 18
    generated = read_jsonl(out / "rounds" / "round-1.jsonl") + read_jsonl(out / "skipped.jsonl")
    assert len(generated) == 6 * 2  # every answer to the 6 refined questions is either kept or skipped with why
    assert all(r["reason"] for r in read_jsonl(out / "skipped.jsonl"))
    assert "refusal_share" in read_jsonl(out / "metrics.jsonl")[0] or not read_jsonl(out / "rounds" / "round-1.jsonl")

    train = tmp_path / "sft"
    assert main(["train", "--data", str(pool), "--model", "tiny", "--out", str(train), "--max-steps", "2",
                 "--no-progress"]) == 0
    ev = tmp_path / "eval"
    assert main(["eval", "--model-dir", str(train), "--test", str(test), "--out", str(ev),
                 "--max-new-tokens", "4"]) == 0
    printed = capsys.readouterr().out
    assert "harmful_refusal_rate" in printed and "judge accuracy" in printed
    res = json.loads((ev / "results.json").read_text())
    assert res["metrics"]["n_harmful"] == 3 and res["metrics"]["n_benign"] == 3
    assert len(read_jsonl(ev / "generations.jsonl")) == 6 and (ev / "done.json").exists()
