"""Weight maps from per-example logits ``ω`` to weights ``p``, and the score they follow (pure).

``softmax``: ``p = N·softmax(ω)`` — mean weight 1, weights compete for a fixed mass.
``sigmoid``: ``p = 2·sigmoid(ω)`` — each weight in (0, 2), independent of the others.
Both give ``p = 1`` at ``ω = 0``.

``robust_score`` standardises a per-example signal (the BDS gap) by its median and median
absolute deviation, so the weights ``exp(−score/τ)`` do not depend on the loss scale.
"""

from __future__ import annotations

from typing import Literal

import torch

WeightMap = Literal["softmax", "sigmoid"]


def weights_from_logits(omega: torch.Tensor, kind: WeightMap = "softmax") -> torch.Tensor:
    """Map logits ``(N,)`` to weights ``(N,)``.

    >>> weights_from_logits(torch.zeros(4)).tolist()
    [1.0, 1.0, 1.0, 1.0]
    >>> round(float(weights_from_logits(torch.tensor([0.0, 100.0]), "sigmoid")[1]), 3)
    2.0
    """
    if kind == "softmax":
        return omega.numel() * torch.softmax(omega, dim=0)
    if kind == "sigmoid":
        return 2.0 * torch.sigmoid(omega)
    raise ValueError(f"unknown weight map {kind!r}")


def logits_from_weights(p: torch.Tensor, kind: WeightMap = "softmax") -> torch.Tensor:
    """Inverse of ``weights_from_logits`` (softmax logits up to a constant, chosen to sum to 0).

    >>> w = torch.tensor([0.5, 1.5])
    >>> torch.allclose(weights_from_logits(logits_from_weights(w)), w)
    True
    """
    p = p.clamp_min(1e-12)
    if kind == "softmax":
        logit = p.log()
        return logit - logit.mean()
    if kind == "sigmoid":
        q = (p / 2).clamp(1e-6, 1 - 1e-6)
        return torch.log(q) - torch.log1p(-q)
    raise ValueError(f"unknown weight map {kind!r}")


MAD_TO_SD = 1.4826
"""Median absolute deviation × this = standard deviation, for normal data."""


def robust_score(signal: torch.Tensor, gain_cap: float, floor: float = 0.0) -> torch.Tensor:
    """How many robust standard deviations each signal lies above the median: ``(N,)``.

    ``z = (s − median s) / max(1.4826·MAD(s), floor)``; the gain side (``z < 0``) is squashed
    to ``gain_cap·tanh(z / gain_cap)`` (monotone, so the order is kept), which bounds how far
    an example can be up-weighted while down-weighting stays unbounded. ``floor`` keeps a
    round whose spread is only rounding noise from being blown up. ``gain_cap = 0``: no gain.

    >>> [round(v, 2) for v in robust_score(torch.tensor([0.0, 1.0, 2.0, 3.0, 100.0]), 1.0).tolist()]
    [-0.87, -0.59, 0.0, 0.67, 66.1]
    """
    med = signal.median()
    scale = max(MAD_TO_SD * float((signal - med).abs().median()), floor, 1e-30)
    z = (signal - med) / scale
    if gain_cap <= 0:
        return z.clamp_min(0.0)
    return torch.where(z < 0, gain_cap * torch.tanh(z / gain_cap), z)


def entropy_term(p: torch.Tensor) -> torch.Tensor:
    """``Σ (p_i/N) log(p_i/N)``, the negative entropy of the normalised weights (≤ -log N + ...).

    Adding ``τ`` times this to the upper objective pushes weights back towards uniform.

    >>> import math
    >>> abs(float(entropy_term(torch.ones(4))) + math.log(4)) < 1e-6
    True
    """
    q = p / p.sum()
    return (q * q.clamp_min(1e-30).log()).sum()


def ess_share(p: torch.Tensor) -> float:
    """Effective sample size ``(Σp)² / Σp²`` as a share of N: 1 for uniform weights, 1/N when all mass
    sits on one example (0 for all-zero weights).

    >>> ess_share(torch.ones(4)), ess_share(torch.tensor([4.0, 0.0, 0.0, 0.0]))
    (1.0, 0.25)
    """
    p = p.detach().double()
    total = float(p.sum())
    return total**2 / float((p * p).sum()) / p.numel() if total > 0 else 0.0


def weight_stats(p: torch.Tensor) -> dict[str, float]:
    """Diagnostics of a weight vector: effective sample size, entropy, bottom-decile mass.

    ``ess`` is ``(Σp)² / Σp²`` as a share of N (1 for uniform weights, 1/N when all mass sits on
    one example); ``bottom_decile_mass`` is the share of total weight held by the lowest 10 %.
    """
    n = p.numel()
    total = float(p.sum())
    k = max(1, n // 10)
    bottom = float(torch.sort(p).values[:k].sum()) / total if total > 0 else 0.0
    return {
        "ess": ess_share(p),
        "entropy": float(-entropy_term(p)) if total > 0 else 0.0,
        "bottom_decile_mass": bottom,
        "min": float(p.min()),
        "max": float(p.max()),
    }
