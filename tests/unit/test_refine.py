"""The online loop: question choice, sampler alignment, the importance correction, a whole run, resume."""

from __future__ import annotations

import contextlib
import json
import math

import pytest
import torch

from winnow.config import RefineConfig
from winnow.data import Example, collate, load_examples, read_examples
from winnow.data.formatting import encode
from winnow.errors import WinnowError
from winnow.generation.base import Completion, SamplingParams
from winnow.losses import clipped_ratio, sequence_nll, shift, token_logprobs
from winnow.online import sampler_logprobs
from winnow.refine import choose_questions, refine
from winnow.step import batch_token_logprobs

REFUSAL = "I can't help with that."


class StandIn:
    """Deterministic generator: refuses questions whose first number is even, answers others; one sample per
    question runs past ``max_new_tokens`` when asked for ``n > 1``."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.calls = 0

    def generate(self, prompts, params: SamplingParams):
        self.calls += 1
        out = []
        for msgs in prompts:
            q = msgs[-1]["content"]
            row = []
            for k in range(params.n):
                text = REFUSAL if _even(q) else f"{q.split()[2]} is a number {k + params.seed % 3}."
                ids = self.tok(text, add_special_tokens=False)["input_ids"] + [self.end]
                reason = "length" if k == 2 else "stop"
                row.append(Completion(text, ids, [-0.5] * len(ids), reason))
            out.append(row)
        return out


def _even(question: str) -> bool:
    return int(question.split()[2]) % 2 == 0


def _is_refusal(text: str, prompt: str) -> bool:
    return text.startswith("I can't")


@pytest.fixture
def setup(examples):
    pool, val = examples[:24], examples[24:32]
    weights = {ex.id: (0.2 if i % 4 == 0 else 1.2) for i, ex in enumerate(pool)}
    return pool, val, weights


def test_choose_questions_cuts_by_rank_and_adds_a_share_of_kept(setup):
    pool, _, weights = setup
    kept, ask = choose_questions(pool, weights, 0.75, 0.0, 0)
    assert len(kept) == 18 and {q.id for q in ask} == {ex.id for i, ex in enumerate(pool) if i % 4 == 0}
    kept2, ask2 = choose_questions(pool, weights, 0.75, 0.5, 0)
    assert kept2 == kept and len(ask2) == 6 + 9 and set(q.id for q in ask2[6:]) <= {e.id for e in kept}


def test_sampler_alignment_and_clipped_ratio_match_a_hand_computation(tiny):
    model, tok = tiny
    ex = Example.from_pair("What is 2 plus 2?", "2 plus 2 is 4.")
    enc = encode(tok, ex, max_length=64)
    targets = [t for t in enc.labels if t != -100]
    gen_ids = targets[:-1]  # the generator stopped one token before the template's last target
    lp_sampler = sampler_logprobs(enc, gen_ids, [-0.1 * (j + 1) for j in range(len(gen_ids))])
    assert lp_sampler[:-1] == pytest.approx([-0.1 * (j + 1) for j in range(len(gen_ids))])
    assert math.isnan(lp_sampler[-1])
    assert all(math.isnan(v) for v in sampler_logprobs(enc, [999999], [-1.0]))  # no alignment: no correction

    batch = collate([enc], [0], tok.pad_token_id)
    with torch.no_grad():
        logp, mask = batch_token_logprobs(model, batch)  # (1, T-1)
        logits = model(input_ids=batch["input_ids"]).logits
    ref, ref_mask = token_logprobs(logits, batch["labels"])
    assert torch.allclose(logp, ref, atol=1e-5) and torch.equal(mask, ref_mask)
    # by hand: target token t+1 is scored at position t (the one shift), ratio min(exp(now − sampler), c)
    _, labels = shift(logits, batch["labels"])
    pos = (labels[0] != -100).nonzero().flatten().tolist()
    sampler = torch.full_like(logp, math.nan)
    sampler[0, pos] = torch.tensor(lp_sampler)
    ratio = clipped_ratio(logp, sampler, 3.0)
    for j, t in enumerate(pos):
        lp_now = float(torch.log_softmax(logits[0, t], -1)[labels[0, t]])
        want = 1.0 if j == len(pos) - 1 else min(math.exp(lp_now - lp_sampler[j]), 3.0)
        assert float(ratio[0, t]) == pytest.approx(want, rel=1e-5)
    assert float(ratio[~mask].sum()) == float((~mask).sum())  # off-target: ratio 1, and masked out anyway
    weighted = sequence_nll(logp, mask, "sum", token_weights=ratio)
    assert float(weighted) == pytest.approx(-sum(float(ratio[0, t] * logp[0, t]) for t in pos), rel=1e-5)


def _config(**kw):
    # the per-step weights of the loop; tests of the held / weighted / sparsemax recipe set those options
    base = dict(model="tiny", keep_top=0.75, rounds=2, samples_per_question=3, steps_per_round=3,
                batch_size=4, online_batch_size=6, val_batch_size=4, max_length=64, model_lr=1e-3, seed=0,
                bmo_scope="question", bmo_tau=1.0, bmo_refresh="step", bmo_min_ess=0.0, online_sampling="uniform",
                lower_data="all", bmo_form="softmax")
    return RefineConfig(**{**base, **kw})


def test_refine_end_to_end_with_a_stand_in_generator(setup, tmp_path):
    pool, val, weights = setup
    gens = []

    def make(model, tok):
        gens.append(StandIn(tok))
        return gens[-1]

    res = refine(pool, val, weights, _config(), tmp_path / "r", generator_for=make, judge=_is_refusal, progress=False)
    out = tmp_path / "r"
    assert (out / "done.json").exists() and not (out / "checkpoints").exists()
    assert len(gens) == 2  # once per round
    refined = read_examples(out / "refined.jsonl")
    orig = [e for e in refined if e.source == "original"]
    regen = [e for e in refined if e.source == "regenerated"]
    assert len(orig) == 18 and abs(sum(e.weight for e in orig) / 18 - 1) < 1e-6  # kept, mean weight 1
    bad = {ex.id for i, ex in enumerate(pool) if i % 4 == 0}
    n_refusing = sum(_even(ex.prompt) for ex in pool if ex.id in bad)
    assert 0 < n_refusing < len(bad)  # the refusal share below is neither all nor nothing
    # the third sample was cut; a question's two identical refusals are one pair of the summed weight
    assert {e.parent_id for e in regen} == bad and len(regen) == 2 * len(bad) - n_refusing
    for parent in bad:  # BMO weights: mean 1 over each question's responses (2 draws)
        ws = [e.weight for e in regen if e.parent_id == parent]
        assert sum(ws) / 2 == pytest.approx(1.0, abs=1e-5)
    assert all(e.metadata["round"] == 2 for e in regen)
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert len(skipped) == 2 * len(bad) and {s["reason"] for s in skipped} == {"hit max_new_tokens"}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2] and all(math.isfinite(r["val_loss"]) for r in rows)
    assert rows[-1]["refusal_share"] == pytest.approx(n_refusing / len(bad))
    assert res.history == rows and len(res.examples) == len(refined)
    assert (out / "upper").is_dir()


@pytest.mark.parametrize("held", [{}, {"bmo_refresh": "generation", "bmo_min_ess": 0.5, "online_sampling": "weighted"},
                                  {"bmo_refresh": "generation", "lower_data": "kept", "online_sampling": "weighted"},
                                  {"bmo_refresh": "generation", "lower_data": "kept", "online_sampling": "weighted",
                                   "bmo_min_ess": 0.5, "bmo_form": "sparsemax"}])
def test_resumed_refinement_equals_uninterrupted(setup, tmp_path, held):
    pool, val, weights = setup
    cfg = _config(**held)
    make = lambda model, tok: StandIn(tok)  # noqa: E731
    refine(pool, val, weights, cfg, tmp_path / "a", generator_for=make, progress=False)

    calls = {"n": 0}

    def dies_in_round_two(text, prompt):
        calls["n"] += 1
        if calls["n"] > 18:  # round 1 judges its 18 responses (6 cut); round 2 dies before its checkpoint
            raise KeyboardInterrupt
        return False

    with pytest.raises(KeyboardInterrupt):
        refine(pool, val, weights, cfg, tmp_path / "b", generator_for=make, judge=dies_in_round_two, progress=False)
    assert not (tmp_path / "b" / "done.json").exists()
    assert [p.name for p in (tmp_path / "b" / "checkpoints").iterdir()] == ["step-00000001"]
    refine(pool, val, weights, cfg, tmp_path / "b", generator_for=make, progress=False)
    a = read_examples(tmp_path / "a" / "refined.jsonl")
    b = read_examples(tmp_path / "b" / "refined.jsonl")
    assert [e.id for e in a] == [e.id for e in b]
    assert [e.weight for e in a] == pytest.approx([e.weight for e in b], abs=1e-6)
    va = [json.loads(x)["val_loss"] for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    vb = [json.loads(x)["val_loss"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert va == pytest.approx(vb, abs=1e-6)


def test_refine_with_two_lora_adapters_trains_both_and_starts_from_a_saved_adapter(setup, tmp_path):
    pool, val, weights = setup
    from safetensors.torch import load_file

    make = lambda model, tok: StandIn(tok)  # noqa: E731
    cfg = _config(lora=True, lora_r=4, rounds=1, model_lr=1e-2)
    refine(pool, val, weights, cfg, tmp_path / "a", generator_for=make, progress=False)
    first = load_file(tmp_path / "a" / "upper" / "upper" / "adapter_model.safetensors")
    assert any(float(v.abs().sum()) > 0 for k, v in first.items() if "lora_B" in k)  # θ moved off B = 0
    # a second run starting from that adapter begins where the first ended
    res = refine(pool, val, weights, cfg, tmp_path / "b", start=tmp_path / "a" / "upper" / "upper",
                 generator_for=make, progress=False)
    assert res.history[0]["val_loss"] < json.loads((tmp_path / "a" / "metrics.jsonl").read_text())["val_loss"] + 0.5


def test_the_library_fake_generator_drives_a_round_and_bmo_favours_what_theta_prefers(setup, tmp_path):
    from winnow.generation import FakeGenerator

    pool, val, weights = setup
    res = refine(pool, val, weights, _config(rounds=1, max_length=160), tmp_path / "f",
                 generator_for=lambda model, tok: FakeGenerator(tokenizer=tok), progress=False)
    drawn = load_examples(tmp_path / "f" / "rounds" / "round-1.jsonl", dedupe=False).examples  # every draw
    assert len(drawn) == 6 * 3 and all(e.metadata["finish_reason"] == "stop" for e in drawn)
    assert res.history[0]["generated"] == 18 and res.history[0]["skipped"] == 0
    # per question the weights have mean 1, and identical responses to one question weigh the same
    for parent in {e.parent_id for e in drawn}:
        group = [e for e in drawn if e.parent_id == parent]
        assert sum(e.weight for e in group) / len(group) == pytest.approx(1.0, abs=1e-5)
        by_text: dict[str, float] = {}
        for e in group:
            assert by_text.setdefault(e.response, e.weight) == pytest.approx(e.weight, abs=1e-6)
    # the refined set holds each response once, with the summed weight of its identical draws
    regen = [e for e in res.examples if e.source == "regenerated"]
    assert len(regen) < len(drawn) and len({(e.prompt, e.response) for e in regen}) == len(regen)
    for e in regen:
        same = [d for d in drawn if (d.prompt, d.response) == (e.prompt, e.response)]
        assert e.weight == pytest.approx(sum(d.weight for d in same), abs=1e-5)
        assert e.metadata.get("copies", 1) == len(same)
    assert read_examples(tmp_path / "f" / "refined.jsonl") == res.examples  # nothing dropped on reading back


def test_round_scope_weighs_the_round_as_one_set_with_no_extra_forward_per_step(setup, tmp_path, monkeypatch):
    import winnow.refine as refine_mod

    pool, val, weights = setup
    scoring = {"n": 0}
    real = refine_mod.online_losses

    def counted(*args, **kw):
        scoring["n"] += 1
        return real(*args, **kw)

    monkeypatch.setattr(refine_mod, "online_losses", counted)
    res = refine(pool, val, weights, _config(bmo_scope="round", online_batch_size=4, gamma=0.5), tmp_path / "r",
                 generator_for=lambda model, tok: StandIn(tok), progress=False)
    regen = load_examples(tmp_path / "r" / "rounds" / "round-2.jsonl", dedupe=False).examples  # every draw
    assert sum(e.weight for e in regen) / len(regen) == pytest.approx(1.0, abs=1e-5)  # mean 1 over the round
    per_q = [sum(e.weight for e in regen if e.parent_id == p) / 2 for p in {e.parent_id for e in regen}]
    assert max(abs(m - 1) for m in per_q) > 1e-3  # ... not within each question
    # one scoring pass after each generation and one for the output, per round; none inside the steps
    assert scoring["n"] == 2 * 2
    assert all(r["step_bmo_max"] is not None for r in res.history)


def test_a_round_with_nothing_trainable_still_finishes_with_the_kept_pairs(setup, tmp_path):
    pool, val, weights = setup

    class AlwaysCut(StandIn):
        def generate(self, prompts, params):
            return [[Completion(c.text, c.token_ids, c.logprobs, "length") for c in row]
                    for row in super().generate(prompts, params)]

    res = refine(pool, val, weights, _config(rounds=1, bmo_scope="round"), tmp_path / "r",
                 generator_for=lambda model, tok: AlwaysCut(tok), progress=False)
    assert [e.source for e in res.examples] == ["original"] * 18
    assert res.history[0]["generated"] == 0 and res.history[0]["skipped"] == 18
    again = refine(pool, val, weights, _config(rounds=1, bmo_scope="round"), tmp_path / "r", progress=False)
    assert len(again.examples) == 18  # done: read back, nothing re-run


@pytest.mark.parametrize(("lora", "lower_data"), [(False, "all"), (True, "all"), (False, "kept")])
def test_a_step_differentiated_part_by_part_equals_the_one_combined_loss(setup, lora, lower_data):
    """``_step`` back-propagates the online, kept and validation parts one at a time (to free their
    graphs early); the update must equal one backward of ``L_val + γ·data`` for θ and ``data`` for φ
    (with ``lower_data="kept"``, φ's data is the kept batch alone)."""
    from winnow.bilevel import bmo_weights
    from winnow.online import encode_online, online_batch
    from winnow.paired import ROLES, make_pair
    from winnow.prepare import encode_for_training, prepare_model
    from winnow.refine import _step, generate_round
    from winnow.step import to_device

    pool, val, weights = setup
    cfg = _config(lora=lora, lora_r=4, gamma=2.0, importance_clip=10.0, lower_data=lower_data)
    kept, questions = choose_questions(pool, weights, cfg.keep_top, 0.0, 0)
    texts = [m["content"] for ex in [*pool, *val] for m in ex.messages]
    pairs, tok = [], None
    for _ in range(2):
        model, tok, use_lora = prepare_model(cfg, texts, seed=0, adapters=ROLES)
        pairs.append(make_pair(model.eval(), use_lora))
    if lora:  # B starts at 0, so move off it: a step from B = 0 leaves A's gradient 0 on both sides
        for pair in pairs:
            torch.manual_seed(1)
            with torch.no_grad():
                for w in ROLES:
                    for p in pair.params(w):
                        p.add_(0.05 * torch.randn_like(p))
    pad, dev = tok.pad_token_id, torch.device("cpu")
    samples, _ = generate_round(StandIn(tok), questions, cfg, 0)
    online = encode_online(tok, samples, cfg)
    ob = online_batch(online, list(range(6)), pad, dev)
    ob["sampler"][:, ::3] -= 0.7  # stale tokens, so the importance correction is not all ones
    kenc = encode_for_training(tok, kept[:4], cfg)
    kb = to_device(collate(kenc.items, list(range(4)), pad), dev)
    kp = torch.tensor([0.5, 1.0, 1.5, 1.0])
    vb = to_device(collate(encode_for_training(tok, val[:4], cfg).items, list(range(4)), pad), dev)

    opts = {w: torch.optim.SGD(pairs[0].params(w), lr=1.0) for w in ROLES}
    lam = _step(pairs[0], opts, cfg, contextlib.nullcontext, kept=(kb, kp), val=vb, online=ob)

    ref, ref_opts = pairs[1], {w: torch.optim.SGD(pairs[1].params(w), lr=1.0) for w in ROLES}
    lp = {w: batch_token_logprobs(ref.module(w), ob) for w in ROLES}
    seq = {w: sequence_nll(lp[w][0].detach(), lp[w][1], "sum") for w in ROLES}
    want_lam = bmo_weights(seq["upper"], seq["lower"], tau=cfg.bmo_tau, groups=ob["groups"])
    ratio = clipped_ratio(lp["upper"][0], ob["sampler"], 10.0)
    assert float((ratio - 1).abs().max()) > 0.1
    for w in ROLES:
        m = ref.module(w)
        on_kept = (kp * sequence_nll(*batch_token_logprobs(m, kb))).sum()
        if w == "lower" and lower_data == "kept":
            data = on_kept / 4
        else:
            data = (on_kept + (want_lam * sequence_nll(*lp[w], token_weights=ratio)).sum()) / (4 + 6)
        loss = sequence_nll(*batch_token_logprobs(m, vb)).mean() + 2.0 * data if w == "upper" else data
        ref_opts[w].zero_grad()
        loss.backward()
        ref_opts[w].step()

    assert lam == pytest.approx(want_lam.tolist(), rel=1e-5)
    for w in ROLES:
        got, want = pairs[0].params(w), ref.params(w)
        moved = max(float((a - b).detach().abs().max()) for a, b in zip(got, want, strict=True))
        assert moved < 1e-5
        assert sum(float(p.grad.abs().sum()) for p in got) > 1e-3  # both models took a real step


def test_the_learning_rate_ramps_over_the_rounds(setup, tmp_path):
    pool, val, weights = setup
    make = lambda model, tok: StandIn(tok)  # noqa: E731
    ramped = refine(pool, val, weights, _config(rounds=3, model_lr=1e-2, model_lr_end=1e-12), tmp_path / "a",
                    generator_for=make, progress=False).history
    assert [r["lr"] for r in ramped] == pytest.approx([1e-2, 5e-3, 1e-12])
    const = refine(pool, val, weights, _config(rounds=3, model_lr=1e-2), tmp_path / "b", generator_for=make,
                   progress=False).history
    assert [r["lr"] for r in const] == [1e-2] * 3
    # rounds 1-2 train (the validation loss moves); round 3 at ~0 learning rate leaves the models where they were
    assert ramped[0]["val_loss"] == pytest.approx(const[0]["val_loss"], abs=1e-9)
    assert abs(ramped[1]["val_loss"] - ramped[0]["val_loss"]) > 1e-3
    assert abs(const[2]["val_loss"] - const[1]["val_loss"]) > 1e-3
    assert ramped[2]["val_loss"] == pytest.approx(ramped[1]["val_loss"], abs=1e-6)



@pytest.mark.parametrize("scope", ["round", "question", "batch"])
def test_generation_refresh_holds_the_round_start_weights_for_the_whole_round(setup, tmp_path, monkeypatch, scope):
    """``bmo_refresh="generation"``: each response's λ comes from the scoring pass right after the
    generation and stays fixed through the round's steps (``step`` refresh: it moves as θ, φ train)."""
    import winnow.refine as refine_mod

    pool, val, weights = setup
    real_step, real_losses = refine_mod._step, refine_mod.online_losses
    rounds: list[dict[int, list[float]]] = []  # per generation: response index -> λ at each step it was in
    passes = {"n": 0}

    def recording_step(pair, opts, config, autocast, *, kept, val, online):
        lam = real_step(pair, opts, config, autocast, kept=kept, val=val, online=online)
        if online is None:
            return lam
        if config.bmo_refresh == "generation":  # the round-start weights (normalised over the batch: `batch`)
            held = online["held"][online["index"]]
            want = len(held) * held / held.sum() if config.bmo_scope == "batch" else held
            assert lam == pytest.approx(want.tolist(), rel=1e-5)
        for j, x in zip(online["index"].tolist(), lam, strict=True):
            rounds[-1].setdefault(j, []).append(x)
        return lam

    def counted_losses(*a, **kw):
        passes["n"] += 1
        return real_losses(*a, **kw)

    def make(model, tok):
        rounds.append({})
        return StandIn(tok)

    monkeypatch.setattr(refine_mod, "_step", recording_step)
    monkeypatch.setattr(refine_mod, "online_losses", counted_losses)
    logs = {}
    for refresh in ("generation", "step"):
        rounds.clear()
        passes["n"] = 0
        cfg = _config(rounds=2, steps_per_round=12, online_batch_size=4, bmo_scope=scope, model_lr=1e-2, gamma=0.5,
                      bmo_refresh=refresh)
        refine(pool, val, weights, cfg, tmp_path / refresh, generator_for=make, progress=False)
        # one scoring pass per generation; `step` needs one more per round for the output weights, and the
        # round scope also one per generation to seed its normalisation
        assert passes["n"] == {"generation": 2, "step": 4 if scope == "round" else 2}[refresh]
        logs[refresh] = rounds[-1]  # round 2: θ ≠ φ at its start
    held, moved = logs["generation"], logs["step"]
    assert any(len(xs) > 1 for xs in held.values())  # a response seen in more than one step ...
    if scope != "batch":
        assert all(max(xs) - min(xs) < 1e-6 for xs in held.values())  # ... keeps its weight
    assert max(xs[0] for xs in held.values()) - min(xs[0] for xs in held.values()) > 1e-3  # not uniform
    assert any(max(xs) - min(xs) > 1e-4 for xs in moved.values() if len(xs) > 1)  # per step: it moves
    if scope != "batch":  # the output carries the weights the round trained with
        drawn = load_examples(tmp_path / "generation" / "rounds" / "round-2.jsonl", dedupe=False).examples
        assert all(drawn[j].weight == pytest.approx(xs[0], abs=1e-5) for j, xs in held.items())


def test_a_minimum_effective_sample_size_flattens_the_held_weights(setup, tmp_path):
    from winnow.bilevel import ess_share

    pool, val, weights = setup
    make = lambda model, tok: StandIn(tok)  # noqa: E731
    ess, tau = {}, {}
    for floor in (0.0, 0.95):
        cfg = _config(rounds=2, steps_per_round=4, bmo_scope="round", bmo_tau=0.05, model_lr=1e-2,
                      bmo_refresh="generation", bmo_min_ess=floor)
        rows = refine(pool, val, weights, cfg, tmp_path / str(floor), generator_for=make, progress=False).history
        drawn = load_examples(tmp_path / str(floor) / "rounds" / "round-2.jsonl", dedupe=False).examples
        ess[floor] = ess_share(torch.tensor([e.weight for e in drawn]))
        tau[floor] = rows[-1]["bmo_tau"]
        assert rows[-1]["bmo_ess"] == pytest.approx(ess[floor], abs=1e-6)
    assert tau[0.0] == 0.05 and ess[0.0] < 0.9  # a sharp τ puts the weight on a few responses ...
    assert tau[0.95] > 0.05 and ess[0.95] >= 0.95 - 1e-4  # ... the floor raises τ until 95 % is effective


@pytest.mark.parametrize("lora", [False, True])
def test_refine_continues_both_models_of_the_weighing_stage(setup, tmp_path, lora):
    """``weigh`` saves ``θ`` and ``φ``; started from both, the first generation's held weights already tell
    them apart, where started from ``θ`` alone they are all 1 (``θ = φ``)."""
    from winnow.config import WeighConfig
    from winnow.paired import ROLES
    from winnow.weigh import weigh

    pool, val, weights = setup
    lora_kw = dict(lora=True, lora_r=4) if lora else {}
    weigh(pool, val, WeighConfig(model="tiny", max_length=64, batch_size=4, rounds=1, steps_per_round=3,
                                 model_lr=1e-2, seed=0, **lora_kw), tmp_path / "w", progress=False)
    saved = {w: tmp_path / "w" / w for w in ROLES}
    cfg = _config(rounds=1, steps_per_round=1, model_lr=1e-8, bmo_scope="round", bmo_refresh="generation", **lora_kw)
    make = lambda model, tok: StandIn(tok)  # noqa: E731
    held = {}
    for name, lower in (("theta", None), ("both", saved["lower"])):
        refine(pool, val, weights, cfg, tmp_path / name, start=saved["upper"], start_lower=lower,
               generator_for=make, progress=False)
        drawn = load_examples(tmp_path / name / "rounds" / "round-1.jsonl", dedupe=False).examples
        held[name] = [e.weight for e in drawn]
    assert held["theta"] == pytest.approx([1.0] * len(held["theta"]), abs=1e-6)
    assert max(abs(x - 1) for x in held["both"]) > 1e-3 and sum(held["both"]) == pytest.approx(len(held["both"]))


def test_weighted_online_sampling_draws_in_proportion_to_the_held_weights(setup, tmp_path, monkeypatch):
    """``online_sampling="weighted"``: a step's responses are drawn ∝ the held λ and trained with weight 1."""
    import winnow.refine as refine_mod
    from winnow.online import online_batches

    # the batches alone: frequencies follow the weights, a zero weight is never drawn
    w = torch.tensor([0.0, 1.0, 3.0, 0.0, 4.0])
    cfg = _config(bmo_refresh="generation", bmo_scope="round", online_sampling="weighted", online_batch_size=8)
    batches = online_batches({"items": [None] * 5}, cfg, seed=3, weights=w)
    counts = torch.bincount(torch.tensor([j for _ in range(500) for j in next(batches)]), minlength=5)
    assert counts[0] == 0 and counts[3] == 0
    assert (counts / counts.sum()).tolist() == pytest.approx([0, 0.125, 0.375, 0, 0.5], abs=0.02)
    one = online_batches({"items": [None]}, cfg, seed=3, weights=torch.tensor([1.0]))
    assert next(one) == [0]  # one response: a batch of one, as with uniform batches

    # in a run: every drawn response has weight 1 and the draws favour the heavy ones
    pool, val, weights = setup
    real_step = refine_mod._step
    seen: list[tuple[list[int], list[float], torch.Tensor]] = []

    def recording_step(pair, opts, config, autocast, *, kept, val, online):
        lam = real_step(pair, opts, config, autocast, kept=kept, val=val, online=online)
        if online is not None:
            seen.append((online["index"].tolist(), lam, online["held"]))
        return lam

    monkeypatch.setattr(refine_mod, "_step", recording_step)
    cfg = _config(rounds=2, steps_per_round=12, online_batch_size=4, bmo_scope="round", model_lr=1e-2, gamma=0.5,
                  bmo_tau=0.05, bmo_refresh="generation", online_sampling="weighted")
    refine(pool, val, weights, cfg, tmp_path / "w", generator_for=lambda m, t: StandIn(t), progress=False)
    round2 = seen[12:]
    assert all(lam == [1.0] * len(idx) for idx, lam, _ in seen)
    held = round2[0][2]
    assert held.std() > 0.5  # a sharp τ: some responses carry far more than others ...
    drawn = [float(held[j]) for idx, _, _ in round2 for j in idx]
    assert sum(drawn) / len(drawn) > 1.5  # ... and they are drawn far more often (uniform draws: mean 1)


def test_val_step_gap_is_one_validation_step_of_theta_and_favours_what_validation_teaches(setup, tiny):
    """``bmo_gap="val_step"``: ``lower`` = losses under ``θ``, ``upper`` = under ``θ`` after one fresh Adam step on
    the whole validation set (``θ`` restored after); with refusals in validation, refusals gain the most."""
    import contextlib
    import copy

    from winnow.online import encode_online, online_losses, probe_losses
    from winnow.paired import TwoModels
    from winnow.prepare import encode_for_training

    model, tok = tiny
    pool, _, _ = setup
    val = [ex.with_response(REFUSAL) for ex in pool[:8]]
    cfg = _config(bmo_refresh="generation", bmo_gap="val_step", val_batch_size=3)
    gen = StandIn(tok).generate([q.prompt_messages for q in pool[8:20]], SamplingParams(max_new_tokens=64, n=1))
    samples = []
    for q, (c,) in zip(pool[8:20], gen, strict=True):
        samples.append(q.with_response(c.text, source="regenerated", metadata={"round": 1}))
        samples[-1].metadata["_sampler"] = (list(c.token_ids), list(c.logprobs))
    online = encode_online(tok, samples, cfg)
    pair, pad, cpu = TwoModels(model), tok.pad_token_id, torch.device("cpu")
    before = [p.detach().clone() for p in pair.params("upper")]
    got = probe_losses(pair, online, encode_for_training(tok, val, cfg), cfg, 1e-2, pad, cpu, contextlib.nullcontext)
    assert all(torch.equal(p, b) for p, b in zip(pair.params("upper"), before, strict=True))  # θ restored
    assert got["lower"] == pytest.approx(online_losses(pair, online, cfg, pad, cpu, contextlib.nullcontext,
                                                       roles=("upper",))["upper"].tolist(), rel=1e-5)
    # by hand: one Adam step from a fresh state on the mean validation NLL
    stepped = copy.deepcopy(pair.module("upper"))
    venc = encode_for_training(tok, val, cfg)
    opt = torch.optim.Adam([p for p in stepped.parameters() if p.requires_grad], lr=1e-2)
    idx = list(range(len(venc.items)))
    sequence_nll(*batch_token_logprobs(stepped, collate([venc.items[i] for i in idx], idx, pad))).mean().backward()
    opt.step()
    by_hand = online_losses(TwoModels(stepped), online, cfg, pad, cpu, contextlib.nullcontext, roles=("upper",))
    assert got["upper"].tolist() == pytest.approx(by_hand["upper"].tolist(), rel=1e-4, abs=1e-4)
    gain = got["lower"] - got["upper"]
    refusal = torch.tensor([ex.response == REFUSAL for ex in online["examples"]])
    assert 0 < int(refusal.sum()) < len(refusal)
    assert gain[refusal].min() > gain[~refusal].max()  # every refusal gains more than every answer


def test_sparsemax_held_weights_never_train_on_the_zero_weighted_responses(setup, tmp_path, monkeypatch):
    """``bmo_form="sparsemax"``: responses far below the best get exactly 0, are never drawn into a step, and
    are written with weight 0 (the weights written are the ones trained with)."""
    import winnow.refine as refine_mod
    from winnow.bilevel import bmo_weights

    pool, val, weights = setup
    real_step = refine_mod._step
    drawn: list[tuple[int, float]] = []

    def recording_step(pair, opts, config, autocast, *, kept, val, online):
        if online is not None:
            drawn.extend((int(j), float(online["held"][j])) for j in online["index"])
        return real_step(pair, opts, config, autocast, kept=kept, val=val, online=online)

    monkeypatch.setattr(refine_mod, "_step", recording_step)
    cfg = _config(rounds=2, steps_per_round=6, online_batch_size=4, bmo_scope="round", model_lr=1e-2,
                  bmo_tau=0.5, bmo_form="sparsemax", bmo_refresh="generation", online_sampling="weighted")
    res = refine(pool, val, weights, cfg, tmp_path / "s", generator_for=lambda m, t: StandIn(t), progress=False)
    drawn2 = load_examples(tmp_path / "s" / "rounds" / "round-2.jsonl", dedupe=False).examples
    written = [e.weight for e in drawn2]
    assert 0 < written.count(0.0) < len(written) and sum(written) == pytest.approx(len(written), rel=1e-5)
    # each written weight is the sparsemax of the written loss gaps at the round's τ
    gaps = torch.tensor([e.metadata["loss_gap"] for e in drawn2])
    again = bmo_weights(gaps, torch.zeros_like(gaps), tau=res.history[-1]["bmo_tau"], form="sparsemax")
    assert again.tolist() == pytest.approx(written, abs=1e-4)
    assert drawn and min(w for _, w in drawn) > 0  # a zero-weighted response is never in a step
    assert res.history[-1]["bmo_min"] == 0.0
    with pytest.raises(WinnowError, match="bmo_form"):
        _config(bmo_form="hardmax")
