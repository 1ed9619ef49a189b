"""The weighing stage: learn (or score) one weight per pool example and write them by id.

Run: ``winnow weigh --pool pool.jsonl --val val.jsonl --model smollm2-135m --out runs/weigh``.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch

from winnow import models
from winnow.baselines import baseline_scores
from winnow.bilevel import learn_weights
from winnow.bilevel.bds import NonFiniteLoss
from winnow.config import BASELINES, WeighConfig
from winnow.data import Example, collate
from winnow.data.formatting import EncodedSet
from winnow.errors import WinnowError
from winnow.io import append_jsonl, atomic_dir, read_jsonl, write_json, write_jsonl
from winnow.manifest import DONE, is_done, run_info
from winnow.paired import ROLES, make_pair
from winnow.prepare import encode_for_training, prepare_model
from winnow.step import to_device

log = logging.getLogger(__name__)

class EncodedData:
    """``Indexed`` over encoded examples: ``batch(index)`` collates them onto the device."""

    def __init__(self, enc: EncodedSet, pad_id: int, device: torch.device) -> None:
        self.enc, self.pad_id, self.device = enc, pad_id, device
        self.lengths = enc.lengths
        self.targets = [e.n_targets for e in enc.items]  # response tokens: the sequence-sum score needs them

    def batch(self, index: Sequence[int]) -> dict[str, torch.Tensor]:
        return to_device(collate([self.enc.items[i] for i in index], list(index), self.pad_id), self.device)


def weigh(
    pool: Sequence[Example],
    val: Sequence[Example],
    config: WeighConfig,
    out: str | Path,
    *,
    progress: bool = True,
) -> dict[str, float]:
    """Learn a weight per pool example (BDS or its lite variant) and write them under ``out``.

    Writes ``weights.jsonl`` (id, weight, logit, rank, upper and lower loss), ``snapshots.json``
    (weights after every round), ``diagnostics.json``, ``metrics.jsonl``, the upper and lower
    models (``upper/``, ``lower/``) and ``done.json`` last. Re-running resumes from the last finished round.

    Returns:
        ``{id: weight}`` for every pool example (0 for examples too long to train on).
    """
    out = Path(out)
    if is_done(out):
        return {r["id"]: r["weight"] for r in read_jsonl(out / "weights.jsonl")}
    if not val:
        raise WinnowError("the validation set is empty")
    if len(pool) < 2:
        raise WinnowError(f"the pool needs at least 2 examples, got {len(pool)}")

    # --- model and data ---------------------------------------------------------------------
    texts = [m["content"] for ex in [*pool, *val] for m in ex.messages]
    model, tokenizer, use_lora = prepare_model(config, texts, seed=config.seed, adapters=ROLES)
    device = models.default_device()
    model.to(device).eval()  # no dropout: the gap must come from the objectives, not from noise
    pool_enc = encode_for_training(tokenizer, pool, config)
    val_enc = encode_for_training(tokenizer, val, config)
    if len(pool_enc.items) < 2 or not val_enc.items:
        raise WinnowError(f"too few examples fit max_length {config.max_length}: pool {len(pool_enc.items)}, "
                          f"validation {len(val_enc.items)}")
    pad = tokenizer.pad_token_id
    ids = [pool[i].id for i in pool_enc.index]
    out.mkdir(parents=True, exist_ok=True)

    # --- baselines: a score per example, no learning ------------------------------------------
    if config.method in BASELINES:
        alone = None
        if config.method == "ifd":  # each response after an empty question
            alone = encode_for_training(tokenizer, [Example.from_pair("", pool[i].response, id=pool[i].id)
                                                    for i in pool_enc.index], config)
        scores = baseline_scores(config.method, model, pool_enc, val_enc, config, pad_id=pad, device=device,
                                 alone=alone)
        weights = write_weights(out, ids, torch.ones(len(ids)), scores, {}, pool_enc.dropped)
        write_json(out / DONE, {**run_info("weigh", config), "pool": len(pool), "scored": len(ids)})
        return weights

    # --- learn ------------------------------------------------------------------------------
    paired = make_pair(model, use_lora)
    try:
        result = learn_weights(
            paired, EncodedData(pool_enc, pad, device), EncodedData(val_enc, pad, device), config,
            checkpoint_dir=out / "checkpoints", progress=progress,
            on_round=lambda r, row: append_jsonl(out / "metrics.jsonl", row),
        )
    except NonFiniteLoss as e:  # name the examples by id, never by row position
        bad = [ids[j] for j in e.positions]
        raise WinnowError(f"non-finite {e.which} losses for example ids {bad[:10]} ({len(bad)} in all); "
                          "lower model_lr (the run can be resumed)") from None

    # --- write ------------------------------------------------------------------------------
    extra = {"logit": result.logits, "upper_loss": result.upper_losses, "lower_loss": result.lower_losses}
    weights = write_weights(out, ids, result.weights, result.weights, extra, pool_enc.dropped)
    write_json(out / "snapshots.json", {"ids": ids, "rounds": result.snapshots})
    diag = {**(result.history[-1] if result.history else {}), "dropped": pool_enc.dropped,
            "collapsed": bool(result.history and result.history[-1]["ess"] < 0.1)}
    write_json(out / "diagnostics.json", diag)
    for which in ROLES:  # refine continues both
        with atomic_dir(out / which) as tmp:
            paired.save(tmp, which)
            tokenizer.save_pretrained(tmp)
    write_json(out / DONE, {**run_info("weigh", config), "pool": len(pool), "scored": len(ids)})
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return weights


def write_weights(
    out: Path, ids: list[str], weights: torch.Tensor, scores: torch.Tensor, extra: dict[str, torch.Tensor],
    dropped: list[tuple[str, str]],
) -> dict[str, float]:
    """Write ``weights.jsonl``, one row per pool example ranked by score (1 = best).

    Examples that could not be encoded get weight 0, no score and the reason they were dropped.
    """
    order = sorted(range(len(ids)), key=lambda j: (-float(scores[j]), ids[j]))
    rows = [{"id": ids[j], "weight": float(weights[j]), "score": float(scores[j]), "rank": r + 1,
             **{k: float(v[j]) for k, v in extra.items()}} for r, j in enumerate(order)]
    rows += [{"id": i, "weight": 0.0, "score": None, "rank": None, "dropped": why} for i, why in dropped]
    write_jsonl(out / "weights.jsonl", rows)
    return {r["id"]: r["weight"] for r in rows}
