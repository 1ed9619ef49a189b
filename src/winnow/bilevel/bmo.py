"""Closed-form BMO weights for regenerated responses (DESIGN §1.3). Pure tensor functions.

``λ_k = softmax_k(−(l_k(θ) − l_k(φ))/τ)``, normalised to mean 1 over its scope. With sequence-sum
NLL and ``τ = 1`` this is the importance ratio ``π_θ(y_k|x_k) / π_φ(y_k|x_k)`` (normalised): a
response the validation-aligned model ``θ`` likes more than the response-fitted model ``φ`` gains
weight. Both losses come out of the training step anyway, so the weights cost no extra pass.

They are also the exact optimum of entropy-regularised softmax BDS for fixed ``(θ, φ)``:
``argmin_{p = N·softmax(ω)}  mean_k p_k·gap_k + τ Σ (p_k/N) log(p_k/N)`` is ``p ∝ exp(−gap/τ)``
(``tests/unit/test_bmo.py`` checks it against gradient descent on ``ω``).

``form="sparsemax"`` swaps the entropy for the quadratic regulariser ``(τ/2) Σ (p_k/N)²``; the optimum
over mean-one weights is then ``p = N·sparsemax(−gap/τ)`` (the Euclidean projection of ``−gap/τ`` onto
the simplex): the same order, but a response whose gap lies more than about ``τ`` above the best ones
gets exactly 0 — it is never trained on — where the softmax keeps a tail of small positive weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from winnow.bilevel.weights import ess_share

Scope = Literal["batch", "question", "round"]
Form = Literal["softmax", "sparsemax"]


def sparsemax(z: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of ``z`` ``(K,)`` onto the probability simplex (Martins & Astudillo, 2016).

    ``argmin_{q ≥ 0, Σq = 1} ||q − z||²`` is ``max(z − η, 0)`` with the threshold ``η`` chosen so the
    result sums to 1; entries more than ``1`` below the largest are always 0.

    >>> sparsemax(torch.tensor([3.0, 1.0, 0.0])).tolist()
    [1.0, 0.0, 0.0]
    >>> sparsemax(torch.tensor([0.5, 0.25, -2.0])).tolist()
    [0.625, 0.375, 0.0]
    """
    srt, _ = torch.sort(z, descending=True)  # (K,)
    k = torch.arange(1, z.numel() + 1, device=z.device, dtype=z.dtype)
    cum = srt.cumsum(0)
    support = int((1 + k * srt > cum).sum())  # the largest k with 1 + k·z_(k) > Σ_{j≤k} z_(j)
    eta = (cum[support - 1] - 1) / support
    return torch.clamp(z - eta, min=0)


def _normalised(z: torch.Tensor, form: Form) -> torch.Tensor:
    """Mean-one weights ``K·softmax(z)`` or ``K·sparsemax(z)`` over one scope."""
    if form == "softmax":
        return z.numel() * torch.softmax(z, dim=0)
    if form == "sparsemax":
        return z.numel() * sparsemax(z)
    raise ValueError(f"unknown BMO form {form!r}")


def bmo_weights(
    upper_losses: torch.Tensor,
    lower_losses: torch.Tensor,
    *,
    tau: float = 1.0,
    groups: Sequence[int] | torch.Tensor | None = None,
    form: Form = "softmax",
) -> torch.Tensor:
    """BMO weights ``(K,)`` from per-response losses under ``θ`` (upper) and ``φ`` (lower).

    Args:
        upper_losses: ``(K,)`` NLL of each response under ``θ`` (token mean or sequence sum;
            the caller's reduction is the option).
        lower_losses: ``(K,)`` the same under ``φ``.
        tau: temperature; large ``τ`` flattens the weights towards 1.
        groups: ``None`` normalises over the whole batch (mean 1 over ``K``); otherwise one group
            id per response (e.g. its question) and the weights have mean 1 within each group.
        form: ``softmax`` (the entropy-regularised optimum) or ``sparsemax`` (the quadratic-regularised
            one: exact zeros for responses far worse than the best).

    Returns:
        Detached weights with mean 1 over their scope.

    >>> bmo_weights(torch.tensor([1.0, 1.0]), torch.tensor([0.5, 0.5])).tolist()
    [1.0, 1.0]
    >>> w = bmo_weights(torch.tensor([0.0, 1.0]), torch.zeros(2))
    >>> round(float(w[0] / w[1]), 4) == round(float(torch.e), 4)
    True
    >>> bmo_weights(torch.tensor([0.0, 0.5, 9.0]), torch.zeros(3), form="sparsemax").tolist()
    [2.25, 0.75, 0.0]
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    gap = (upper_losses.detach() - lower_losses.detach()).float()  # (K,)
    if groups is None:
        return _normalised(-gap / tau, form)
    g = torch.as_tensor(groups, device=gap.device).long()
    if g.shape != gap.shape:
        raise ValueError(f"groups has shape {tuple(g.shape)}, losses {tuple(gap.shape)}")
    out = torch.empty_like(gap)
    for key in torch.unique(g):
        m = g == key
        out[m] = _normalised(-gap[m] / tau, form)
    return out


def tau_for_share(
    upper_losses: torch.Tensor,
    lower_losses: torch.Tensor,
    *,
    tau: float,
    min_share: float,
    groups: Sequence[int] | torch.Tensor | None = None,
    form: Form = "softmax",
) -> float:
    """The smallest temperature ``≥ tau`` at which the BMO weights keep an effective sample size of at
    least ``min_share`` of the responses (``0``: ``tau`` as given).

    Sequence-sum gaps span tens of nats, so at a fixed ``τ`` a round's weight can sit on one or two
    responses; raising ``τ`` flattens the weights without changing their order (larger ``τ`` gives a
    larger share: the weights tend to 1 as ``τ`` grows).

    >>> gap = torch.tensor([0.0, 10.0, 20.0, 30.0])
    >>> t = tau_for_share(gap, torch.zeros(4), tau=1.0, min_share=0.5)
    >>> t > 1.0, round(ess_share(bmo_weights(gap, torch.zeros(4), tau=t)), 3)
    (True, 0.5)
    """
    if not 0 <= min_share <= 1:
        raise ValueError(f"min_share must be in [0, 1], got {min_share}")

    def share(t: float) -> float:
        return ess_share(bmo_weights(upper_losses, lower_losses, tau=t, groups=groups, form=form))

    if min_share == 0 or upper_losses.numel() < 2 or share(tau) >= min_share:
        return tau
    lo, hi = tau, 2 * tau
    for _ in range(60):  # share(∞) = 1 ≥ min_share, so doubling finds an upper end
        if share(hi) >= min_share:
            break
        lo, hi = hi, 2 * hi
    for _ in range(50):  # bisect on a log scale; return the end that meets the share
        mid = (lo * hi) ** 0.5
        lo, hi = (lo, mid) if share(mid) >= min_share else (mid, hi)
    return hi


def round_bmo_weights(
    known_upper: torch.Tensor,
    known_lower: torch.Tensor,
    idx: torch.Tensor,
    upper_losses: torch.Tensor,
    lower_losses: torch.Tensor,
    *,
    tau: float = 1.0,
    form: Form = "softmax",
) -> torch.Tensor:
    """BMO weights of a batch normalised over a whole round of responses (the ``round`` scope).

    ``known_*`` hold the last known loss of every response of the round (``(K,)``); the batch's
    fresh losses overwrite its rows (in place), and the batch gets its rows of the weights over
    all ``K``. A batch of responses that ``θ`` likes less than the rest of the round therefore
    weighs less than 1 on average, where the ``batch`` scope would force mean 1.

    >>> up, lo = torch.tensor([0.0, 0.0, 3.0, 3.0]), torch.zeros(4)
    >>> w = round_bmo_weights(up, lo, torch.tensor([2, 3]), torch.tensor([3.0, 3.0]), torch.zeros(2))
    >>> bool(w.mean() < 1), w.tolist() == bmo_weights(up, lo)[2:].tolist()
    (True, True)
    """
    known_upper[idx] = upper_losses.detach().to(known_upper)
    known_lower[idx] = lower_losses.detach().to(known_lower)
    return bmo_weights(known_upper, known_lower, tau=tau, form=form)[idx]


def scope_groups(parents: Sequence[str], scope: Scope) -> list[int] | None:
    """Group ids for ``bmo_weights``: one id per parent question for ``question``, else ``None``.

    ``batch`` and ``round`` both normalise over one set (the step's batch, or every response of
    the round); which set is the caller's choice.

    >>> scope_groups(["a", "b", "a"], "question")
    [0, 1, 0]
    """
    if scope in ("batch", "round"):
        return None
    if scope != "question":
        raise ValueError(f"unknown BMO scope {scope!r}")
    ids: dict[str, int] = {}
    return [ids.setdefault(p, len(ids)) for p in parents]
