"""`winnow train` and `winnow validate` end to end through the CLI on the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys

from safetensors.torch import load_file

from tests.conftest import write_jsonl
from winnow.cli import main
from winnow.io import read_jsonl
from winnow.models import load_model


def test_train_learns_saves_and_reloads(tmp_path, data_files, capsys):
    train, val = data_files
    out = tmp_path / "run"
    code = main(["train", "--data", str(train), "--val", str(val), "--model", "tiny", "--out", str(out),
                 "--epochs", "4", "--lr", "2e-3", "--batch-size", "8", "--eval-every", "10", "--no-progress"])
    assert code == 0
    assert "model saved to" in capsys.readouterr().out
    rows = read_jsonl(out / "metrics.jsonl")
    losses = [r["loss"] for r in rows if "loss" in r]
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    assert len(losses) == 40 and len(vals) == 4
    assert losses[-1] < 0.6 * losses[0] and vals[-1] < vals[0]  # it learned the pattern
    done = json.loads((out / "done.json").read_text())
    assert done["steps"] == 40 and done["config"]["lr"] == 2e-3 and "torch" in done["versions"]
    model, tok = load_model(str(out / "model"))
    assert tok.eos_token == "<|im_end|>" and model.config.num_hidden_layers == 2
    # re-running a finished run does nothing and keeps the model
    before = load_file(out / "model" / "model.safetensors")
    assert main(["train", "--data", str(train), "--model", "tiny", "--out", str(out), "--no-progress"]) == 0
    after = load_file(out / "model" / "model.safetensors")
    assert all((before[k] == after[k]).all() for k in before)


def test_weights_file_excludes_zero_weight_examples(tmp_path, data_files):
    train, _ = data_files
    ids = [json.loads(line) for line in train.read_text().splitlines()]
    from winnow.data import read_examples

    exs = read_examples(train)
    w = write_jsonl(tmp_path / "w.jsonl", [{"id": e.id, "weight": float(i % 2)} for i, e in enumerate(exs)])
    out = tmp_path / "run"
    assert main(["train", "--data", str(train), "--weights", str(w), "--model", "tiny", "--out", str(out),
                 "--max-steps", "2", "--no-progress"]) == 0
    report = json.loads((out / "data_report.json").read_text())
    assert report["trained"] == len(ids) // 2 and report["zero_weight"] == len(ids) // 2


def test_bad_input_exits_2_with_no_partial_output(tmp_path, data_files):
    train, _ = data_files
    bad = tmp_path / "bad.jsonl"
    bad.write_text(train.read_text() + '{"prompt": "q", "completion": ""}\n')
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "winnow.cli", "train", "--data", str(bad), "--model", "tiny",
                           "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert f'{bad}:81: field "completion": empty' in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_unknown_model_and_mismatched_weights_exit_2(tmp_path, data_files, capsys):
    train, _ = data_files
    assert main(["train", "--data", str(train), "--model", "no-such-model", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "no-such-model" in err and "smollm2-135m" in err
    w = write_jsonl(tmp_path / "w.jsonl", [{"id": "nope", "weight": 1.0}])
    assert main(["train", "--data", str(train), "--weights", str(w), "--model", "tiny",
                 "--out", str(tmp_path / "b")]) == 2
    assert "80 of 80 example ids have no weight" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_validate_reports_counts_lengths_and_drops(tmp_path, capsys):
    rows = [{"prompt": f"What is {i} plus {i}?", "completion": f"{i} plus {i} is {2 * i}."} for i in range(30)]
    rows += [rows[0], {"prompt": "long " * 300, "completion": "short."}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    assert main(["validate", "--data", str(path), "--model", "tiny", "--max-length", "64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["records"] == 32 and report["examples"] == 31 and report["duplicates_dropped"] == 1
    assert report["trainable"] == 30 and report["dropped"] == 1 and report["drop_reasons"] == {"too long": 1}
    assert report["tokens"]["max"] <= 64 and 0 <= report["padding_fraction"] <= report["padding_fraction_ungrouped"]
    assert main(["validate", "--data", str(path), "--model", "tiny", "--max-length", "64"]) == 0
    assert "duplicates dropped: 1" in capsys.readouterr().out
