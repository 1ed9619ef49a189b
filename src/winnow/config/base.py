"""What several stages share: model options, the config check, and the learning-rate ramp."""

from __future__ import annotations

import dataclasses
from typing import TypeVar

from winnow.errors import WinnowError

C = TypeVar("C")


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
        check(self.max_length >= 8, "max_length must be >= 8")
        check(self.truncation in ("drop", "left", "right"), "truncation must be 'drop', 'left' or 'right'")
        check(self.train_on in ("all", "last"), "train_on must be 'all' or 'last'")
        check(self.lora_r > 0, "lora_r must be > 0")
        check(self.lora_layers >= 0, "lora_layers must be >= 0")

    def targets(self) -> str | list[str]:
        """``lora_targets`` as peft expects it."""
        if self.lora_targets == "all-linear":
            return "all-linear"
        return [t.strip() for t in self.lora_targets.split(",") if t.strip()]


def check(ok: bool, message: str) -> None:
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
