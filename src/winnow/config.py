"""One typed config per stage; a YAML file is a serialised config (``winnow.config_io``)."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from winnow.config_io import from_dict
from winnow.errors import WinnowError

C = TypeVar("C")

BASELINES = ("direct", "random", "length", "base_loss", "val_gain", "ifd")
"""Weighing methods that score examples without bilevel learning (``winnow.baselines``)."""


@dataclasses.dataclass
class ModelOptions:
    """Which model a stage trains and how its examples are tokenised (shared by several stages)."""

    model: str = "tiny"
    """Built-in name (``tiny``, ``smollm2-135m``) or a local Hugging Face model folder."""
    max_length: int = 512
    """Longest tokenised example trained on."""
    truncation: str = "right"
    """Over-long examples: keep their first ``max_length`` tokens (``right``, as TRL does), cut their
    context from the ``left`` (the response stays whole), or ``drop`` them. All are reported."""
    train_on: str = "all"
    """Assistant turns trained on in multi-turn data: ``all`` or ``last``."""
    lora: bool | None = None
    """Train LoRA adapters instead of all weights; ``None``: LoRA for models over 50M parameters."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator."""
    lora_dropout: float = 0.0
    """LoRA dropout."""
    lora_targets: str = "all-linear"
    """Modules that get adapters: ``all-linear`` or a comma-separated list of module names."""
    lora_layers: int = 0
    """Adapters on the last N transformer layers only (0: every layer); backward then stops there, which
    makes each step cheaper."""

    def __post_init__(self) -> None:
        _check(self.max_length >= 8, "max_length must be >= 8")
        _check(self.truncation in ("drop", "left", "right"), "truncation must be 'drop', 'left' or 'right'")
        _check(self.train_on in ("all", "last"), "train_on must be 'all' or 'last'")
        _check(self.lora_r > 0, "lora_r must be > 0")
        _check(self.lora_layers >= 0, "lora_layers must be >= 0")

    def targets(self) -> str | list[str]:
        """``lora_targets`` as peft expects it."""
        if self.lora_targets == "all-linear":
            return "all-linear"
        return [t.strip() for t in self.lora_targets.split(",") if t.strip()]


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
        _check(self.epochs > 0, "epochs must be > 0")
        _check(self.max_steps is None or self.max_steps > 0, "max_steps must be > 0")
        _check(self.batch_size > 0 and self.grad_accum > 0, "batch_size and grad_accum must be > 0")
        _check(self.lr > 0, "lr must be > 0")
        _check(0 <= self.warmup < 1, "warmup must be in [0, 1)")
        _check(min(self.eval_every, self.save_every) >= 0 and self.log_every > 0, "bad eval/save/log interval")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise WinnowError(f"invalid config: {message}")


def ramp(start: float, end: float | None, round_: int, rounds: int) -> float:
    """A value ramped linearly from ``start`` (round 0) to ``end`` (the last round); ``end=None``: constant.

    >>> [ramp(1.0, 0.25, r, 4) for r in range(4)], ramp(1.0, None, 3, 4)
    ([1.0, 0.75, 0.5, 0.25], 1.0)
    """
    if end is None:
        return start
    return start + (end - start) * round_ / max(1, rounds - 1)


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
        _check(self.method in ("penalty", "lite", *BASELINES), f"method must be one of penalty, lite, {BASELINES}")
        _check(self.weight_map in ("softmax", "sigmoid"), "weight_map must be 'softmax' or 'sigmoid'")
        _check(self.rounds > 0 and self.steps_per_round >= 0, "rounds must be > 0, steps_per_round >= 0")
        _check(isinstance(self.resync, bool), "resync must be true or false")
        _check(self.gamma > 0 and (self.gamma_end is None or self.gamma_end > 0), "gamma must be > 0")
        _check(0 <= self.lite_lambda <= 1, "lite_lambda must be in [0, 1]")
        _check(self.omega_update in ("natural", "gradient"), "omega_update must be 'natural' or 'gradient'")
        _check(self.model_optimizer in ("sgd", "adam") and self.omega_optimizer in ("sgd", "adam"),
               "model_optimizer and omega_optimizer must be 'sgd' or 'adam'")
        _check(self.model_lr > 0 and self.omega_lr > 0 and self.tau >= 0, "learning rates > 0, tau >= 0")
        if self.omega_update == "natural":
            _check(self.omega_lr <= 1, "omega_update 'natural' needs omega_lr in (0, 1] (an averaging rate)")
            _check(self.tau > 0, "omega_update 'natural' needs tau > 0 (the weights are exp(-score/tau))")
        _check(self.gain_cap >= 0, "gain_cap must be >= 0")
        _check(self.batch_size > 0 and self.val_batch_size > 0, "batch sizes must be > 0")
        _check(self.score_tokens >= 0, "score_tokens must be >= 0")
        _check(self.score_reduction in ("sum", "mean"), "score_reduction must be 'sum' or 'mean'")

    def gamma_at(self, round_: int) -> float:
        """The penalty of a round (0-based), ramped linearly from ``gamma`` to ``gamma_end``."""
        return ramp(self.gamma, self.gamma_end, round_, self.rounds)

    def lambda_at(self, round_: int) -> float:
        """``lite``: the validation share of a round, decaying linearly to 0."""
        return self.lite_lambda * (1 - round_ / max(1, self.rounds))


@dataclasses.dataclass
class RefineConfig(ModelOptions):
    """Online self-refining generation with closed-form BMO weights (DESIGN §1.3–1.4)."""

    keep_top: float = 0.8
    """Share of the pool (by weight rank) whose pairs are kept; the questions of the rest are refined."""
    kept_share: float = 0.0
    """Share of the kept questions refined too (chosen at random), for question diversity."""
    rounds: int = 2
    """Rounds: generate for the chosen questions, then ``steps_per_round`` training steps."""
    samples_per_question: int = 2
    """Responses generated per question (``G``)."""
    temperature: float = 0.8
    """Sampling temperature (0: greedy)."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    max_new_tokens: int = 64
    """Longest generated response; one that hits it is recorded as cut and not trained on."""
    steps_per_round: int = 24
    """Training steps of ``θ`` and ``φ`` per round (8 trains each regenerated response about once and the
    refusal share stalls at 0.2–0.3; 24 reached 0.71: benchmarks/RESULTS.md, bench_refine)."""
    regenerate_every: int = 0
    """Regenerate every N steps within a round (0: once per round)."""
    batch_size: int = 8
    """Offline (kept) pairs per step."""
    online_batch_size: int = 8
    """Regenerated responses per step."""
    val_batch_size: int = 8
    """Validation pairs per step (cycled independently)."""
    model_lr: float = 2e-4
    """Adam learning rate of both models."""
    model_lr_end: float | None = None
    """Learning rate in the last round, ramped linearly from ``model_lr`` (``None``: constant). On SmolLM2
    the refusal share turns once ``θ`` fits the validation set at a constant rate: benchmarks/RESULTS.md."""
    gamma: float = 1.0
    """Penalty ``γ``: ``θ`` steps on ``L_val + γ·(weighted pool loss)``."""
    bmo_tau: float = 5.0
    """BMO temperature ``τ`` (1: the plain importance ratio ``π_θ/π_φ``; with sequence sums it puts the
    whole round's weight on a few responses, so the default flattens it: benchmarks/RESULTS.md)."""
    bmo_form: str = "softmax"
    """BMO weights as the optimum of BDS with an entropy (``softmax``) or a quadratic (``sparsemax``) regulariser:
    the same order, but ``sparsemax`` gives responses far worse than the best exactly 0 (never trained on)."""
    bmo_scope: str = "round"
    """BMO normalisation: ``question`` (mean 1 over each question's responses), ``batch`` (over the
    step's online batch) or ``round`` (over every response of the round: fresh losses for the step's
    batch, the last known ones for the rest, seeded by one scoring pass after each generation)."""
    bmo_refresh: str = "step"
    """When the BMO weights are computed: ``step`` (every step, from the losses the step computes) or
    ``generation`` (once per generation, from the scoring pass after it, and held until the next one:
    alternating minimisation of the BDS objective, exact in ``λ`` for the round-start ``(θ, φ)``).
    Per-step weights drift as ``φ`` fits what they favour: benchmarks/RESULTS.md, bench_refine."""
    bmo_min_ess: float = 0.0
    """With the ``generation`` refresh: raise ``τ`` for a generation's weights until their effective sample
    size is at least this share of its responses (0: ``τ`` as given). Sequence-sum gaps can put a whole
    round's weight on one response (ESS 1 of 90: benchmarks/RESULTS.md, bench_refine)."""
    online_sampling: str = "uniform"
    """How a step's regenerated responses are drawn: ``uniform`` (each trained with its ``λ``) or, with the
    ``generation`` refresh, ``weighted`` (drawn in proportion to the held ``λ``, each with weight 1: the same
    expected loss, but a response carrying most of a round's weight is in most steps rather than in two
    steps with a huge weight, which Adam's normalisation largely discards)."""
    bmo_gap: str = "models"
    """The two models the BMO weights compare: ``models`` (the trained ``θ``, ``φ``) or, with the ``generation``
    refresh, ``val_step``: ``θ`` against a copy after one fresh Adam step on the validation set (the weighing
    stage's first-order gap). On SmolLM2 that ranks compliances first once ``θ`` fits the validation set."""
    lower_data: str = "all"
    """What ``φ`` trains on: ``all`` (kept pairs + weighted responses, as ``θ``) or ``kept`` (kept pairs alone).
    With ``all``, ``φ`` fits the favoured responses faster than ``θ`` and next round's weights turn against them;
    with ``kept``, ``l(θ) − l(φ)`` is what ``θ`` learned beyond the kept data (on SmolLM2: AUROC 0.89–0.98 in
    every round, the share rising to 0.74). Both measured: benchmarks/RESULTS.md, bench_refine."""
    bmo_reduction: str = "sum"
    """NLL behind the BMO weights: ``sum`` (sequence NLL: the importance ratio ``π_θ/π_φ``) or ``mean``."""
    importance_clip: float = 10.0
    """Clip ``c`` of the per-token stale-sample correction ``min(π_θ/π_sampler, c)`` (0: no correction)."""
    seed: int = 0
    """Seed of sampling and data order."""

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(0 < self.keep_top <= 1 and 0 <= self.kept_share <= 1, "keep_top in (0, 1], kept_share in [0, 1]")
        _check(self.rounds > 0 and self.samples_per_question > 0, "rounds and samples_per_question must be > 0")
        _check(self.temperature >= 0 and 0 < self.top_p <= 1, "temperature >= 0, top_p in (0, 1]")
        _check(self.max_new_tokens > 0 and self.steps_per_round > 0, "max_new_tokens, steps_per_round must be > 0")
        _check(self.regenerate_every >= 0, "regenerate_every must be >= 0")
        _check(min(self.batch_size, self.online_batch_size, self.val_batch_size) > 0, "batch sizes must be > 0")
        _check(self.model_lr > 0 and self.gamma > 0 and self.bmo_tau > 0, "model_lr, gamma, bmo_tau must be > 0")
        _check(self.model_lr_end is None or self.model_lr_end > 0, "model_lr_end must be > 0")
        _check(self.bmo_scope in ("question", "batch", "round"), "bmo_scope must be 'question', 'batch' or 'round'")
        _check(self.bmo_form in ("softmax", "sparsemax"), "bmo_form must be 'softmax' or 'sparsemax'")
        _check(self.bmo_reduction in ("sum", "mean"), "bmo_reduction must be 'sum' or 'mean'")
        _check(self.bmo_refresh in ("step", "generation"), "bmo_refresh must be 'step' or 'generation'")
        _check(0 <= self.bmo_min_ess <= 1, "bmo_min_ess must be in [0, 1]")
        _check(self.bmo_min_ess == 0 or self.bmo_refresh == "generation", "bmo_min_ess needs bmo_refresh 'generation'")
        _check(self.online_sampling in ("uniform", "weighted"), "online_sampling must be 'uniform' or 'weighted'")
        _check(self.online_sampling == "uniform" or (self.bmo_refresh == "generation" and self.bmo_scope != "batch"),
               "online_sampling 'weighted' needs bmo_refresh 'generation' and bmo_scope 'round' or 'question'")
        _check(self.bmo_gap in ("models", "val_step"), "bmo_gap must be 'models' or 'val_step'")
        _check(self.bmo_gap == "models" or self.bmo_refresh == "generation", "bmo_gap 'val_step' needs bmo_refresh "
               "'generation' (one validation step per generation, not per training step)")
        _check(self.lower_data in ("all", "kept"), "lower_data must be 'all' or 'kept'")
        _check(self.importance_clip >= 0, "importance_clip must be >= 0")

    def lr_at(self, round_: int) -> float:
        """The learning rate of a round (0-based), ramped linearly from ``model_lr`` to ``model_lr_end``."""
        return ramp(self.model_lr, self.model_lr_end, round_, self.rounds)


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
        _check(self.max_new_tokens > 0 and self.batch_size > 0, "max_new_tokens and batch_size must be > 0")
        _check(self.limit is None or self.limit > 0, "limit must be > 0")
        _check(0 < self.keep_top <= 1, "keep_top must be in (0, 1]")


ARMS = ("direct", "bds", "bds_refine", "oracle", "random")
"""Fine-tuning arms a run can compare (``oracle`` needs the pool's hidden labels)."""


@dataclasses.dataclass
class RunConfig:
    """The whole pipeline (``winnow run``): data, model, arms and seeds, and each stage's options.

    The stage sections (``weigh``, ``refine``, ``train``, ``eval``) hold that stage's options;
    ``model``, ``max_length`` and ``model_options`` apply to every stage unless a section sets them.
    """

    task: str | None = "safety"
    """Built-in task (``safety``, ``quality``); ``None`` when ``pool``/``val``/``test`` files are given."""
    pool: str | None = None
    """Pool file (any format ``winnow validate`` reads) when not using a built-in task."""
    val: str | None = None
    """Trusted validation file."""
    test: str | None = None
    """Test file (records with ``"harmful": true`` count as harmful prompts)."""
    labels: str | None = None
    """Optional ``{"id", "label": "good"|"bad"}`` JSONL for the pool: enables the oracle arm and selection quality."""
    task_seed: int = 0
    """Seed of the built-in task's split."""
    pool_size: int | None = None
    """Built-in task pool size (``None``: the task's default)."""
    val_size: int | None = None
    """Built-in task validation size."""
    test_size: int | None = None
    """Built-in task test size."""
    model: str = "tiny"
    """Model of every stage."""
    max_length: int = 128
    """Longest tokenised example, every stage."""
    model_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Other model options (``lora_r``, ``lora_targets`` …) for every stage."""
    keep_top: float = 0.8
    """Share of the pool BDS keeps (also the random arm's share and refine's cut)."""
    arms: list[str] = dataclasses.field(default_factory=lambda: list(ARMS))
    """Arms to fine-tune and compare, each with the same number of steps."""
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    """Fine-tuning seeds (data order and init); every arm runs once per seed."""
    weigh: dict[str, Any] = dataclasses.field(default_factory=dict)
    """``WeighConfig`` options."""
    refine: dict[str, Any] = dataclasses.field(default_factory=dict)
    """``RefineConfig`` options."""
    train: dict[str, Any] = dataclasses.field(default_factory=dict)
    """``TrainConfig`` options (``max_steps`` fixes every arm's budget)."""
    eval: dict[str, Any] = dataclasses.field(default_factory=dict)
    """``EvalConfig`` options."""

    def __post_init__(self) -> None:
        files = (self.pool, self.val, self.test)
        _check((self.task is None) == all(f is not None for f in files) and (self.task is None or not any(files)),
               "give either a built-in task or all of pool, val and test files")
        _check(0 < self.keep_top <= 1, "keep_top must be in (0, 1]")
        unknown = sorted(set(self.arms) - set(ARMS))
        _check(not unknown and len(self.arms) > 0, f"unknown arms {unknown}; known: {list(ARMS)}")
        _check(len(self.seeds) > 0 and len(set(self.seeds)) == len(self.seeds), "seeds must be distinct, at least one")
        for name, cls in self.stage_classes().items():
            self.stage(name, cls)  # fail now, naming the section, not in the middle of a run

    @staticmethod
    def stage_classes() -> dict[str, type]:
        return {"weigh": WeighConfig, "refine": RefineConfig, "train": TrainConfig, "eval": EvalConfig}

    def stage(self, name: str, cls: type[C], **fixed: Any) -> C:
        """One stage's resolved config: shared model options, then its section, then ``fixed``."""
        section = getattr(self, name) or {}
        _check(isinstance(section, dict), f"section {name!r} must be a mapping")
        shared = {"model": self.model, "max_length": self.max_length, **self.model_options}
        if "keep_top" in {f.name for f in dataclasses.fields(cls)}:  # type: ignore[arg-type]
            shared["keep_top"] = self.keep_top
        return from_dict(cls, {**shared, **section, **fixed}, source=f"run config section {name!r}")
