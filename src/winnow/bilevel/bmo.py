"""Closed-form BMO weights for regenerated responses (DESIGN §1.3). Pure tensor functions.

``λ_k = softmax_k(−(l_k(θ) − l_k(φ))/τ)``, normalised to mean 1 over its scope. With sequence-sum
NLL and ``τ = 1`` this is the importance ratio ``π_θ(y_k|x_k) / π_φ(y_k|x_k)`` (normalised): a
response the validation-aligned model ``θ`` likes more than the response-fitted model ``φ`` gains
weight. Both losses come out of the training step anyway, so the weights cost no extra pass.

They are also the exact optimum of entropy-regularised softmax BDS for fixed ``(θ, φ)``:
``argmin_{p = N·softmax(ω)}  mean_k p_k·gap_k + τ Σ (p_k/N) log(p_k/N)`` is ``p ∝ exp(−gap/τ)``
(``tests/unit/test_bmo.py`` checks it against gradient descent on ``ω``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

Scope = Literal["batch", "question"]


def bmo_weights(
    upper_losses: torch.Tensor,
    lower_losses: torch.Tensor,
    *,
    tau: float = 1.0,
    groups: Sequence[int] | torch.Tensor | None = None,
) -> torch.Tensor:
    """BMO weights ``(K,)`` from per-response losses under ``θ`` (upper) and ``φ`` (lower).

    Args:
        upper_losses: ``(K,)`` NLL of each response under ``θ`` (token mean or sequence sum;
            the caller's reduction is the option).
        lower_losses: ``(K,)`` the same under ``φ``.
        tau: temperature; large ``τ`` flattens the weights towards 1.
        groups: ``None`` normalises over the whole batch (mean 1 over ``K``); otherwise one group
            id per response (e.g. its question) and the weights have mean 1 within each group.

    Returns:
        Detached weights with mean 1 over their scope.

    >>> bmo_weights(torch.tensor([1.0, 1.0]), torch.tensor([0.5, 0.5])).tolist()
    [1.0, 1.0]
    >>> w = bmo_weights(torch.tensor([0.0, 1.0]), torch.zeros(2))
    >>> round(float(w[0] / w[1]), 4) == round(float(torch.e), 4)
    True
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    gap = (upper_losses.detach() - lower_losses.detach()).float()  # (K,)
    if groups is None:
        return gap.numel() * torch.softmax(-gap / tau, dim=0)
    g = torch.as_tensor(groups, device=gap.device).long()
    if g.shape != gap.shape:
        raise ValueError(f"groups has shape {tuple(g.shape)}, losses {tuple(gap.shape)}")
    out = torch.empty_like(gap)
    for key in torch.unique(g):
        m = g == key
        out[m] = int(m.sum()) * torch.softmax(-gap[m] / tau, dim=0)
    return out


def scope_groups(parents: Sequence[str], scope: Scope) -> list[int] | None:
    """Group ids for ``bmo_weights``: ``None`` for ``batch``, one id per parent question otherwise.

    >>> scope_groups(["a", "b", "a"], "question")
    [0, 1, 0]
    """
    if scope == "batch":
        return None
    if scope != "question":
        raise ValueError(f"unknown BMO scope {scope!r}")
    ids: dict[str, int] = {}
    return [ids.setdefault(p, len(ids)) for p in parents]
