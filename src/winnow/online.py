"""Regenerated responses as training data: encoding with the sampler's log-probs aligned to the
targets, and the endless batches the refinement steps draw from."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import torch

from winnow.bilevel import bmo_weights, scope_groups, tau_for_share
from winnow.config import RefineConfig
from winnow.data import Example, collate
from winnow.data.batching import epoch_batches
from winnow.data.formatting import Encoded, EncodedSet
from winnow.losses import IGNORE_INDEX
from winnow.paired import ROLES
from winnow.prepare import encode_for_training
from winnow.step import dataset_losses, to_device, weighted_step


def sampler_logprobs(enc: Encoded, token_ids: Sequence[int], logprobs: Sequence[float]) -> list[float]:
    """The sampler's log-prob of each target token of ``enc`` (NaN where unknown).

    Re-encoding the text need not give back the generated tokens; where the targets and the
    generated tokens agree on their common length their log-probs are used (a response cut by
    right truncation keeps its first ones), else the example gets no correction (all NaN).

    >>> e = Encoded([1, 5, 6, 7], [IGNORE_INDEX, 5, 6, 7])
    >>> sampler_logprobs(e, [5, 6], [-0.5, -0.25])
    [-0.5, -0.25, nan]
    >>> sampler_logprobs(Encoded([1, 5], [IGNORE_INDEX, 5], cut=-2), [5, 6, 7], [-0.5, -0.25, -1.0])
    [-0.5]
    """
    targets = [t for t in enc.labels if t != IGNORE_INDEX]
    n = min(len(token_ids), len(targets))
    if n and targets[:n] == list(token_ids[:n]):
        return list(logprobs[:n]) + [math.nan] * (len(targets) - n)
    return [math.nan] * len(targets)


def batch_sampler(items: Sequence[Encoded], lps: Sequence[list[float]], device: torch.device) -> torch.Tensor:
    """Sampler log-probs scattered onto the shifted target positions: ``(B, T-1)``, NaN elsewhere."""
    width = max(len(e) for e in items)
    out = torch.full((len(items), width - 1), math.nan)
    for b, (e, lp) in enumerate(zip(items, lps, strict=True)):
        pos = [t - 1 for t, lab in enumerate(e.labels) if lab != IGNORE_INDEX]
        out[b, pos] = torch.tensor(lp, dtype=out.dtype)
    return out.to(device)


def encode_online(tokenizer: Any, samples: list[Example], config: RefineConfig) -> dict[str, Any]:
    """Encode regenerated pairs with the sampler's log-probs aligned to their targets."""
    enc = encode_for_training(tokenizer, samples, config)
    examples = [samples[i] for i in enc.index]
    lps = [sampler_logprobs(e, *ex.metadata["_sampler"]) for e, ex in zip(enc.items, examples, strict=True)]
    groups = scope_groups([ex.parent_id or ex.id for ex in examples], "question") or []
    by_id = {ex.id: ex for ex in samples}
    dropped = [{"parent_id": by_id[i].parent_id, "id": i, "round": by_id[i].metadata["round"], "reason": why}
               for i, why in enc.dropped]
    return {"items": enc.items, "examples": examples, "sampler": lps, "groups": groups, "dropped": dropped}


def online_batches(online: dict[str, Any], config: RefineConfig, seed: int, weights: torch.Tensor | None = None):
    """Endless batches of about ``online_batch_size`` regenerated responses.

    With ``weights`` (the held BMO weights, ``online_sampling="weighted"``) each batch is drawn with
    replacement in proportion to them (``min(online_batch_size, responses)`` draws). Otherwise, with
    the ``question`` BMO scope a batch holds whole questions (all ``G`` responses together, so each is
    normalised over its own group); else responses are shuffled across questions, so a batch is a
    fair sample of the round rather than a few questions' answers.
    """
    if weights is not None:  # no more draws than responses: the same expected loss as uniform batches
        gen, k, w = torch.Generator().manual_seed(seed), min(config.online_batch_size, len(weights)), weights.double()
        while True:
            yield torch.multinomial(w, k, replacement=True, generator=gen).tolist()
    if config.bmo_scope != "question":
        rng = random.Random(seed)
        order = list(range(len(online["items"])))
        while order:
            rng.shuffle(order)
            for s in range(0, len(order), config.online_batch_size):
                yield order[s : s + config.online_batch_size]
        return
    by_q: dict[int, list[int]] = {}
    for j, g in enumerate(online["groups"]):
        by_q.setdefault(g, []).append(j)
    per = max(1, config.online_batch_size // config.samples_per_question)
    rng = random.Random(seed)
    while by_q:
        keys = sorted(by_q)
        rng.shuffle(keys)
        for s in range(0, len(keys), per):
            yield [j for k in keys[s : s + per] for j in by_q[k]]


def online_batch(online: dict[str, Any], idx: list[int], pad: int, device: torch.device) -> dict[str, Any]:
    items = [online["items"][j] for j in idx]
    batch = to_device(collate(items, idx, pad), device)
    batch["sampler"] = batch_sampler(items, [online["sampler"][j] for j in idx], device)
    batch["groups"] = [online["groups"][j] for j in idx]
    if "known" in online:  # the round's last known losses (``round`` BMO scope), updated in place by the step
        batch["known"] = online["known"]
        batch["held"] = online["held"]  # their weights (held for the round with the ``generation`` refresh)
        batch["tau"] = online["tau"]
    return batch


def online_losses(pair: Any, online: dict[str, Any], config: RefineConfig, pad: int, device: torch.device,
                  autocast: Any, roles: Sequence[str] = ROLES) -> dict[str, torch.Tensor]:
    """NLL (``bmo_reduction``) of every regenerated response under ``θ`` and ``φ``: ``{role: (K,)}``
    (one scoring pass: two forwards per response)."""
    data = EncodedSet(online["items"], list(range(len(online["items"]))))
    return {w: dataset_losses(pair.module(w), data, pad_id=pad, batch_size=config.online_batch_size, device=device,
                              reduction=config.bmo_reduction, autocast=autocast) for w in roles}


def probe_losses(pair: Any, online: dict[str, Any], val: EncodedSet, config: RefineConfig, lr: float, pad: int,
                 device: torch.device, autocast: Any) -> dict[str, torch.Tensor]:
    """Every response's NLL under ``θ`` (as ``lower``) and under ``θ`` after one fresh Adam step of rate ``lr``
    on the whole validation set (as ``upper``): the ``val_step`` gap. ``θ`` is restored afterwards."""
    if not online["items"]:
        return {w: torch.zeros(0) for w in ROLES}
    before = online_losses(pair, online, config, pad, device, autocast, roles=("upper",))["upper"]
    params = pair.params("upper")
    saved = [p.detach().clone() for p in params]
    micro = [(to_device(collate([val.items[j] for j in idx], idx, pad), device), torch.ones(len(idx), device=device))
             for idx in epoch_batches(val.lengths, config.val_batch_size, seed=0, epoch=0, shuffle=False)]
    weighted_step(pair.module("upper"), torch.optim.Adam(params, lr=lr), micro, params=params, max_grad_norm=0,
                  autocast=autocast)
    after = online_losses(pair, online, config, pad, device, autocast, roles=("upper",))["upper"]
    with torch.no_grad():
        for p, s in zip(params, saved, strict=True):
            p.copy_(s)
    return {"upper": after, "lower": before}


def online_weights(seq: dict[str, torch.Tensor], online: dict[str, Any], config: RefineConfig,
                   tau: float | None = None) -> torch.Tensor:
    """BMO weights of every response of the generation from their losses ``{role: (K,)}`` (mean 1 over
    all of them, or per question with the ``question`` scope)."""
    if not online["items"]:
        return torch.zeros(0)
    return bmo_weights(seq["upper"], seq["lower"], tau=tau or config.bmo_tau, groups=_groups(online, config),
                       form=config.bmo_form)


def held_weights(online: dict[str, Any], config: RefineConfig) -> tuple[float, torch.Tensor]:
    """``(τ, weights)`` of the generation from its scoring-pass losses ``online["known"]``; with the
    ``generation`` refresh ``τ`` is raised to keep ``bmo_min_ess`` (``tau_for_share``)."""
    tau, known = config.bmo_tau, online["known"]
    if config.bmo_refresh == "generation" and online["items"]:
        tau = tau_for_share(known["upper"], known["lower"], tau=tau, min_share=config.bmo_min_ess,
                            groups=_groups(online, config), form=config.bmo_form)
    return tau, online_weights(known, online, config, tau)


def _groups(online: dict[str, Any], config: RefineConfig) -> list[int] | None:
    return online["groups"] if config.bmo_scope == "question" else None
