"""Baseline scores behind the weighing interface: one score per pool example, higher = keep.

``direct`` (no selection: every example scores 1), ``random``, ``length`` (response tokens),
``base_loss`` (minus the loss under the untrained model), ``val_gain`` (how much a short
fit on the validation set lowers each example's loss) and ``ifd`` (minus the instruction-following
difficulty of Li et al., 2024: the response's loss given its question over its loss given an
empty one — near or above 1 when the question does not help predict the answer, as for a
mismatched or off-topic response).
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
    device: torch.device, alone: EncodedSet | None = None,
) -> torch.Tensor:
    """Scores ``(n,)`` in ``pool.items`` order for one of ``BASELINES``.

    ``alone`` (``ifd`` only): each pool response encoded after an empty question, aligned with ``pool``.
    """
    n = len(pool.items)
    if method == "direct":
        return torch.ones(n)
    if method == "random":
        return torch.rand(n, generator=torch.Generator().manual_seed(config.seed))
    if method == "length":
        return torch.tensor([float(e.n_targets) for e in pool.items])
    scored = first_targets(pool, config.score_tokens) if config.score_tokens else pool
    losses = lambda m: _losses(m, scored, config, pad_id, device)  # noqa: E731
    if method == "base_loss":
        return -losses(model)
    if method == "val_gain":
        before = losses(model)
        fitted = fit_on(copy.deepcopy(model), val, config, pad_id=pad_id, device=device)
        return before - losses(fitted)
    if method == "ifd":
        if alone is None or len(alone.items) != n:
            raise ValueError("ifd needs each pool response encoded alone, aligned with the pool")
        # the same response tokens on both sides: a right-truncated pair keeps fewer of them
        kept = [min(a.n_targets, e.n_targets, config.score_tokens or a.n_targets)
                for a, e in zip(alone.items, pool.items, strict=True)]
        return -losses(model) / _losses(model, first_targets(alone, kept), config, pad_id, device).clamp_min(1e-6)
    raise ValueError(f"unknown baseline {method!r}")


def _losses(model: Any, data: EncodedSet, config: WeighConfig, pad_id: int, device: torch.device) -> torch.Tensor:
    """Token-mean response NLL of every example of ``data``."""
    return dataset_losses(model, data, pad_id=pad_id, batch_size=config.batch_size, device=device)


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
