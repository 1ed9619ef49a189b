"""Per-example losses and token log-probabilities. Pure tensor functions, one label shift.

The label-shift convention lives here alone: position ``t`` of the logits predicts token
``t + 1``; ``shift`` applies it and every loss or log-probability goes through it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
"""Label of tokens that are not trained on (prompt and padding)."""

Reduction = Literal["mean", "sum"]


def shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align next-token predictions with their targets.

    >>> lg, lb = shift(torch.zeros(1, 4, 3), torch.tensor([[0, 1, 2, 0]]))
    >>> tuple(lg.shape), lb.tolist()
    ((1, 3, 3), [[1, 2, 0]])
    """
    return logits[:, :-1, :], labels[:, 1:]


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each target token, and the mask of target positions.

    Args:
        logits: ``(B, T, V)`` model outputs.
        labels: ``(B, T)`` token ids, ``IGNORE_INDEX`` where not a target.

    Returns:
        ``(B, T-1)`` log-probs (0 off-target) and the ``(B, T-1)`` boolean target mask.
    """
    lg, lb = shift(logits, labels)
    mask = lb != IGNORE_INDEX  # (B, T-1)
    nll = F.cross_entropy(
        lg.reshape(-1, lg.size(-1)).float(), lb.masked_fill(~mask, 0).reshape(-1), reduction="none"
    ).view_as(lb)  # (B, T-1)
    return -nll * mask, mask


def per_example_nll(logits: torch.Tensor, labels: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """Negative log-likelihood of each example's target tokens: ``(B,)``.

    ``"mean"`` averages over the example's own target tokens (DESIGN's ``l_i``); ``"sum"`` is
    the sequence NLL ``-log π(y|x)``.
    """
    logp, mask = token_logprobs(logits, labels)
    total = -logp.sum(dim=1)  # (B,)
    if reduction == "sum":
        return total
    return total / mask.sum(dim=1).clamp(min=1)


def per_example_nll_from_hidden(
    hidden: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor], labels: torch.Tensor,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """``per_example_nll`` computed from final hidden states, projecting only target positions.

    Equal to ``per_example_nll(head(hidden), labels)`` but the ``(·, V)`` logits exist only for
    the response tokens, not for every prompt and padding position.

    Args:
        hidden: ``(B, T, H)`` final hidden states.
        head: the output projection, ``(n, H) -> (n, V)``.
        labels: ``(B, T)``, ``IGNORE_INDEX`` off-target.
    """
    lb = labels[:, 1:]  # (B, T-1): the same shift as ``shift``
    mask = lb != IGNORE_INDEX
    rows = mask.nonzero()[:, 0]  # (n,) example of each target token
    nll = F.cross_entropy(head(hidden[:, :-1][mask]).float(), lb[mask], reduction="none")  # (n,)
    total = torch.zeros(labels.shape[0], dtype=nll.dtype, device=nll.device).index_add(0, rows, nll)  # (B,)
    if reduction == "sum":
        return total
    return total / mask.sum(dim=1).clamp(min=1)


def token_logprobs_from_hidden(
    hidden: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor], labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``token_logprobs(head(hidden), labels)``, projecting only target positions.

    Returns:
        ``(B, T-1)`` log-probs (0 off-target) and the ``(B, T-1)`` boolean target mask.
    """
    lb = labels[:, 1:]  # (B, T-1): the same shift as ``shift``
    mask = lb != IGNORE_INDEX
    nll = F.cross_entropy(head(hidden[:, :-1][mask]).float(), lb[mask], reduction="none")  # (n,)
    logp = torch.zeros(lb.shape, dtype=nll.dtype, device=nll.device).index_put(mask.nonzero(as_tuple=True), -nll)
    return logp, mask


def sequence_nll(
    logp: torch.Tensor, mask: torch.Tensor, reduction: Reduction = "mean", token_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-example NLL ``(B,)`` from token log-probs ``(B, T-1)``, each token optionally weighted.

    >>> sequence_nll(torch.tensor([[-1.0, -3.0, 0.0]]), torch.tensor([[True, True, False]])).tolist()
    [2.0]
    """
    lp = logp if token_weights is None else logp * token_weights
    total = -(lp * mask).sum(dim=1)  # (B,)
    if reduction == "sum":
        return total
    return total / mask.sum(dim=1).clamp(min=1)


def clipped_ratio(logp_now: torch.Tensor, logp_sampler: torch.Tensor, clip: float) -> torch.Tensor:
    """Stop-gradient importance ratio ``min(π_now/π_sampler, clip)`` per token, for stale samples.

    Both inputs are ``(B, T-1)`` and aligned by ``shift`` (position ``t`` scores token ``t+1``).
    Positions where the sampler's log-prob is unknown (NaN: off-target, or a token the sampler
    did not produce) get ratio 1.

    >>> r = clipped_ratio(torch.tensor([[0.0, -1.0, 0.0]]), torch.tensor([[-1.0, 0.0, float("nan")]]), 2.0)
    >>> [round(v, 4) for v in r[0].tolist()]
    [2.0, 0.3679, 1.0]
    """
    ratio = torch.exp(logp_now.detach() - torch.nan_to_num(logp_sampler, nan=0.0)).clamp(max=clip)
    return torch.where(torch.isnan(logp_sampler), torch.ones_like(ratio), ratio)


def weighted_mean(losses: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``(1/B) Σ w_i l_i``: with mean-one weights this is on the scale of the plain mean.

    >>> weighted_mean(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 0.0])).item()
    1.0
    """
    if weights is None:
        return losses.mean()
    return (weights.to(losses.dtype) * losses).mean()
