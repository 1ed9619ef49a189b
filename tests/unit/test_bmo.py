"""BMO weights: the exact optimum of entropy-regularised softmax BDS, and their invariances."""

from __future__ import annotations

import pytest
import torch

from winnow.bilevel import bmo_weights, entropy_term, round_bmo_weights, scope_groups, weights_from_logits


def test_bmo_is_the_optimum_of_entropy_regularised_bds():
    torch.manual_seed(0)
    upper, lower = torch.rand(12, dtype=torch.float64) * 3, torch.rand(12, dtype=torch.float64) * 3
    gap = upper - lower
    for tau in (0.3, 1.0, 2.5):
        def objective(p: torch.Tensor, tau: float = tau) -> torch.Tensor:
            return (p * gap).mean() + tau * entropy_term(p)  # BDS upper objective for fixed (θ, φ)

        learned = _minimise(lambda omega: objective(weights_from_logits(omega, "softmax")), 12).float()
        closed = bmo_weights(upper, lower, tau=tau)
        assert torch.allclose(learned, closed, atol=1e-4), (tau, learned, closed)
        # and it is a minimum: any other mean-one weighting scores worse
        other = weights_from_logits(torch.randn(12, dtype=torch.float64))
        assert float(objective(closed.double())) < float(objective(other))


def _minimise(f, n: int) -> torch.Tensor:
    """Weights ``N·softmax(ω)`` at the minimiser of ``f(ω)``, by L-BFGS in float64."""
    omega = torch.zeros(n, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([omega], lr=1.0, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        obj = f(omega)
        obj.backward()
        return obj

    opt.step(closure)
    return weights_from_logits(omega.detach(), "softmax")


def test_sequence_sum_tau_one_is_the_importance_ratio():
    logp_theta = torch.tensor([-3.0, -5.0, -4.0])
    logp_phi = torch.tensor([-4.0, -4.0, -4.0])
    w = bmo_weights(-logp_theta, -logp_phi, tau=1.0)
    ratio = torch.exp(logp_theta - logp_phi)
    assert torch.allclose(w, 3 * ratio / ratio.sum())


def test_identical_responses_get_equal_weights_and_mean_one():
    up = torch.tensor([1.0, 2.0, 1.0, 0.5])
    lo = torch.tensor([0.5, 0.5, 0.5, 0.7])
    w = bmo_weights(up, lo, tau=0.7)
    assert w[0] == w[2]
    assert abs(float(w.mean()) - 1) < 1e-6


def test_per_question_scope_normalises_within_each_question():
    up = torch.tensor([1.0, 3.0, 0.0, 0.0, 9.0])
    lo = torch.zeros(5)
    groups = scope_groups(["a", "a", "b", "b", "c"], "question")
    w = bmo_weights(up, lo, groups=groups)
    assert torch.allclose(w[:2].mean(), torch.tensor(1.0)) and torch.allclose(w[2:4], torch.ones(2))
    assert float(w[4]) == 1.0  # a question with one response keeps weight 1
    assert float(w[0]) > float(w[1])  # the response θ prefers wins inside its question
    assert torch.allclose(w[:2], bmo_weights(up[:2], lo[:2]))


def test_large_tau_flattens():
    w = bmo_weights(torch.tensor([0.0, 5.0]), torch.zeros(2), tau=1e6)
    assert torch.allclose(w, torch.ones(2), atol=1e-5)


def test_round_scope_normalises_a_batch_over_the_whole_round_and_keeps_the_latest_losses():
    torch.manual_seed(0)
    up, lo = torch.randn(12) * 3, torch.randn(12) * 3
    idx = torch.tensor([7, 2, 9])
    fresh_up, fresh_lo = up[idx] + 1.0, lo[idx]  # θ likes these three less than it did
    w = round_bmo_weights(up, lo, idx, fresh_up, fresh_lo, tau=2.0)
    assert torch.equal(up[idx], fresh_up)  # the round's record now holds the fresh losses
    assert torch.allclose(w, bmo_weights(up, lo, tau=2.0)[idx])
    # the same batch alone would be forced to mean 1; over the round it is not
    assert float(bmo_weights(fresh_up, fresh_lo, tau=2.0).mean()) == pytest.approx(1.0)
    assert float(w.mean()) != pytest.approx(1.0, abs=0.05)
    # a batch of the round's worst responses weighs less than the best
    gap = up - lo
    worst, best = torch.argsort(gap)[-3:], torch.argsort(gap)[:3]
    assert float(round_bmo_weights(up, lo, worst, up[worst], lo[worst]).max()) < float(
        round_bmo_weights(up, lo, best, up[best], lo[best]).min())


def test_sparsemax_bmo_is_the_optimum_of_quadratic_regularised_bds():
    """``form="sparsemax"``: the exact minimiser of ``mean p·gap + (τ/2) Σ (p/N)²`` over mean-one weights."""
    from winnow.bilevel.bmo import sparsemax

    torch.manual_seed(1)
    n = 12
    gap = (torch.rand(n, dtype=torch.float64) - 0.5) * 4
    for tau in (0.2, 1.0, 5.0):
        p = bmo_weights(gap, torch.zeros(n, dtype=torch.float64), tau=tau, form="sparsemax").double()
        q = p / n
        assert float(q.sum()) == pytest.approx(1.0) and bool((q >= 0).all())
        # KKT of the simplex QP: on the support gap + τq is one constant, off it gap is at least that constant
        on = q > 0
        level = gap[on] + tau * q[on]
        assert torch.allclose(level, level[0].expand_as(level), atol=1e-12)
        assert bool((gap[~on] >= level[0] - 1e-12).all())

        def objective(p: torch.Tensor, tau: float = tau) -> torch.Tensor:
            return (p * gap).mean() + tau / 2 * ((p / n) ** 2).sum()

        for _ in range(20):  # any other mean-one weighting scores no better
            other = n * sparsemax(torch.randn(n, dtype=torch.float64) * 3)
            assert float(objective(p)) <= float(objective(other)) + 1e-12
    assert int((bmo_weights(gap, torch.zeros(n), tau=0.2, form="sparsemax") == 0).sum()) > n // 2  # exact zeros


def test_sparsemax_keeps_the_softmax_order_and_zeros_what_softmax_keeps_small():
    gap = torch.tensor([0.0, 1.0, 0.0, 2.0, 30.0, 40.0])
    soft = bmo_weights(gap, torch.zeros(6), tau=2.0)
    sparse = bmo_weights(gap, torch.zeros(6), tau=2.0, form="sparsemax")
    assert sparse[0] == sparse[2] and abs(float(sparse.mean()) - 1) < 1e-6  # identical responses, mean 1
    assert torch.equal(torch.argsort(-soft, stable=True)[:4], torch.argsort(-sparse, stable=True)[:4])
    assert bool((soft[4:] > 0).all()) and sparse[4:].tolist() == [0.0, 0.0]
    grouped = bmo_weights(gap, torch.zeros(6), tau=2.0, form="sparsemax", groups=[0, 0, 0, 1, 1, 1])
    assert grouped[:3].mean() == pytest.approx(1.0) and grouped[3:].tolist() == [3.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="unknown BMO form"):
        bmo_weights(gap, torch.zeros(6), form="hardmax")


def test_an_ess_floor_widens_the_sparsemax_support():
    from winnow.bilevel import ess_share, tau_for_share

    gap = torch.linspace(0, 60, 40)
    sharp = bmo_weights(gap, torch.zeros(40), tau=1.0, form="sparsemax")
    tau = tau_for_share(gap, torch.zeros(40), tau=1.0, min_share=0.3, form="sparsemax")
    wide = bmo_weights(gap, torch.zeros(40), tau=tau, form="sparsemax")
    assert int((sharp > 0).sum()) == 1 and tau > 1.0
    assert ess_share(wide) == pytest.approx(0.3, abs=1e-4) and 12 <= int((wide > 0).sum()) < 40
