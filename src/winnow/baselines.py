"""Baseline scores behind the weighing interface: one score per pool example, higher = keep.

``direct`` (no selection: every example scores 1), ``random``, ``length`` (response tokens),
``base_loss`` (minus the loss under the untrained model) and ``val_gain`` (how much a short
fit on the validation set lowers each example's loss).
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from winnow.config import WeighConfig
from winnow.data import collate
from winnow.data.formatting import EncodedSet, first_targets
from winnow.step import dataset_losses, flat_batches, to_device, weighted_step


def baseline_scores(
    method: str, model: Any, pool: EncodedSet, val: EncodedSet, config: WeighConfig, *, pad_id: int,
    device: torch.device,
) -> torch.Tensor:
    """Scores ``(n,)`` in ``pool.items`` order for one of ``BASELINES``."""
    n = len(pool.items)
    if method == "direct":
        return torch.ones(n)
    if method == "random":
        return torch.rand(n, generator=torch.Generator().manual_seed(config.seed))
    if method == "length":
        return torch.tensor([float(e.n_targets) for e in pool.items])
    scored = first_targets(pool, config.score_tokens) if config.score_tokens else pool
    losses = lambda m: dataset_losses(m, scored, pad_id=pad_id, batch_size=config.batch_size, device=device)  # noqa: E731
    if method == "base_loss":
        return -losses(model)
    if method == "val_gain":
        before = losses(model)
        fitted = fit_on(copy.deepcopy(model), val, config, pad_id=pad_id, device=device)
        return before - losses(fitted)
    raise ValueError(f"unknown baseline {method!r}")


def fit_on(model: Any, data: EncodedSet, config: WeighConfig, *, pad_id: int, device: torch.device) -> Any:
    """``steps_per_round`` steps of the model optimizer on ``data`` (uniform weights)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = (torch.optim.SGD if config.model_optimizer == "sgd" else torch.optim.Adam)(params, lr=config.model_lr)
    batches = flat_batches(data.lengths, config.val_batch_size, seed=config.seed, group_by_length=False, start=0)
    for _ in range(max(1, config.steps_per_round)):
        _, idx = next(batches)
        # micro-batches of batch_size: a whole-set validation batch costs the memory of a pool batch
        chunks = [idx[s : s + config.batch_size] for s in range(0, len(idx), config.batch_size)]
        micro = [(to_device(collate([data.items[i] for i in c], c, pad_id), device), torch.ones(len(c), device=device))
                 for c in chunks]
        weighted_step(model, opt, micro, params=params, max_grad_norm=0)
    return model
