"""The generation seam: one protocol with one batched call (STYLE §8).

Backends (``hf``, ``vllm``, ``fake``) take chat prompts and sampling parameters and return, per
prompt, the generated texts with the sampler's per-token log-probabilities, so the online loop
can correct stale samples (DESIGN §1.4) without a second pass. The helpers at the end are
what every backend shares: prompt tokenisation identical to training's, the end-of-turn ids,
and finish reasons.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from winnow.data.example import Message
from winnow.data.formatting import leading_bos, render
from winnow.smollm2 import IM_END

FinishReason = Literal["stop", "length", "empty", "too_long"]
"""``stop``: ended at end-of-turn/EOS; ``length``: hit ``max_new_tokens``; ``empty``: no
non-space text (takes precedence over the other two);
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


# --- helpers shared by the backends --------------------------------------------------------


def prompt_token_ids(tokenizer: Any, messages: Sequence[Message]) -> list[int]:
    """Token ids of a chat prompt, tokenised exactly as `winnow.data.formatting.encode` does.

    The rendered text is tokenised without special tokens; BOS is prepended only when the
    tokenizer would add it itself and the chat template did not already write it, so a
    prompt never carries two BOS tokens and generation sees the same ids training does.
    """
    text = render(tokenizer, messages, generation_prompt=True)
    return leading_bos(tokenizer, text) + tokenizer(text, add_special_tokens=False)["input_ids"]


def stop_token_ids(tokenizer: Any, extra: int | Sequence[int] | None = None) -> list[int]:
    """End-of-turn ids: ChatML's ``<|im_end|>`` when the vocabulary has it, EOS, and ``extra``."""
    ids: list[int] = []
    im_end = tokenizer.get_vocab().get(IM_END)
    if im_end is not None:
        ids.append(im_end)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    if extra is not None:
        ids += [extra] if isinstance(extra, int) else list(extra)
    return list(dict.fromkeys(ids))


def finish_reason(text: str, stopped: bool) -> FinishReason:
    """``empty`` when the text has no non-space character, else ``stop`` or ``length``."""
    if not text.strip():
        return "empty"
    return "stop" if stopped else "length"


def too_long(n: int) -> list[Completion]:
    """``n`` placeholder completions for a prompt that was not generated for."""
    return [Completion("", finish_reason="too_long") for _ in range(n)]
