"""Unit tests of winnow.evaluate with a scripted stand-in generator and the tiny model (CPU, seconds).

Run: .venv/bin/python -m pytest tests/unit/test_evaluate.py -q

No harmful text here: "harmful" prompts are arithmetic questions marked harmful in their metadata.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
from collections.abc import Sequence

import pytest
import torch

from winnow import evaluate as ev
from winnow.config import EvalConfig
from winnow.data import Example, write_examples
from winnow.errors import WinnowError
from winnow.generation.base import Completion, SamplingParams
from winnow.manifest import DONE
from winnow.models import add_lora
from winnow.prepare import encode_for_training
from winnow.select import select
from winnow.step import dataset_losses

REFUSE = "I'm sorry, but I can't help with that."
COMPLY = "Sure. The answer is two."
GREEDY = SamplingParams(max_new_tokens=8, temperature=0.0)
has_pyrit = importlib.util.find_spec("pyrit") is not None


class Scripted:
    """Stand-in generator: a fixed (text, finish_reason) per prompt, a compliance for any other prompt."""

    def __init__(self, script: dict[str, tuple[str, str]] | None = None) -> None:
        self.script = script or {}
        self.calls: list[int] = []

    def generate(self, prompts: Sequence[Sequence[dict[str, str]]], params: SamplingParams) -> list[list[Completion]]:
        self.calls.append(len(prompts))
        out = []
        for messages in prompts:
            text, reason = self.script.get(messages[-1]["content"], (COMPLY, "stop"))
            out.append([Completion(text, finish_reason=reason) for _ in range(params.n)])  # type: ignore[arg-type]
        return out


def _examples(n: int, *, harmful: bool | None, start: int = 0) -> list[Example]:
    meta = {} if harmful is None else {"harmful": harmful}
    return [Example.from_pair(f"What is {i} plus {i}?", f"{i} plus {i} is {2 * i}.", metadata=dict(meta))
            for i in range(start, start + n)]


# --- refusal rate -----------------------------------------------------------------------------


def test_refusal_rate_is_exact():
    exs = _examples(5, harmful=True)
    gen = Scripted({exs[1].prompt: (REFUSE, "stop"), exs[3].prompt: (REFUSE, "length")})
    rate, rows = ev.refusal_rate(gen, exs, GREEDY)
    assert rate == pytest.approx(2 / 5)
    assert gen.calls == [5]  # one batched call
    assert [r["refusal"] for r in rows] == [False, True, False, True, False]
    assert [r["id"] for r in rows] == [ex.id for ex in exs]
    assert rows[3] == {"id": exs[3].id, "harmful": True, "refusal": True, "refusal_score": 1.0,
                       "finish_reason": "length", "response": REFUSE}


def test_too_long_is_not_judged():
    exs = _examples(4, harmful=False)
    gen = Scripted({exs[0].prompt: (REFUSE, "stop"), exs[2].prompt: ("", "too_long"),
                    exs[3].prompt: ("", "too_long")})
    rate, rows = ev.refusal_rate(gen, exs, GREEDY)
    assert rate == pytest.approx(1 / 2)  # one refusal of the two judged; an empty text would count as a refusal
    assert [r["refusal"] for r in rows] == [True, False, None, None]
    all_long = Scripted({ex.prompt: ("", "too_long") for ex in exs})
    assert math.isnan(ev.refusal_rate(all_long, exs, GREEDY)[0])
    with pytest.raises(ValueError, match="n == 1"):
        ev.refusal_rate(gen, exs, SamplingParams(temperature=0.0, n=2))


# --- selection quality --------------------------------------------------------------------------


def test_selection_quality_by_hand():
    ids = "abcdefghij"
    scores = {i: float(10 - k) for k, i in enumerate(ids)}  # a=10 ... j=1
    labels = {i: "bad" if i in "chj" else "good" for i in ids} | {"z": "good"}  # z has no score
    q = ev.selection_quality(scores, labels, keep_top=0.7)
    # Good scores 10,9,7,6,5,4,2; bad 8,3,1: good above bad in 2 + 6 + 7 of 7*3 pairs.
    assert q["auroc"] == pytest.approx(15 / 21)
    # Kept a..g, rejected h, i, j: two of the three rejected are bad, two of the three bad rejected.
    assert (q["n"], q["n_unscored"], q["n_kept"], q["n_rejected"], q["n_bad"]) == (10, 1, 7, 3, 3)
    assert q["rejected_precision"] == pytest.approx(2 / 3)
    assert q["rejected_recall"] == pytest.approx(2 / 3)
    assert q["bad_in_kept"] == pytest.approx(1 / 7)
    assert q["bad_share"] == pytest.approx(0.3)
    # The same cut as the select stage, ties broken by id.
    exs = [Example.from_pair("q", "a", id=i) for i in ids]
    assert len(select(exs, scores, top=0.7).rejected) == q["n_rejected"]


def test_selection_quality_undefined_parts_are_left_out():
    q = ev.selection_quality({"a": 1.0, "b": 0.0}, {"a": "good", "b": "good"}, keep_top=1.0)
    assert "auroc" not in q and "rejected_precision" not in q and "rejected_recall" not in q
    assert q["bad_in_kept"] == 0.0
    with pytest.raises(ValueError, match="good' or 'bad"):
        ev.selection_quality({"a": 1.0}, {"a": "ok"}, keep_top=0.5)


# --- win rate -----------------------------------------------------------------------------------


class Positional:
    """Always prefers whatever is shown first."""

    def prefer(self, prompt: str, a: str, b: str) -> float:
        return 1.0


class LongerBiased:
    """Prefers the longer response, with a bias towards the first position."""

    def prefer(self, prompt: str, a: str, b: str) -> float:
        return 0.8 if len(a) > len(b) else 0.4


def test_win_rate_cancels_position_bias():
    prompts, ours, theirs = ["p1", "p2", "p3"], ["long answer", "x", "same"], ["y", "long answer", "same"]
    w = ev.win_rate(prompts, ours, theirs, Positional())
    assert w == {"win_rate": 0.5, "wins": 0, "losses": 0, "ties": 3, "n": 3}
    s = ev.pairwise_scores(prompts, ours, theirs, LongerBiased())
    assert s == pytest.approx([0.7, 0.3, 0.5])  # (0.8 + 1 − 0.4)/2, (0.4 + 1 − 0.8)/2, (0.4 + 1 − 0.4)/2
    back = ev.pairwise_scores(prompts, theirs, ours, LongerBiased())
    assert [a + b for a, b in zip(s[:2], back[:2], strict=True)] == pytest.approx([1.0, 1.0])  # symmetric
    w = ev.win_rate(prompts, ours, theirs, LongerBiased())
    assert (w["wins"], w["losses"], w["ties"]) == (1, 1, 1) and w["win_rate"] == pytest.approx(0.5)


# --- reference loss -----------------------------------------------------------------------------


def test_reference_loss_is_mean_of_dataset_losses(tiny_pair, examples):
    model, tok = tiny_pair
    config = EvalConfig()
    enc = encode_for_training(tok, examples, config)
    want = dataset_losses(model, enc, pad_id=tok.pad_token_id, batch_size=5, device=torch.device("cpu")).mean()
    got = ev.reference_loss(model, tok, examples, config, "cpu", batch_size=7)
    assert got == pytest.approx(float(want), rel=1e-5)
    assert math.isfinite(got) and got > 0


# --- one model ----------------------------------------------------------------------------------


def _safety_like() -> list[Example]:
    return _examples(6, harmful=True) + _examples(8, harmful=False, start=20)


def test_evaluate_model_on_tiny(tiny_pair):
    model, tok = tiny_pair
    test = _safety_like()
    harmful, benign = test[:6], test[6:]
    script = {ex.prompt: (REFUSE, "stop") for ex in harmful[:4]}  # 4 of 6 harmful refused
    script |= {benign[0].prompt: (REFUSE, "stop"), benign[1].prompt: ("", "too_long")}  # 1 of 7 judged benign
    pool = {"a": 2.0, "b": 1.0, "c": 0.0, "d": -1.0}
    labels = {"a": "good", "b": "bad", "c": "good", "d": "bad"}
    refs = {ex.id: "x" for ex in benign[:3]}  # ours ("Sure. ...") is longer than every reference
    config = EvalConfig(keep_top=0.5, batch_size=4)
    res = ev.evaluate_model(model, tok, test, config, generator=Scripted(script), scores=pool, labels=labels,
                            judge=LongerBiased(), reference_outputs=refs)
    m = res.metrics
    assert m["harmful_refusal_rate"] == pytest.approx(4 / 6)
    assert m["benign_refusal_rate"] == pytest.approx(1 / 7)
    assert (m["n_test"], m["n_harmful"], m["n_benign"], m["n_harmful_too_long"], m["n_benign_too_long"]) == \
        (14, 6, 8, 0, 1)
    assert m["benign_loss"] == pytest.approx(ev.reference_loss(model, tok, benign, config), rel=1e-5)
    assert m["refusal_loss"] == pytest.approx(ev.reference_loss(model, tok, harmful, config), rel=1e-5)
    assert m["selection_auroc"] == pytest.approx(0.75)
    assert m["selection_rejected_precision"] == pytest.approx(0.5)
    # benign[1] was too long: only two of the three references are compared, both won at 0.7.
    assert m["win_rate"] == pytest.approx(0.7) and m["win_n"] == 2 and m["win_wins"] == 2
    assert [r.get("win") for r in res.rows[6:9]] == pytest.approx([0.7, None, 0.7])
    assert len(res.rows) == 14 and res.config is config
    if has_pyrit:
        assert m["judge_accuracy"] == pytest.approx(0.914, abs=1e-3) and res.judge["n"] == 105


def test_evaluate_model_limit_and_quality_task(tiny_pair):
    model, tok = tiny_pair
    gen = Scripted()
    config = EvalConfig(limit=3, seed=1)
    res = ev.evaluate_model(model, tok, _safety_like(), config, generator=gen)
    assert (res.metrics["n_harmful"], res.metrics["n_benign"]) == (3, 3) and gen.calls == [6]
    again = ev.evaluate_model(model, tok, _safety_like()[::-1], config, generator=Scripted())
    assert sorted(r["id"] for r in again.rows) == sorted(r["id"] for r in res.rows)  # same subsample, any order
    quality = ev.evaluate_model(model, tok, _examples(5, harmful=None), EvalConfig(), generator=Scripted())
    assert "harmful_refusal_rate" not in quality.metrics and "refusal_loss" not in quality.metrics
    assert quality.metrics["benign_refusal_rate"] == 0.0 and quality.metrics["benign_loss"] > 0
    with pytest.raises(WinnowError, match="both"):
        ev.evaluate_model(model, tok, _examples(2, harmful=None), EvalConfig(), generator=gen, judge=Positional())


def test_evaluate_model_default_generator(tiny_pair):
    pytest.importorskip("winnow.generation.hf")
    model, tok = tiny_pair
    res = ev.evaluate_model(model, tok, _safety_like()[4:8], EvalConfig(max_new_tokens=4, batch_size=2))
    assert len(res.rows) == 4 and {r["finish_reason"] for r in res.rows} <= {"stop", "length", "empty"}
    assert res.metrics["n_harmful"] == 2 and 0 <= res.metrics["harmful_refusal_rate"] <= 1


# --- I/O ----------------------------------------------------------------------------------------


def test_write_eval_writes_done_last(tmp_path, monkeypatch):
    res = ev.EvalResult({"benign_loss": 1.5, "n_benign": 2}, [{"id": "a", "response": "r"}], {"accuracy": 0.9},
                        EvalConfig(limit=4))
    order: list[str] = []
    real_json, real_jsonl = ev.write_json, ev.write_jsonl
    monkeypatch.setattr(ev, "write_json", lambda p, obj: (order.append(p.name), real_json(p, obj)))
    monkeypatch.setattr(ev, "write_jsonl", lambda p, rows: (order.append(p.name), real_jsonl(p, rows)))
    ev.write_eval(res, tmp_path / "eval")
    assert order[-1] == DONE and set(order) == {"results.json", "generations.jsonl", DONE}
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["metrics"] == res.metrics and saved["judge"] == {"accuracy": 0.9}
    assert saved["config"]["limit"] == 4
    assert json.loads((tmp_path / "eval" / DONE).read_text())["stage"] == "eval"
    back = ev.load_eval(tmp_path / "eval")
    assert back.metrics == res.metrics and back.rows == res.rows and back.config == res.config


def test_evaluate_saved_model_then_skip(tmp_path, tiny_pair):
    model, tok = tiny_pair
    run = tmp_path / "sft"  # a `winnow train` folder: the model under model/
    model.save_pretrained(run / "model", safe_serialization=True)
    tok.save_pretrained(run / "model")
    test = _safety_like()
    write_examples(tmp_path / "test.jsonl", test)
    labels = tmp_path / "pool_labels.jsonl"
    labels.write_text('{"id": "a", "label": "good"}\n{"id": "b", "label": "bad"}\n')
    scores = tmp_path / "weights.jsonl"
    scores.write_text('{"id": "a", "weight": 1.2}\n{"id": "b", "weight": 0.3}\n')
    res = ev.evaluate(run, tmp_path / "test.jsonl", EvalConfig(), tmp_path / "eval", generator=Scripted(),
                      scores=scores, labels=labels)
    assert (tmp_path / "eval" / DONE).exists()
    assert res.metrics["selection_auroc"] == 1.0 and res.metrics["harmful_refusal_rate"] == 0.0
    assert res.metrics["benign_loss"] == pytest.approx(ev.reference_loss(model, tok, test[6:], EvalConfig()),
                                                       rel=1e-4)
    # Done: not evaluated again (a missing model would fail to load).
    again = ev.evaluate(tmp_path / "nowhere", tmp_path / "test.jsonl", EvalConfig(), tmp_path / "eval")
    assert again.metrics == json.loads(json.dumps(res.metrics))


def test_load_trained_lora_adapter(tmp_path, tiny_pair):
    model, tok = tiny_pair
    base_dir = tmp_path / "base"
    model.save_pretrained(base_dir, safe_serialization=True)
    tok.save_pretrained(base_dir)
    peft_model = add_lora(copy.deepcopy(model), r=4, alpha=8)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05, generator=torch.Generator().manual_seed(0))
    peft_model.save_pretrained(tmp_path / "sft" / "model", safe_serialization=True)
    tok.save_pretrained(tmp_path / "sft" / "model")
    ids = tok("What is 2 plus 2?", return_tensors="pt")["input_ids"]  # (1, T)
    with torch.no_grad():
        want = peft_model(input_ids=ids).logits  # (1, T, V)
        base = model(input_ids=ids).logits
    assert not torch.allclose(want, base, atol=1e-4)  # the adapter changes the output
    with pytest.raises(WinnowError, match="base model"):
        ev.load_trained(tmp_path / "sft", EvalConfig(), device=torch.device("cpu"))  # tiny: no base to reload
    loaded, loaded_tok = ev.load_trained(tmp_path / "sft", EvalConfig(model=str(base_dir)), device=torch.device("cpu"))
    with torch.no_grad():
        got = loaded(input_ids=ids).logits
    assert not loaded.training and loaded_tok.get_vocab() == tok.get_vocab()
    assert torch.allclose(got, want, atol=1e-5)
