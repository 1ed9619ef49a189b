"""The step helper shared by the final fine-tune, BDS and the online loop.

Everything here sees only "per-example losses of a batch under a model": ``batch_losses``
turns a collated batch into a ``(B,)`` loss vector, ``weighted_step`` turns weighted
micro-batches into one optimizer step.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from winnow.data.batching import collate, epoch_batches
from winnow.data.formatting import EncodedSet
from winnow.losses import (
    Reduction,
    per_example_nll,
    per_example_nll_from_hidden,
    token_logprobs,
    token_logprobs_from_hidden,
)

Batch = dict[str, torch.Tensor]


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Move every tensor of a batch to ``device``."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


PLAIN_HEAD_MODELS = {"llama", "mistral", "qwen2", "qwen3", "smollm3", "olmo2", "phi3"}
"""Model types whose logits are exactly ``lm_head(last hidden state)`` (no soft-capping or scale)."""


def batch_losses(model: torch.nn.Module, batch: Batch, reduction: Reduction = "mean") -> torch.Tensor:
    """Per-example NLL of a batch's response tokens: ``(B,)``.

    The model gets no ``labels`` so it never computes a loss of its own (a token mean over
    the whole batch, which would mix examples). For model types in ``PLAIN_HEAD_MODELS`` the
    output head is applied to response positions only, which skips most of the largest
    matrix product (prompt and padding logits are never used).
    """
    split = _backbone_and_head(model)
    if split is None:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        return per_example_nll(out.logits, batch["labels"], reduction)  # (B,)
    backbone, head = split
    hidden = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      use_cache=False).last_hidden_state  # (B, T, H)
    return per_example_nll_from_hidden(hidden, head, batch["labels"], reduction)  # (B,)


def batch_token_logprobs(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of every target token ``(B, T-1)`` (0 off-target) and the target mask ``(B, T-1)``."""
    split = _backbone_and_head(model)
    if split is None:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        return token_logprobs(out.logits, batch["labels"])
    backbone, head = split
    hidden = backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      use_cache=False).last_hidden_state  # (B, T, H)
    return token_logprobs_from_hidden(hidden, head, batch["labels"])


def _backbone_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(decoder stack, output head) of a causal LM whose head is a plain projection, else None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # unwrap peft
    config = getattr(base, "config", None)
    if getattr(config, "model_type", None) not in PLAIN_HEAD_MODELS:
        return None
    backbone = getattr(base, getattr(base, "base_model_prefix", ""), None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if backbone is None or head is None:
        return None
    return backbone, head


@dataclass
class StepStats:
    """What one optimizer step did."""

    loss: float
    """Weighted mean loss over the step's examples."""
    grad_norm: float
    """Gradient norm before clipping."""
    examples: int
    tokens: int
    """Non-padding tokens processed."""


def weighted_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    micro_batches: Sequence[tuple[Batch, torch.Tensor]],
    *,
    params: Iterable[torch.nn.Parameter],
    max_grad_norm: float = 1.0,
    scheduler: Any | None = None,
    autocast: Any = None,
) -> StepStats:
    """One optimizer step on ``(1/n) Σ w_i l_i`` over all examples of the micro-batches.

    Each micro-batch's loss is divided by the step's total example count, so splitting the
    same examples into more micro-batches (gradient accumulation) gives the same gradient.
    """
    total = sum(b["input_ids"].shape[0] for b, _ in micro_batches)
    loss_sum, tokens = 0.0, 0
    for batch, weights in micro_batches:
        with autocast() if autocast is not None else contextlib.nullcontext():
            losses = batch_losses(model, batch)  # (B,)
        loss = (weights.to(losses.dtype) * losses).sum() / total
        loss.backward()
        loss_sum += loss.item()
        tokens += int(batch["attention_mask"].sum())
    params = [p for p in params if p.grad is not None]
    if max_grad_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    else:
        norm = torch.norm(torch.stack([p.grad.detach().norm() for p in params]))
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return StepStats(loss_sum, float(norm), total, tokens)


@torch.no_grad()
def dataset_losses(
    model: torch.nn.Module,
    data: EncodedSet,
    *,
    pad_id: int,
    batch_size: int,
    device: torch.device,
    reduction: Reduction = "mean",
    autocast: Any = None,
) -> torch.Tensor:
    """Loss of every encoded example, in ``data.items`` order: ``(N,)`` on the CPU."""
    was_training = model.training
    model.eval()
    out = torch.empty(len(data.items))
    lengths = data.lengths
    for idx in epoch_batches(lengths, batch_size, seed=0, epoch=0, shuffle=False, group_by_length=True):
        batch = to_device(collate([data.items[i] for i in idx], idx, pad_id), device)
        with autocast() if autocast is not None else contextlib.nullcontext():
            out[idx] = batch_losses(model, batch, reduction).float().cpu()
    model.train(was_training)
    return out


def flat_batches(lengths: Sequence[int], batch_size: int, *, seed: int, group_by_length: bool, start: int):
    """Yield ``(position, batch)`` over consecutive epochs from global batch ``start`` on.

    The order is a pure function of the seed and the position, so a resumed run sees the
    same batches as an uninterrupted one.
    """
    per_epoch = math.ceil(len(lengths) / batch_size)
    epoch, pos = divmod(start, per_epoch)
    while True:
        batches = epoch_batches(lengths, batch_size, seed=seed, epoch=epoch, group_by_length=group_by_length)
        for j in range(pos, len(batches)):
            yield epoch * per_epoch + j, batches[j]
        epoch, pos = epoch + 1, 0

