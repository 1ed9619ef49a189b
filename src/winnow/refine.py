"""Online self-refining generation with closed-form BMO weights (DESIGN §1.3–1.4).

Run: ``winnow refine --pool pool.jsonl --val val.jsonl --weights runs/weigh/weights.jsonl
--model smollm2-135m --out runs/refine --rounds 2 --samples-per-question 4``.

BDS drops a bad pair whole; here its question stays and the model answers it again. Each round
generates ``G`` responses per chosen question with the upper model ``θ``, then trains ``θ`` and
``φ`` as in BDS on the kept pairs (weights ``p``) plus the regenerated ones, weighted by BMO
``λ = softmax(−(l(θ) − l(φ))/τ)`` computed from the losses the step computes anyway.
"""

from __future__ import annotations

import logging
import random
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from winnow import models
from winnow.bilevel import bmo_weights, ess_share, round_bmo_weights
from winnow.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, set_rng_state
from winnow.config import RefineConfig
from winnow.config_io import save_yaml
from winnow.data import Example, collate, load_examples, merge_duplicates, read_examples
from winnow.data.writers import write_examples
from winnow.errors import WinnowError
from winnow.generation.base import Generator, SamplingParams
from winnow.io import append_jsonl, atomic_dir, read_jsonl, write_json, write_jsonl
from winnow.losses import clipped_ratio, sequence_nll
from winnow.manifest import DONE, is_done, run_info
from winnow.online import (
    encode_online,
    held_weights,
    online_batch,
    online_batches,
    online_losses,
    online_weights,
    probe_losses,
)
from winnow.paired import ROLES, Paired, TwoAdapters, autocast_for, make_pair
from winnow.prepare import encode_for_training, prepare_model
from winnow.step import batch_token_logprobs, dataset_losses, flat_batches, to_device

log = logging.getLogger(__name__)

Judge = Callable[[str, str], bool]
"""``judge(response, prompt) -> True`` when the response is a refusal (e.g. ``winnow.judge.is_refusal``)."""


@dataclass
class RefineResult:
    """The refined data set and what each round did."""

    examples: list[Example]
    """Kept original pairs (weight ``p``) plus the last round's regenerated pairs (weight ``λ``; identical
    draws merged into one pair with their summed weight, ``merge_duplicates``)."""
    history: list[dict[str, Any]] = field(default_factory=list)
    out: Path | None = None


def choose_questions(
    pool: Sequence[Example], weights: Mapping[str, float], keep_top: float, kept_share: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Split the pool by weight rank into kept pairs and the questions to refine.

    The bottom ``1 − keep_top`` (ties broken by id) are refined; ``kept_share`` of the kept ones
    are refined too (their pairs stay in the kept set).

    >>> exs = [Example.from_pair(f"q{i}", "a", id=str(i)) for i in range(4)]
    >>> kept, ask = choose_questions(exs, {"0": 2.0, "1": 0.1, "2": 1.0, "3": 1.5}, 0.5, 0.0, 0)
    >>> [e.id for e in kept], [e.id for e in ask]
    (['0', '3'], ['2', '1'])
    """
    missing = [ex.id for ex in pool if ex.id not in weights]
    if missing:
        raise WinnowError(f"{len(missing)} pool examples have no weight (first: {missing[:3]}); "
                          "were the weights computed for another pool?")
    order = sorted(pool, key=lambda ex: (-float(weights[ex.id]), ex.id))
    n_keep = round(keep_top * len(order))
    kept, ask = order[:n_keep], order[n_keep:]
    extra = random.Random(seed).sample(kept, round(kept_share * len(kept))) if kept_share else []
    return kept, ask + extra


def generate_round(
    generator: Generator, questions: Sequence[Example], config: RefineConfig, round_: int
) -> tuple[list[Example], list[dict[str, Any]]]:
    """``G`` responses per question; returns the trainable ones and a row for every one skipped.

    A response is trained on only when the model ended it itself: cut at ``max_new_tokens``,
    empty, or a prompt too long for the context are recorded with the reason instead.
    """
    params = SamplingParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                            top_p=config.top_p, n=config.samples_per_question, seed=config.seed + 1000 * round_)
    outs = generator.generate([q.prompt_messages for q in questions], params)
    good, skipped = [], []
    for q, completions in zip(questions, outs, strict=True):
        for k, c in enumerate(completions):
            meta = {"round": round_ + 1, "sample": k, "finish_reason": c.finish_reason}
            if c.finish_reason != "stop" or not c.text.strip():
                skipped.append({"parent_id": q.id, **meta, "reason": _why(c.finish_reason), "prompt": q.prompt,
                                "response": c.text})
                continue
            ex = q.with_response(c.text, source="regenerated", weight=1.0, metadata=meta)
            good.append(replace(ex, id=f"{ex.id}-r{round_ + 1}s{k}"))
            good[-1].metadata["_sampler"] = (list(c.token_ids), list(c.logprobs))
    return good, skipped


def _why(reason: str) -> str:
    return {"length": "hit max_new_tokens", "empty": "empty response", "too_long": "prompt longer than the context",
            "stop": "empty response"}.get(reason, reason)


def refine(
    pool: Sequence[Example],
    val: Sequence[Example],
    weights: Mapping[str, float],
    config: RefineConfig,
    out: str | Path,
    *,
    start: str | Path | None = None,
    start_lower: str | Path | None = None,
    generator_for: Callable[[Any, Any], Generator] | None = None,
    judge: Judge | None = None,
    progress: bool = True,
) -> RefineResult:
    """Refine the questions of the pool's low-weighted pairs and write the refined data set.

    Args:
        pool, val: the pool that was weighed and the trusted validation set.
        weights: BDS weight per pool id (``weights.jsonl`` of ``winnow weigh``).
        start: the weighing stage's saved upper model (``weigh/upper``); both ``θ`` and ``φ``
            start there. ``None``: start from the base model.
        start_lower: the weighing stage's saved lower model (``weigh/lower``); ``φ`` starts there
            instead, so the first weights already tell the two objectives apart.
        generator_for: builds a generator from ``(upper model, tokenizer)``; default: the
            Hugging Face backend.
        judge: refusal judge for the per-round share of refusals among regenerated responses.

    Writes ``refined.jsonl``, ``metrics.jsonl`` (one row per round), ``rounds/round-<k>.jsonl``
    (every response generated, with its final weight and ``loss_gap`` ``l(θ) − l(φ)``, the losses behind
    it) and ``skipped.jsonl``, ``upper/`` and
    ``done.json`` last. Re-running resumes from the last finished round.
    """
    out = Path(out)
    if is_done(out):
        return RefineResult(read_examples(out / "refined.jsonl"), read_jsonl(out / "metrics.jsonl"), out)
    if not val:
        raise WinnowError("the validation set is empty")
    kept, questions = choose_questions(pool, weights, config.keep_top, config.kept_share, config.seed)
    if not questions:
        raise WinnowError(f"no question to refine: keep_top {config.keep_top} keeps the whole pool")
    if not kept:
        raise WinnowError("keep_top keeps no pair; refine needs offline pairs to train on")

    # --- model and data ---------------------------------------------------------------------
    texts = [m["content"] for ex in [*pool, *val] for m in ex.messages]
    full_start = start is not None and (Path(start) / "config.json").exists()  # a whole model, not an adapter
    options = replace(config, model=str(start)) if full_start else config
    model, tokenizer, use_lora = prepare_model(options, texts, seed=config.seed, adapters=ROLES)
    device = models.default_device()
    model.to(device).eval()  # no dropout: θ and φ must differ only by what they were trained on
    pair = make_pair(model, use_lora)
    if start is not None and not full_start:
        if not isinstance(pair, TwoAdapters):
            raise WinnowError(f"{start} holds a LoRA adapter but the model was loaded without LoRA")
        pair.init_from(Path(start))
    if start_lower is not None:
        pair.load(Path(start_lower), "lower")
    mean_p = sum(float(weights[ex.id]) for ex in kept) / len(kept)
    kept_w = [replace(ex, weight=float(weights[ex.id]) / mean_p) for ex in kept]  # mean 1 over the kept
    kept_enc = encode_for_training(tokenizer, kept_w, config)
    val_enc = encode_for_training(tokenizer, val, config)
    if not kept_enc.items or not val_enc.items:
        raise WinnowError(f"nothing fits max_length {config.max_length}: kept {len(kept_enc.items)}, "
                          f"validation {len(val_enc.items)}")
    kept_p = torch.tensor([kept_w[i].weight for i in kept_enc.index])
    pad = tokenizer.pad_token_id
    opts = {w: torch.optim.Adam(pair.params(w), lr=config.model_lr) for w in ROLES}
    make_gen = generator_for or _hf_generator
    autocast = autocast_for(device)

    # --- resume -----------------------------------------------------------------------------
    history: list[dict[str, Any]] = []
    first = 0
    ckpt = latest_checkpoint(out / "checkpoints")
    if ckpt is not None:
        tensors, states, meta = load_checkpoint(ckpt)
        with torch.no_grad():
            for w in ROLES:
                for i, p in enumerate(pair.params(w)):
                    p.copy_(tensors[f"{w}.{i}"])
                opts[w].load_state_dict(states[f"{w}_opt"])
        set_rng_state(states["rng"])
        history, first = meta["history"], meta["step"]
        write_jsonl(out / "metrics.jsonl", history)
        log.info("resuming refinement from round %d", first + 1)
    else:
        out.mkdir(parents=True, exist_ok=True)
        save_yaml(config, out / "config.yaml")
        write_json(out / "questions.json", {"kept": [e.id for e in kept], "refined": [q.id for q in questions]})

    kept_batches = flat_batches(kept_enc.lengths, config.batch_size, seed=config.seed, group_by_length=False,
                                start=first * config.steps_per_round)
    val_batches = flat_batches(val_enc.lengths, config.val_batch_size, seed=config.seed + 1, group_by_length=False,
                               start=first * config.steps_per_round)
    bar = tqdm(total=config.rounds, initial=first, disable=not progress, desc="refine", unit="round")
    samples: list[Example] = []
    for r in range(first, config.rounds):
        t0 = time.perf_counter()
        for w in ROLES:
            for group in opts[w].param_groups:
                group["lr"] = config.lr_at(r)
        lam_seen: list[float] = []
        skipped_all: list[dict[str, Any]] = []
        for s in range(config.steps_per_round):
            # --- (re)generate with the current θ -------------------------------------------
            if s == 0 or (config.regenerate_every and s % config.regenerate_every == 0):
                gen = make_gen(pair.module("upper"), tokenizer)
                samples, skipped = generate_round(gen, questions, config, r)
                skipped_all += skipped
                online = encode_online(tokenizer, samples, config)
                skipped_all += online["dropped"]
                if config.bmo_scope == "round" or config.bmo_refresh == "generation":
                    # every response's losses: the round scope normalises over all of them from the first
                    # step; the `generation` refresh holds the weights they give until the next generation
                    online["known"] = (probe_losses(pair, online, val_enc, config, config.lr_at(r), pad, device,
                                                    autocast) if config.bmo_gap == "val_step" else
                                       online_losses(pair, online, config, pad, device, autocast))
                    online["tau"], online["held"] = held_weights(online, config)
                weighted = config.online_sampling == "weighted" and online["items"]
                batches = online_batches(online, config, seed=config.seed + 7919 * (r + 1) + s,
                                         weights=online["held"] if weighted else None)
            # --- one step of θ and φ ---------------------------------------------------------
            _, kidx = next(kept_batches)
            _, vidx = next(val_batches)
            oidx = next(batches) if online["items"] else []
            lam = _step(pair, opts, config, autocast,
                        kept=(to_device(collate([kept_enc.items[i] for i in kidx], kidx, pad), device),
                              kept_p[kidx].to(device)),
                        val=to_device(collate([val_enc.items[i] for i in vidx], vidx, pad), device),
                        online=online_batch(online, oidx, pad, device) if oidx else None)
            lam_seen += lam

        # --- end of round: final weights of this round's samples, validation loss, metrics ------
        if config.bmo_refresh == "generation":  # the weights the round trained with, and their losses
            final, losses = online.get("held", torch.zeros(0)), online.get("known")
        else:
            final, losses = _final_bmo(pair, online, config, pad, device, autocast)
        gaps = (losses["upper"] - losses["lower"]).tolist() if losses is not None else [None] * len(final)
        samples = [replace(ex, weight=float(final[j]), metadata={
                       **{k: v for k, v in ex.metadata.items() if k != "_sampler"}, "loss_gap": gaps[j]})
                   for j, ex in enumerate(online["examples"])]
        val_loss = _val_loss(pair, val_enc, config, pad, device, autocast)
        row = {**_round_row(r, val_loss, samples, skipped_all, lam_seen, judge, time.perf_counter() - t0),
               "lr": config.lr_at(r), "bmo_tau": online.get("tau", config.bmo_tau),
               "bmo_ess": ess_share(final) if len(final) else None}
        history.append(row)
        write_examples(out / "rounds" / f"round-{r + 1}.jsonl", samples)
        write_jsonl(out / "rounds" / f"skipped-{r + 1}.jsonl", skipped_all)
        append_jsonl(out / "metrics.jsonl", row)
        tensors = {f"{w}.{i}": p.detach() for w in ROLES for i, p in enumerate(pair.params(w))}
        save_checkpoint(out / "checkpoints", r + 1, tensors=tensors,
                        states={f"{w}_opt": opts[w].state_dict() for w in ROLES},
                        meta={"history": history})
        bar.update(1)
        bar.set_postfix(val=f"{val_loss:.3f}", kept=row["generated"])
    bar.close()

    # --- write --------------------------------------------------------------------------------
    last = out / "rounds" / f"round-{config.rounds}.jsonl"
    if first >= config.rounds and last.stat().st_size:  # resumed after the last round: its samples are on disk
        samples = load_examples(last, dedupe=False).examples  # identical samples are separate draws
    refined = merge_duplicates([*kept_w, *samples])
    write_examples(out / "refined.jsonl", refined)
    skipped = [row for k in range(1, config.rounds + 1) if (out / "rounds" / f"skipped-{k}.jsonl").exists()
               for row in read_jsonl(out / "rounds" / f"skipped-{k}.jsonl")]
    write_jsonl(out / "skipped.jsonl", skipped)
    with atomic_dir(out / "upper") as tmp:
        pair.save(tmp)
        tokenizer.save_pretrained(tmp)
    write_json(out / DONE, {**run_info("refine", config), "kept": len(kept_w), "regenerated": len(samples),
                            "questions": len(questions)})
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return RefineResult(refined, history, out)


def _hf_generator(model: Any, tokenizer: Any) -> Generator:
    from winnow.generation.hf import HFGenerator

    return HFGenerator(model, tokenizer, device=next(model.parameters()).device)


def _step(pair: Paired, opts: dict[str, torch.optim.Optimizer], config: RefineConfig, autocast: Any, *,
          kept: tuple[dict[str, torch.Tensor], torch.Tensor], val: dict[str, torch.Tensor],
          online: dict[str, Any] | None) -> list[float]:
    """One step of ``φ`` on the weighted data (``lower_data``) and ``θ`` on ``L_val + γ·`` it; returns the BMO weights.

    Each model does one forward over each batch; the BMO weights come from the sequence losses
    of those same forwards (detached), so they cost no extra pass. The loss is a sum of parts
    (online, kept, validation), so each part is differentiated as soon as it is known: at most the
    two online graphs, which λ needs together, are alive at once, not all five.
    """
    kb, kp = kept
    n_kept, n_online = kb["input_ids"].shape[0], online["input_ids"].shape[0] if online is not None else 0
    # the roles that train on the online batch, and those whose losses on it the step needs
    trains = ROLES if config.lower_data == "all" else ("upper",)
    scores = ROLES if config.bmo_refresh == "step" else trains
    scale = {w: (config.gamma if w == "upper" else 1.0) / (n_kept + (n_online if w in trains else 0))
             for w in ROLES}  # the weight of the data term (a mean over what the model trains on) in its loss
    for w in ROLES:
        opts[w].zero_grad(set_to_none=True)
    lam = torch.zeros(0)
    if online is not None:
        lp_o = {}
        for w in scores:
            with autocast(), torch.set_grad_enabled(w in trains):
                lp_o[w] = batch_token_logprobs(pair.module(w), online)
        if config.bmo_refresh == "generation":  # held since the generation (round-start θ, φ)
            idx = online["index"].cpu()
            if config.online_sampling == "weighted":  # drawn in proportion to the held λ
                lam = torch.ones(len(idx))
            elif config.bmo_scope == "batch":
                lam = bmo_weights(online["known"]["upper"][idx], online["known"]["lower"][idx], tau=online["tau"],
                                  form=config.bmo_form)
            else:
                lam = online["held"][idx]
        else:
            fresh = {w: sequence_nll(lp_o[w][0].detach(), lp_o[w][1], config.bmo_reduction) for w in ROLES}
            if config.bmo_scope == "round":  # over the round: these fresh losses, the last known for the rest
                known = online["known"]
                lam = round_bmo_weights(known["upper"], known["lower"], online["index"].cpu(),
                                        fresh["upper"], fresh["lower"], tau=config.bmo_tau, form=config.bmo_form)
            else:
                lam = bmo_weights(fresh["upper"], fresh["lower"], tau=config.bmo_tau, form=config.bmo_form,
                                  groups=online["groups"] if config.bmo_scope == "question" else None)
        ratio = (clipped_ratio(lp_o["upper"][0], online["sampler"], config.importance_clip)
                 if config.importance_clip else None)
        for w in trains:
            lp, mask = lp_o.pop(w)
            pair.module(w)  # backward accumulates only into the active (trainable) adapter
            (scale[w] * (lam.to(lp.device) * sequence_nll(lp, mask, token_weights=ratio)).sum()).backward()
    for w in ROLES:
        m = pair.module(w)
        with autocast():
            lp_k, mk = batch_token_logprobs(m, kb)
        (scale[w] * (kp * sequence_nll(lp_k, mk)).sum()).backward()
        if w == "upper":
            with autocast():
                lv = sequence_nll(*batch_token_logprobs(m, val)).mean()
            lv.backward()
        opts[w].step()
    return [float(x) for x in lam]


@torch.no_grad()
def _final_bmo(pair: Paired, online: dict[str, Any], config: RefineConfig, pad: int, device: torch.device,
               autocast: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """BMO weights of all this round's samples under the final ``θ``, ``φ`` and the losses they come from (one
    pass per round, for the output)."""
    if not online["items"]:
        return torch.zeros(0), None
    losses = online_losses(pair, online, config, pad, device, autocast)
    return online_weights(losses, online, config), losses


def _val_loss(pair: Paired, val_enc: Any, config: RefineConfig, pad: int, device: torch.device, autocast: Any) -> float:
    return float(dataset_losses(pair.module("upper"), val_enc, pad_id=pad, batch_size=config.val_batch_size,
                                device=device, autocast=autocast).mean())


def _round_row(r: int, val_loss: float, samples: list[Example], skipped: list[dict[str, Any]], lam: list[float],
               judge: Judge | None, seconds: float) -> dict[str, Any]:
    w = [ex.weight for ex in samples]
    row: dict[str, Any] = {
        "round": r + 1, "val_loss": val_loss, "generated": len(samples), "skipped": len(skipped),
        "bmo_mean": sum(w) / len(w) if w else None, "bmo_min": min(w, default=None), "bmo_max": max(w, default=None),
        "step_bmo_max": max(lam, default=None), "round_s": seconds,
    }
    texts = [(ex.response, ex.prompt) for ex in samples] + [(s["response"], s["prompt"]) for s in skipped
                                                             if "response" in s]
    if judge is not None and texts:  # every generated response counts, cut ones too
        row["refusal_share"] = sum(judge(t, p) for t, p in texts) / len(texts)
    return row
