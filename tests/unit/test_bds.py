"""The model-agnostic BDS loop on a linear model: weight maps, data visits, symmetry, resume."""

from __future__ import annotations

import pytest
import torch

from winnow.bilevel.bds import TwoCopies, learn_weights
from winnow.bilevel.weights import (
    entropy_term,
    logits_from_weights,
    robust_score,
    weight_stats,
    weights_from_logits,
)
from winnow.config import WeighConfig
from winnow.errors import WinnowError


class Tensors:
    """``Indexed`` over (x, y) tensors; records which positions each batch held."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y, self.lengths, self.seen = x, y, [1] * len(y), []

    def batch(self, index):
        self.seen.append(list(index))
        return self.x[index], self.y[index]


def squared_error(module, batch):
    x, y = batch
    return (module(x).squeeze(-1) - y) ** 2  # (B,)


def regression(n=40, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(n, d, generator=g), torch.randn(d, generator=g)
    y = x @ w
    y[: n // 5] = x[: n // 5] @ (-w)  # a fifth conflicts with the validation task
    xv = torch.randn(8, d, generator=g)
    return Tensors(x, y), Tensors(xv, xv @ w)


def linear(d=4):
    lin = torch.nn.Linear(d, 1, bias=False)
    torch.nn.init.zeros_(lin.weight)
    return TwoCopies(lin, squared_error)


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_weight_map_gradients_equal_closed_form(kind):
    omega = torch.randn(6, requires_grad=True)
    c = torch.randn(6)
    (weights_from_logits(omega, kind) * c).sum().backward()
    if kind == "softmax":
        s = torch.softmax(omega.detach(), 0)
        expect = 6 * (s * c - s * (s @ c))
    else:
        s = torch.sigmoid(omega.detach())
        expect = 2 * s * (1 - s) * c
    assert torch.allclose(omega.grad, expect, atol=1e-6)
    p = weights_from_logits(omega.detach(), kind)
    assert torch.allclose(weights_from_logits(logits_from_weights(p, kind), kind), p, atol=1e-4)


def test_entropy_term_gradient_by_finite_differences():
    p = torch.tensor([0.5, 1.0, 1.5, 1.0], dtype=torch.float64, requires_grad=True)
    entropy_term(p).backward()
    eps = 1e-6
    for i in range(4):
        e = torch.zeros(4, dtype=torch.float64)
        e[i] = eps
        fd = (entropy_term(p.detach() + e) - entropy_term(p.detach() - e)) / (2 * eps)
        assert abs(fd.item() - p.grad[i].item()) < 1e-6


def test_weight_stats():
    s = weight_stats(torch.ones(10))
    assert abs(s["ess"] - 1) < 1e-6 and abs(s["bottom_decile_mass"] - 0.1) < 1e-6
    assert weight_stats(torch.tensor([10.0] + [0.0] * 9))["ess"] == pytest.approx(0.1)


def test_robust_score_is_scale_free_ordered_and_caps_gains_only():
    s = torch.randn(50, generator=torch.Generator().manual_seed(0), dtype=torch.float64) ** 3  # heavy-tailed
    z = robust_score(s, gain_cap=1.0)
    assert torch.allclose(robust_score(1e-4 * s + 7.0, gain_cap=1.0), z)  # shift and scale free
    assert torch.equal(z.argsort(), s.argsort())  # monotone: the order of the signal is kept
    assert z.min() > -1.0 and z.max() > 3.0  # gains squashed into (-1, 0), losses not capped
    assert robust_score(s, gain_cap=0.0).min() == 0.0
    flat = torch.tensor([0.0, 0.0, 0.0, 1e-9])  # MAD 0: the floor keeps rounding noise small
    assert robust_score(flat, 1.0, floor=1e-3).max() < 1e-5


def test_natural_update_is_the_closed_form_bmo_weights_of_the_robust_score():
    """One round with ``omega_lr = 1``: ``p = N·softmax(−z/τ)``, z the robust score of ``γ·gap``."""
    pool, val = regression()
    cfg = WeighConfig(rounds=1, steps_per_round=3, model_lr=0.05, omega_lr=1.0, tau=0.7, gamma=5.0)
    res = learn_weights(linear(), pool, val, cfg, progress=False)
    z = robust_score(5.0 * (res.upper_losses - res.lower_losses), cfg.gain_cap)
    assert torch.allclose(res.weights, 40 * torch.softmax(-z / 0.7, dim=0), atol=1e-5)
    assert torch.allclose(res.scores, z)


def test_sum_reduction_scales_each_gap_by_its_target_count():
    """``score_reduction="sum"``: the gap of the sequence NLL, ``targets_i`` times the token-mean gap."""
    pool, val = regression()
    pool.targets = [1 + i % 5 for i in range(40)]
    counts = torch.tensor(pool.targets, dtype=torch.float)
    for reduction, factor in (("sum", counts), ("mean", torch.ones(40))):
        cfg = WeighConfig(rounds=1, steps_per_round=1, model_lr=0.05, omega_lr=1.0, gamma=5.0,
                          score_reduction=reduction)
        res = learn_weights(linear(), pool, val, cfg, progress=False)
        z = robust_score(5.0 * (res.upper_losses - res.lower_losses) * factor, cfg.gain_cap)
        assert torch.allclose(res.scores, z)
    with pytest.raises(WinnowError, match="score_reduction"):
        WeighConfig(score_reduction="max")


def test_resync_makes_the_gap_measure_only_this_rounds_validation_pull():
    """SGD, one step per round: after round 2, ``θ − φ = −(lr/γ)·∇L_val(φ at the round's start)``."""
    pool, val = regression()
    paired = linear()
    snaps = []

    def keep(r, row):
        snaps.append({w: paired.models[w].weight.detach().clone() for w in ("upper", "lower")})

    cfg = WeighConfig(rounds=2, steps_per_round=1, model_lr=0.05, gamma=4.0, val_batch_size=8)
    learn_weights(paired, pool, val, cfg, progress=False, on_round=keep)
    phi = snaps[0]["lower"].clone().requires_grad_(True)  # θ := φ here at the start of round 2
    ((val.x @ phi.T).squeeze(-1) - val.y).pow(2).mean().backward()
    pull = -(0.05 / 4.0) * phi.grad
    assert torch.allclose(snaps[1]["upper"] - snaps[1]["lower"], pull, atol=1e-6)


def test_natural_update_needs_an_averaging_rate_and_a_temperature():
    with pytest.raises(WinnowError, match="omega_lr in"):
        WeighConfig(omega_lr=1.5)
    with pytest.raises(WinnowError, match="tau > 0"):
        WeighConfig(tau=0.0)
    WeighConfig(omega_update="gradient", omega_lr=1.5, tau=0.0)  # plain gradient steps: any lr, no entropy


def test_small_validation_set_never_shortens_a_pool_pass():
    pool = Tensors(torch.randn(100, 3), torch.randn(100))
    val = Tensors(torch.randn(3, 3), torch.randn(3))
    cfg = WeighConfig(rounds=2, steps_per_round=10, batch_size=10, val_batch_size=2, model_lr=0.01)
    learn_weights(linear(3), pool, val, cfg, progress=False)
    # round 1 = 10 training batches, then a scoring pass over the pool in order
    first_round = pool.seen[:10]
    assert sorted(i for b in first_round for i in b) == list(range(100))
    assert pool.seen[10:20] == [list(range(s, s + 10)) for s in range(0, 100, 10)]
    assert len(val.seen) == 20  # one validation batch per step, cycling the 3 examples
    counts = torch.bincount(torch.tensor([i for b in val.seen for i in b]), minlength=3)
    assert counts.min() >= 9


def test_permuting_the_pool_permutes_the_weights():
    pool, val = regression()
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(1))
    cfg = WeighConfig(rounds=5, steps_per_round=3, batch_size=40, model_lr=0.05, omega_lr=0.5)
    a = learn_weights(linear(), pool, val, cfg, progress=False)
    b = learn_weights(linear(), Tensors(pool.x[perm], pool.y[perm]), val, cfg, progress=False)
    assert torch.allclose(b.weights, a.weights[perm], atol=1e-4)


def test_resumed_weighting_equals_uninterrupted(tmp_path, monkeypatch):
    from winnow.bilevel import bds

    cfg = WeighConfig(rounds=6, steps_per_round=2, batch_size=8, model_lr=0.05, omega_lr=0.5)
    pool, val = regression()
    full = learn_weights(linear(), pool, val, cfg, checkpoint_dir=tmp_path / "a", progress=False)

    real = bds.save_checkpoint

    def die_after_round_3(root, step, **kw):
        real(root, step, **kw)
        if step == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(bds, "save_checkpoint", die_after_round_3)
    with pytest.raises(KeyboardInterrupt):
        learn_weights(linear(), pool, val, cfg, checkpoint_dir=tmp_path / "b", progress=False)
    monkeypatch.setattr(bds, "save_checkpoint", real)
    resumed = learn_weights(linear(), pool, val, cfg, checkpoint_dir=tmp_path / "b", progress=False)
    assert torch.equal(full.weights, resumed.weights)
    assert [r["round"] for r in resumed.history] == [1, 2, 3, 4, 5, 6]


def test_bad_inputs_stop_cleanly():
    pool, val = regression()
    with pytest.raises(WinnowError, match="at least 2"):
        learn_weights(linear(), Tensors(pool.x[:1], pool.y[:1]), val, WeighConfig(), progress=False)
    with pytest.raises(WinnowError, match="validation set is empty"):
        learn_weights(linear(), pool, Tensors(val.x[:0], val.y[:0]), WeighConfig(), progress=False)
    y = pool.y.clone()
    y[7] = float("nan")
    with pytest.raises(WinnowError, match=r"non-finite .* positions \[7"):
        learn_weights(linear(), Tensors(pool.x, y), val, WeighConfig(rounds=1, steps_per_round=0), progress=False)
