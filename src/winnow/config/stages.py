"""Configs of the fine-tune, weighing and evaluation stages."""

from __future__ import annotations

import dataclasses

from winnow.config.base import ModelOptions, check, ramp

BASELINES = ("direct", "random", "length", "base_loss", "val_gain", "ifd")
"""Weighing methods that score examples without bilevel learning (``winnow.baselines``)."""


@dataclasses.dataclass
class TrainConfig(ModelOptions):
    """Weighted supervised fine-tuning (the final fine-tune, and direct mixing)."""

    epochs: float = 1.0
    """Passes over the training data (fractions allowed); ignored when ``max_steps`` is set."""
    max_steps: int | None = None
    """Optimizer steps to run; overrides ``epochs``."""
    batch_size: int = 8
    """Examples per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float = 2e-4
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup: float = 0.05
    """Share of the steps spent warming up linearly before the cosine decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 disables clipping)."""
    group_by_length: bool = True
    """Batch examples of similar length together (less padding)."""
    eval_every: int = 0
    """Evaluate on the validation data every N steps (0: only at the end)."""
    save_every: int = 50
    """Write a resumable checkpoint every N steps (0: never)."""
    log_every: int = 1
    """Write a metrics row every N steps."""
    seed: int = 0
    """Seed of the data order, initialisation and dropout."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.epochs > 0, "epochs must be > 0")
        check(self.max_steps is None or self.max_steps > 0, "max_steps must be > 0")
        check(self.batch_size > 0 and self.grad_accum > 0, "batch_size and grad_accum must be > 0")
        check(self.lr > 0, "lr must be > 0")
        check(0 <= self.warmup < 1, "warmup must be in [0, 1)")
        check(min(self.eval_every, self.save_every) >= 0 and self.log_every > 0, "bad eval/save/log interval")


@dataclasses.dataclass
class WeighConfig(ModelOptions):
    """Offline bilevel data selection: learn one weight per pool example (DESIGN §1.1)."""

    method: str = "penalty"
    """``penalty`` (value-function penalty, two models), ``lite`` (SEAL-style, one model), or a
    baseline score: ``direct``, ``random``, ``length``, ``base_loss``, ``val_gain``, ``ifd``."""
    weight_map: str = "softmax"
    """``softmax`` (``N·softmax(ω)``, mean weight 1) or ``sigmoid`` (``2·sigmoid(ω)``)."""
    rounds: int = 1
    """Rounds of training steps, each followed by a full-pool scoring pass and an ``ω`` step. On SmolLM2 +
    LoRA later rounds ranked slightly worse than the first (φ drifts; benchmarks/RESULTS.md); the
    synthetic regression needs ~30 rounds of 4 steps for its model to fit."""
    steps_per_round: int = 1
    """Model steps (lower then upper) per round. With one SGD step ``θ − φ`` is exactly the validation
    pull, so the gap is a clean first-order influence score; more steps let the pool steps distort it."""
    resync: bool = True
    """``penalty``: start every round with ``θ := φ``, so the gap measures only that round's validation pull."""
    gamma: float = 10.0
    """Penalty ``γ`` at the first round (``lite``: unused)."""
    gamma_end: float | None = None
    """Penalty at the last round, ramped linearly (``None``: keep ``gamma``)."""
    lite_lambda: float = 0.5
    """``lite``: weight of the validation loss at the first round, decaying linearly to 0."""
    model_optimizer: str = "sgd"
    """Optimizer of both models: ``sgd`` (``θ − φ`` is then exactly the validation pull) or ``adam``."""
    model_lr: float = 0.02
    """Learning rate of both models (SmolLM2 + LoRA: 0.1 already bends the gap away from the first-order
    influence, 1.0 diverges; a small linear model wants about 1/(its curvature), e.g. 0.1)."""
    omega_update: str = "natural"
    """``natural``: ``ω = −(running mean of the robust-standardised gap)/τ``, the closed-form optimum of the
    entropy-regularised objective; ``gradient``: ``omega_optimizer`` steps on that objective's plain gradient."""
    omega_optimizer: str = "sgd"
    """``gradient``: optimizer of the logits ``ω``, ``sgd`` (steps scale with the gaps) or ``adam`` (sign-like)."""
    omega_lr: float = 0.1
    """``natural``: averaging rate of the score in (0, 1] (bias-corrected; 1 keeps only the last round);
    ``gradient``: learning rate of ``ω``."""
    tau: float = 0.5
    """Entropy temperature: ``natural`` weights are ``∝ exp(−score/τ)``, the score in robust standard
    deviations; ``gradient``: strength of the entropy regulariser (0: none)."""
    gain_cap: float = 1.0
    """``natural``: softly cap how far below the median a score counts, so up-weighting stays bounded
    (by about ``exp(gain_cap/τ)``) and the weights cannot collapse onto a few examples."""
    batch_size: int = 8
    """Pool examples per step."""
    val_batch_size: int = 32
    """Validation examples per step (the validation set is cycled independently); the whole set when it is
    this small, so every round's validation pull is the same full-set gradient."""
    score_reduction: str = "sum"
    """``penalty``: rank by the gap in each example's sequence NLL (``sum``, the change in ``log π(y|x)``;
    needs the pool's ``targets``) or in its token mean (``mean``)."""
    score_tokens: int = 0
    """Baseline scores use each example's first N response tokens only (0: all): what separates a
    refusal from a compliance sits at the start, and a mean over a long response washes it out."""
    seed: int = 0
    """Seed of the data order."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.method in ("penalty", "lite", *BASELINES), f"method must be one of penalty, lite, {BASELINES}")
        check(self.weight_map in ("softmax", "sigmoid"), "weight_map must be 'softmax' or 'sigmoid'")
        check(self.rounds > 0 and self.steps_per_round >= 0, "rounds must be > 0, steps_per_round >= 0")
        check(isinstance(self.resync, bool), "resync must be true or false")
        check(self.gamma > 0 and (self.gamma_end is None or self.gamma_end > 0), "gamma must be > 0")
        check(0 <= self.lite_lambda <= 1, "lite_lambda must be in [0, 1]")
        check(self.omega_update in ("natural", "gradient"), "omega_update must be 'natural' or 'gradient'")
        check(self.model_optimizer in ("sgd", "adam") and self.omega_optimizer in ("sgd", "adam"),
               "model_optimizer and omega_optimizer must be 'sgd' or 'adam'")
        check(self.model_lr > 0 and self.omega_lr > 0 and self.tau >= 0, "learning rates > 0, tau >= 0")
        if self.omega_update == "natural":
            check(self.omega_lr <= 1, "omega_update 'natural' needs omega_lr in (0, 1] (an averaging rate)")
            check(self.tau > 0, "omega_update 'natural' needs tau > 0 (the weights are exp(-score/tau))")
        check(self.gain_cap >= 0, "gain_cap must be >= 0")
        check(self.batch_size > 0 and self.val_batch_size > 0, "batch sizes must be > 0")
        check(self.score_tokens >= 0, "score_tokens must be >= 0")
        check(self.score_reduction in ("sum", "mean"), "score_reduction must be 'sum' or 'mean'")

    def gamma_at(self, round_: int) -> float:
        """The penalty of a round (0-based), ramped linearly from ``gamma`` to ``gamma_end``."""
        return ramp(self.gamma, self.gamma_end, round_, self.rounds)

    def lambda_at(self, round_: int) -> float:
        """``lite``: the validation share of a round, decaying linearly to 0."""
        return self.lite_lambda * (1 - round_ / max(1, self.rounds))


@dataclasses.dataclass
class EvalConfig(ModelOptions):
    """Evaluation of a fine-tuned model on a task's test set."""

    max_new_tokens: int = 48
    """Greedy tokens generated per test prompt (a refusal shows in the first sentence)."""
    batch_size: int = 16
    """Prompts per generation batch, and pairs per loss batch."""
    limit: int | None = None
    """Evaluate on at most this many harmful and this many benign test prompts (``None``: all)."""
    keep_top: float = 0.8
    """Selection quality: the share kept when computing precision/recall of the rejected part."""
    seed: int = 0
    """Seed of the subsample when ``limit`` is set."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.max_new_tokens > 0 and self.batch_size > 0, "max_new_tokens and batch_size must be > 0")
        check(self.limit is None or self.limit > 0, "limit must be > 0")
        check(0 < self.keep_top <= 1, "keep_top must be in (0, 1]")
