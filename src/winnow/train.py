"""Weighted supervised fine-tuning: the final fine-tune of every Winnow arm.

Run: ``winnow train --data train.jsonl --model tiny --out runs/sft`` or call ``finetune``.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from winnow import models
from winnow.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, set_rng_state
from winnow.config import TrainConfig
from winnow.config_io import save_yaml
from winnow.data import Example, collate, epoch_batches, padding_fraction
from winnow.data.formatting import EncodedSet
from winnow.errors import WinnowError
from winnow.io import append_jsonl, atomic_dir, read_jsonl, write_json, write_jsonl
from winnow.manifest import DONE, is_done, run_info
from winnow.prepare import encode_for_training, prepare_model
from winnow.step import dataset_losses, flat_batches, to_device, weighted_step

log = logging.getLogger(__name__)

@dataclass
class TrainResult:
    """Where a fine-tune wrote its model, and how it ended."""

    out: Path
    steps: int
    train_loss: float | None
    val_loss: float | None
    model: Any = None
    tokenizer: Any = None


def finetune(
    train: Sequence[Example],
    config: TrainConfig,
    out: str | Path,
    *,
    val: Sequence[Example] | None = None,
    weights: Mapping[str, float] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Fine-tune on ``train`` with per-example weights and save the model under ``out/model``.

    Weights come from ``weights`` (by example id) or else each example's own ``weight``;
    zero-weight examples are not trained on. Re-running with the same ``out`` resumes from the
    newest checkpoint; a finished run is not repeated.

    Returns:
        A ``TrainResult``; ``model``/``tokenizer`` are ``None`` when the run was already done.
    """
    out = Path(out)
    if is_done(out):
        done = _metrics(out)
        log.info("%s is already complete; nothing to do", out)
        last = next((r for r in reversed(done) if "val_loss" in r), {})
        return TrainResult(out, int(done[-1]["step"]) if done else 0, None, last.get("val_loss"))

    # --- model and data ---------------------------------------------------------------------
    texts = [m["content"] for ex in [*train, *(val or [])] for m in ex.messages]
    model, tokenizer, use_lora = prepare_model(config, texts, seed=config.seed)
    weight_of = {ex.id: float(weights[ex.id]) if weights is not None else ex.weight for ex in train}
    kept = [ex for ex in train if weight_of[ex.id] > 0]
    enc = encode_for_training(tokenizer, kept, config)
    if not enc.items:
        raise WinnowError(f"no example left to train on ({len(train)} given, {len(kept)} with weight > 0, "
                          f"{len(enc.dropped)} too long or empty)")
    item_w = torch.tensor([weight_of[kept[i].id] for i in enc.index])  # (n,)
    val_enc = encode_for_training(tokenizer, val, config) if val else None
    lengths = enc.lengths
    pad_id = tokenizer.pad_token_id

    # --- schedule, optimizer, devices -------------------------------------------------------
    per_epoch = math.ceil(math.ceil(len(lengths) / config.batch_size) / config.grad_accum)
    total = config.max_steps or max(1, math.ceil(per_epoch * config.epochs))
    accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                              mixed_precision="bf16" if _bf16() else "no")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(config.warmup * total), total)
    model, optimizer = accelerator.prepare(model, optimizer)
    device = accelerator.device

    # --- resume -----------------------------------------------------------------------------
    step, ckpt = 0, latest_checkpoint(out / "checkpoints")
    if ckpt is not None:
        tensors, states, meta = load_checkpoint(ckpt)
        _load_trainable(model, tensors)
        optimizer.load_state_dict(states["optimizer"])
        scheduler.load_state_dict(states["scheduler"])
        set_rng_state(states["rng"])
        step = meta["step"]
        write_jsonl(out / "metrics.jsonl", [r for r in _metrics(out) if r.get("step", 0) <= step])
        log.info("resuming from %s (step %d of %d)", ckpt, step, total)
    else:
        out.mkdir(parents=True, exist_ok=True)
        save_yaml(config, out / "config.yaml")
        pad = padding_fraction(lengths, epoch_batches(lengths, config.batch_size, seed=config.seed, epoch=0,
                                                      group_by_length=config.group_by_length))
        write_json(out / "data_report.json", {
            "examples": len(train), "zero_weight": len(train) - len(kept), "trained": len(enc.items),
            "dropped": enc.dropped, "truncated": enc.truncated, "padding_fraction": pad,
            "val_examples": len(val_enc.items) if val_enc else 0, "lora": use_lora,
        })

    # --- loop -------------------------------------------------------------------------------
    batches = flat_batches(lengths, config.batch_size, seed=config.seed,
                           group_by_length=config.group_by_length, start=step * config.grad_accum)
    model.train()
    bar = tqdm(total=total, initial=step, disable=not progress, desc="train", unit="step")
    loss = val_loss = None
    t0 = time.perf_counter()
    while step < total:
        micro = []
        for _ in range(config.grad_accum):
            _, idx = next(batches)
            b = to_device(collate([enc.items[i] for i in idx], idx, pad_id), device)
            micro.append((b, item_w[idx].to(device)))
        stats = weighted_step(model, optimizer, micro, params=params, max_grad_norm=config.max_grad_norm,
                              scheduler=scheduler, autocast=accelerator.autocast)
        step += 1
        loss = stats.loss
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if step % config.log_every == 0 or step == total:
            append_jsonl(out / "metrics.jsonl", {
                "step": step, "loss": loss, "grad_norm": stats.grad_norm, "lr": scheduler.get_last_lr()[0],
                "tokens": stats.tokens, "elapsed_s": time.perf_counter() - t0})
        if val_enc and config.eval_every and step % config.eval_every == 0 and step < total:
            val_loss = _val_loss(model, val_enc, config, pad_id, device, accelerator)
            append_jsonl(out / "metrics.jsonl", {"step": step, "val_loss": val_loss})
            bar.set_postfix(loss=f"{loss:.4f}", val=f"{val_loss:.4f}")
        if config.save_every and step % config.save_every == 0 and step < total:
            save_checkpoint(out / "checkpoints", step, tensors=models.trainable_parameters(model),
                            meta={"total": total},
                            states={"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()})
    bar.close()

    # --- finish -----------------------------------------------------------------------------
    if val_enc:
        val_loss = _val_loss(model, val_enc, config, pad_id, device, accelerator)
        append_jsonl(out / "metrics.jsonl", {"step": step, "val_loss": val_loss})
    model = accelerator.unwrap_model(model)
    with atomic_dir(out / "model") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    write_json(out / DONE, {**run_info("train", config), "steps": step, "train_loss": loss, "val_loss": val_loss})
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # only needed to resume an unfinished run
    return TrainResult(out, step, loss, val_loss, model, tokenizer)


def _bf16() -> bool:
    """bf16 autocast exactly where ``models.default_dtype`` would load in bf16."""
    return models.default_dtype(models.default_device()) == torch.bfloat16


def _metrics(out: Path) -> list[dict[str, Any]]:
    return read_jsonl(out / "metrics.jsonl") if (out / "metrics.jsonl").exists() else []


def _load_trainable(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    own = dict(model.named_parameters())
    missing = set(models.trainable_parameters(model)) - set(tensors)
    if missing:
        raise WinnowError(f"checkpoint does not match the model: {len(missing)} trainable tensors missing")
    with torch.no_grad():
        for name, value in tensors.items():
            own[name].copy_(value)


def _val_loss(model: Any, val_enc: EncodedSet, config: TrainConfig, pad_id: int, device: torch.device,
              accelerator: Accelerator) -> float:
    losses = dataset_losses(model, val_enc, pad_id=pad_id, batch_size=config.batch_size, device=device,
                            autocast=accelerator.autocast)
    return float(losses.mean())
