"""The generation seam: one protocol with one batched call (STYLE §8).

Backends (``hf``, ``vllm``, ``fake``) take chat prompts and sampling parameters and return, per
prompt, the generated texts with the sampler's per-token log-probabilities, so the online loop
can correct stale samples (DESIGN §1.4) without a second pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from winnow.data.example import Message

FinishReason = Literal["stop", "length", "empty", "too_long"]
"""``stop``: ended at end-of-turn/EOS; ``length``: hit ``max_new_tokens``; ``empty``: no text;
``too_long``: the prompt does not fit the model's context (nothing generated)."""


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``temperature == 0`` means greedy decoding."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    """Responses per prompt (``G`` of DESIGN §1.4)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.n < 1:
            raise ValueError("n must be >= 1")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Completion:
    """One generated response."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    """Generated token ids (end-of-turn token included when it was produced)."""
    logprobs: list[float] = field(default_factory=list)
    """Sampler log-probability of each generated token (same length as ``token_ids``)."""
    finish_reason: FinishReason = "stop"


class Generator(Protocol):
    """Anything that turns chat prompts into completions in one batched call."""

    def generate(self, prompts: Sequence[Sequence[Message]], params: SamplingParams) -> list[list[Completion]]:
        """For each prompt (its messages, ending with a user turn), ``params.n`` completions."""
        ...
