"""Bilevel data selection: the value-function penalty loop, model-agnostic (DESIGN §1.1).

The loop sees a ``PairedModel`` (per-example losses of a batch under the upper model ``θ`` or
the lower model ``φ``) and two ``Indexed`` data sets (``batch(index)`` builds a batch). It runs
rounds: ``steps_per_round`` model steps, then a forward-only scoring pass over the whole pool
and one full-vector step on the logits ``ω``, so every example's gap is fresh when its weight
moves. The same code drives a linear model on synthetic data and an LLM with two LoRA adapters.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from tqdm.auto import tqdm

from winnow.bilevel.weights import entropy_term, weight_stats, weights_from_logits
from winnow.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, set_rng_state
from winnow.config import WeighConfig
from winnow.errors import WinnowError
from winnow.step import flat_batches

log = logging.getLogger(__name__)

Which = Literal["upper", "lower"]


class PairedModel(Protocol):
    """Two parameter sets over one architecture: ``upper`` (θ) and ``lower`` (φ)."""

    def losses(self, which: Which, batch: Any) -> torch.Tensor:
        """Per-example losses ``(B,)`` of ``batch`` under the named parameters."""
        ...

    def params(self, which: Which) -> list[torch.nn.Parameter]:
        """The trainable parameters of the named model."""
        ...


class Indexed(Protocol):
    """A data set that builds batches from example positions."""

    lengths: Sequence[int]

    def batch(self, index: Sequence[int]) -> Any:
        """The batch holding examples ``index`` (in that order)."""
        ...


class TwoCopies:
    """``PairedModel`` over two full copies of a small module (the lower starts as a copy)."""

    def __init__(self, module: torch.nn.Module, loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor]) -> None:
        self.models = {"upper": module, "lower": copy.deepcopy(module)}
        self.loss_fn = loss_fn

    def losses(self, which: Which, batch: Any) -> torch.Tensor:
        return self.loss_fn(self.models[which], batch)

    def params(self, which: Which) -> list[torch.nn.Parameter]:
        return [p for p in self.models[which].parameters() if p.requires_grad]


@dataclass
class BDSResult:
    """Learned weights (in pool order) and what the loop saw."""

    weights: torch.Tensor
    logits: torch.Tensor
    upper_losses: torch.Tensor
    lower_losses: torch.Tensor
    history: list[dict[str, Any]] = field(default_factory=list)
    """Per round: gamma, validation loss, penalty gap, weight stats."""
    snapshots: list[list[float]] = field(default_factory=list)
    """Weights after each round (for trajectory plots)."""


@torch.no_grad()
def score_pool(model: PairedModel, pool: Indexed, batch_size: int, which: Sequence[Which]) -> dict[str, torch.Tensor]:
    """Forward-only losses of every pool example under each named model: ``{which: (N,)}``."""
    n = len(pool.lengths)
    out = {w: torch.empty(n) for w in which}
    for s in range(0, n, batch_size):
        idx = list(range(s, min(n, s + batch_size)))
        batch = pool.batch(idx)
        for w in which:
            out[w][idx] = model.losses(w, batch).float().cpu()
    return out


def learn_weights(
    model: PairedModel,
    pool: Indexed,
    val: Indexed,
    config: WeighConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    on_round: Callable[[int, dict[str, Any]], None] | None = None,
) -> BDSResult:
    """Learn one weight per pool example so the upper model is best on validation.

    Penalty form, per step on a pool batch ``I`` and a validation batch (cycled independently):
    ``φ`` steps on ``mean sg(p_i) l_i(φ)``; ``θ`` on ``L_val(θ) + γ mean sg(p_i) l_i(θ)``. After
    each round, ``ω`` takes one step on ``γ mean_i p_i(ω) sg(l_i(θ) − l_i(φ)) + τ Σ q log q`` over
    the whole pool. ``lite``: no ``φ``; ``θ`` steps on ``λ L_val + (1−λ) mean sg(p_i) l_i(θ)`` and
    ``ω`` on ``mean p_i(ω) sg(l_i(θ))``.

    Resumes from the newest checkpoint under ``checkpoint_dir`` (one per round).
    """
    n = len(pool.lengths)
    if n < 2:
        raise WinnowError(f"the pool needs at least 2 examples, got {n}")
    if len(val.lengths) == 0:
        raise WinnowError("the validation set is empty")
    lite = config.method == "lite"
    roles: tuple[Which, ...] = ("upper",) if lite else ("upper", "lower")
    omega = torch.zeros(n, requires_grad=True)
    opt_omega = (torch.optim.Adam if config.omega_optimizer == "adam" else torch.optim.SGD)([omega], lr=config.omega_lr)
    make = (lambda ps: torch.optim.SGD(ps, lr=config.model_lr)) if config.model_optimizer == "sgd" else (
        lambda ps: torch.optim.Adam(ps, lr=config.model_lr))
    opts = {w: make(model.params(w)) for w in roles}
    result = BDSResult(torch.ones(n), omega.detach().clone(), torch.zeros(n), torch.zeros(n))

    # --- resume -----------------------------------------------------------------------------
    start = 0
    ckpt = latest_checkpoint(checkpoint_dir) if checkpoint_dir else None
    if ckpt is not None:
        tensors, states, meta = load_checkpoint(ckpt)
        with torch.no_grad():
            omega.copy_(tensors["omega"])
            for w in roles:
                for i, p in enumerate(model.params(w)):
                    p.copy_(tensors[f"{w}.{i}"])
        opt_omega.load_state_dict(states["omega_opt"])
        for w in roles:
            opts[w].load_state_dict(states[f"{w}_opt"])
        set_rng_state(states["rng"])
        result.history, result.snapshots = meta["history"], meta["snapshots"]
        start = meta["step"]
        log.info("resuming weighting from round %d", start)

    pool_batches = flat_batches(pool.lengths, config.batch_size, seed=config.seed, group_by_length=False,
                                start=start * config.steps_per_round)
    val_batches = flat_batches(val.lengths, config.val_batch_size, seed=config.seed + 1, group_by_length=False,
                               start=start * config.steps_per_round)
    bar = tqdm(total=config.rounds, initial=start, disable=not progress, desc="weigh", unit="round")
    for r in range(start, config.rounds):
        gamma, lam = config.gamma_at(r), config.lambda_at(r)
        # --- model steps ----------------------------------------------------------------------
        val_loss = math.nan
        for _ in range(config.steps_per_round):
            _, idx = next(pool_batches)
            _, vidx = next(val_batches)
            batch, vbatch = pool.batch(idx), val.batch(vidx)
            p = weights_from_logits(omega.detach(), config.weight_map)[idx]  # (B,) sg(p)
            if not lite:
                _sgd_step(opts["lower"], (p * model.losses("lower", batch)).mean())
            lv = model.losses("upper", vbatch).mean()
            pool_term = (p * model.losses("upper", batch)).mean()
            # (L_val + γ·pool)/γ: same minimiser, and with SGD at φ's step size θ − φ is exactly
            # the validation pull, so the gap below is a first-order influence score
            upper = lam * lv + (1 - lam) * pool_term if lite else lv / gamma + pool_term
            _sgd_step(opts["upper"], upper)
            val_loss = float(lv.detach())
        # --- scoring pass and omega step ------------------------------------------------------
        scores = score_pool(model, pool, config.batch_size, roles)
        _check_finite(scores)
        signal = scores["upper"] if lite else gamma * (scores["upper"] - scores["lower"])
        opt_omega.zero_grad(set_to_none=True)
        if config.omega_update == "natural":
            # mirror descent on the weights: every example moves by its own standardised
            # signal, so a down-weighted example can recover and noise averages out over rounds
            z = (signal - signal.mean()) / signal.std().clamp_min(1e-12)
            omega.grad = z + config.tau * omega.detach()
        else:
            p_all = weights_from_logits(omega, config.weight_map)
            obj = (p_all * signal).mean() + (config.tau * entropy_term(p_all) if config.tau else 0.0)
            obj.backward()
        opt_omega.step()
        # --- record ---------------------------------------------------------------------------
        p_now = weights_from_logits(omega.detach(), config.weight_map)
        gap = float((scores["upper"] - scores["lower"]).mean()) if not lite else 0.0
        row = {"round": r + 1, "gamma": gamma, "val_loss": val_loss, "gap": gap, **weight_stats(p_now)}
        result.history.append(row)
        result.snapshots.append([round(float(x), 5) for x in p_now])
        result.upper_losses = scores["upper"]
        result.lower_losses = scores.get("lower", torch.zeros(n))
        bar.update(1)
        bar.set_postfix(val=f"{val_loss:.3f}", gap=f"{gap:.3f}", H=f"{row['entropy']:.2f}")
        if on_round is not None:
            on_round(r + 1, row)
        if checkpoint_dir is not None:
            tensors = {"omega": omega.detach()}
            for w in roles:
                tensors.update({f"{w}.{i}": p.detach() for i, p in enumerate(model.params(w))})
            states = {"omega_opt": opt_omega.state_dict(), **{f"{w}_opt": opts[w].state_dict() for w in roles}}
            save_checkpoint(checkpoint_dir, r + 1, tensors=tensors, states=states,
                            meta={"history": result.history, "snapshots": result.snapshots})
    bar.close()
    result.logits = omega.detach().clone()
    result.weights = weights_from_logits(result.logits, config.weight_map)
    if result.history and result.history[-1]["ess"] < 0.1:
        log.warning("weights collapsed onto a few examples (effective sample size %.1f%% of the pool); "
                    "consider tau > 0 or a smaller omega_lr", 100 * result.history[-1]["ess"])
    return result


def _sgd_step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _check_finite(scores: dict[str, torch.Tensor]) -> None:
    for name, s in scores.items():
        bad = (~torch.isfinite(s)).nonzero().flatten().tolist()
        if bad:
            raise WinnowError(f"non-finite {name} losses for pool positions {bad[:10]} "
                              f"({len(bad)} in all); lower the learning rate")
