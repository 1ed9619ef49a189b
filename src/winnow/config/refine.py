"""Config of the online self-refining stage (DESIGN §1.3–1.4)."""

from __future__ import annotations

import dataclasses

from winnow.config.base import ModelOptions, check, ramp


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
    bmo_form: str = "sparsemax"
    """BMO weights as the optimum of BDS with an entropy (``softmax``) or a quadratic (``sparsemax``) regulariser:
    the same order, but ``sparsemax`` gives responses far worse than the best exactly 0 (never trained on; on
    SmolLM2 the refusal share rose past 0.80, where with ``softmax`` it stalled at 0.74: benchmarks/RESULTS.md)."""
    bmo_scope: str = "round"
    """BMO normalisation: ``question`` (mean 1 over each question's responses), ``batch`` (over the
    step's online batch) or ``round`` (over every response of the round: fresh losses for the step's
    batch, the last known ones for the rest, seeded by one scoring pass after each generation)."""
    bmo_refresh: str = "generation"
    """When the BMO weights are computed: ``generation`` (once per generation, from the scoring pass after it,
    and held until the next one: alternating minimisation of the BDS objective, exact in ``λ`` for the
    round-start ``(θ, φ)``) or ``step`` (every step, from the losses the step computes; needs ``bmo_min_ess 0``
    and ``online_sampling uniform``). Per-step weights drift as ``φ`` fits what they favour:
    benchmarks/RESULTS.md, bench_refine."""
    bmo_min_ess: float = 0.5
    """With the ``generation`` refresh: raise ``τ`` for a generation's weights until their effective sample
    size is at least this share of its responses (0: ``τ`` as given). Sequence-sum gaps can put a whole
    round's weight on one response (ESS 1 of 90); with sparsemax 0.25 rises faster on SmolLM2 but ties half
    the good responses at 0 with the bad, 0.5 keeps the ranking: benchmarks/RESULTS.md, bench_refine."""
    online_sampling: str = "weighted"
    """How a step's regenerated responses are drawn: ``uniform`` (each trained with its ``λ``) or, with the
    ``generation`` refresh, ``weighted`` (drawn in proportion to the held ``λ``, each with weight 1: the same
    expected loss, but a response carrying most of a round's weight is in most steps rather than in two
    steps with a huge weight, which Adam's normalisation largely discards)."""
    bmo_gap: str = "models"
    """The two models the BMO weights compare: ``models`` (the trained ``θ``, ``φ``) or, with the ``generation``
    refresh, ``val_step``: ``θ`` against a copy after one fresh Adam step on the validation set (the weighing
    stage's first-order gap). On SmolLM2 that ranks compliances first once ``θ`` fits the validation set."""
    lower_data: str = "kept"
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
        check(0 < self.keep_top <= 1 and 0 <= self.kept_share <= 1, "keep_top in (0, 1], kept_share in [0, 1]")
        check(self.rounds > 0 and self.samples_per_question > 0, "rounds and samples_per_question must be > 0")
        check(self.temperature >= 0 and 0 < self.top_p <= 1, "temperature >= 0, top_p in (0, 1]")
        check(self.max_new_tokens > 0 and self.steps_per_round > 0, "max_new_tokens, steps_per_round must be > 0")
        check(self.regenerate_every >= 0, "regenerate_every must be >= 0")
        check(min(self.batch_size, self.online_batch_size, self.val_batch_size) > 0, "batch sizes must be > 0")
        check(self.model_lr > 0 and self.gamma > 0 and self.bmo_tau > 0, "model_lr, gamma, bmo_tau must be > 0")
        check(self.model_lr_end is None or self.model_lr_end > 0, "model_lr_end must be > 0")
        check(self.bmo_scope in ("question", "batch", "round"), "bmo_scope must be 'question', 'batch' or 'round'")
        check(self.bmo_form in ("softmax", "sparsemax"), "bmo_form must be 'softmax' or 'sparsemax'")
        check(self.bmo_reduction in ("sum", "mean"), "bmo_reduction must be 'sum' or 'mean'")
        check(self.bmo_refresh in ("step", "generation"), "bmo_refresh must be 'step' or 'generation'")
        check(0 <= self.bmo_min_ess <= 1, "bmo_min_ess must be in [0, 1]")
        check(self.bmo_min_ess == 0 or self.bmo_refresh == "generation",
              "bmo_min_ess needs bmo_refresh 'generation' (set bmo_min_ess 0 with the 'step' refresh)")
        check(self.online_sampling in ("uniform", "weighted"), "online_sampling must be 'uniform' or 'weighted'")
        check(self.online_sampling == "uniform" or (self.bmo_refresh == "generation" and self.bmo_scope != "batch"),
               "online_sampling 'weighted' needs bmo_refresh 'generation' and bmo_scope 'round' or 'question' "
               "(set online_sampling 'uniform' otherwise)")
        check(self.bmo_gap in ("models", "val_step"), "bmo_gap must be 'models' or 'val_step'")
        check(self.bmo_gap == "models" or self.bmo_refresh == "generation", "bmo_gap 'val_step' needs bmo_refresh "
               "'generation' (one validation step per generation, not per training step)")
        check(self.lower_data in ("all", "kept"), "lower_data must be 'all' or 'kept'")
        check(self.importance_clip >= 0, "importance_clip must be >= 0")

    def lr_at(self, round_: int) -> float:
        """The learning rate of a round (0-based), ramped linearly from ``model_lr`` to ``model_lr_end``."""
        return ramp(self.model_lr, self.model_lr_end, round_, self.rounds)
