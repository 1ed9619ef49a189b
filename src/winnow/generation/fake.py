"""A deterministic `Generator` for tests: no model, same inputs give the same completions.

Like lm-evaluation-harness's dummy model, it lets the online loop and evaluation be tested
end to end in milliseconds. Responses come from a ``respond`` function of the question, the
completion's index ``k`` and the seed; token ids and log-probabilities are derived from the
text by hashing, so they are stable across processes (Python's ``hash`` is salted; this is not).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from winnow.data.example import Message
from winnow.generation.base import Completion, SamplingParams, finish_reason, stop_token_ids

Respond = Callable[[str, int, int], str]
"""``respond(prompt_text, k, seed) -> response``; ``prompt_text`` is the last user turn."""

RESPONSES = (
    "Sure, here is a short answer.",
    "It depends on the details, but usually yes.",
    "I am not able to help with that request.",
    "The answer is forty-two.",
    "Here are three steps: plan, do, check.",
)
"""What `default_respond` picks from."""

STOP_ID = 0
"""End-of-turn id used without a tokenizer; words get ids from 1 up."""

_WORD_IDS = 50_000


def default_respond(prompt_text: str, k: int, seed: int) -> str:
    """One of `RESPONSES`, picked by a stable hash of the arguments.

    >>> default_respond("Hi?", 0, 0) == default_respond("Hi?", 0, 0)
    True
    """
    return RESPONSES[_hash(prompt_text, k, seed) % len(RESPONSES)]


class FakeGenerator:
    """Deterministic completions from ``respond`` (default: `default_respond`).

    With a tokenizer, token ids are the response's tokens plus its end-of-turn id; without
    one, one id per whitespace word plus `STOP_ID`. Log-probabilities are in ``[-1, -0.1]``,
    fixed by the prompt, ``k``, the seed and the position. Greedy parameters
    (``temperature == 0``) give ``n`` identical completions, as a real greedy decoder does.
    A response longer than ``max_new_tokens`` is cut (``length``); a blank one is ``empty``.

    >>> gen = FakeGenerator(lambda text, k, seed: "two words")
    >>> c = gen.generate([[{"role": "user", "content": "Hi?"}]], SamplingParams(max_new_tokens=8))[0][0]
    >>> c.text, len(c.token_ids), c.token_ids[-1] == STOP_ID, c.finish_reason
    ('two words', 3, True, 'stop')
    """

    def __init__(self, respond: Respond | None = None, *, tokenizer: Any = None) -> None:
        self.respond = respond if respond is not None else default_respond
        self.tokenizer = tokenizer
        self.stop_id = stop_token_ids(tokenizer)[0] if tokenizer is not None else STOP_ID
        self.calls: list[tuple[list[list[Message]], SamplingParams]] = []
        """Every call's prompts and parameters, for tests to inspect."""

    def generate(self, prompts: Sequence[Sequence[Message]], params: SamplingParams) -> list[list[Completion]]:
        """For each prompt, ``params.n`` completions."""
        self.calls.append(([list(p) for p in prompts], params))
        out = []
        for prompt in prompts:
            question = next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")
            ks = [0] * params.n if params.greedy else list(range(params.n))
            out.append([self._complete(question, k, params) for k in ks])
        return out

    def _complete(self, question: str, k: int, params: SamplingParams) -> Completion:
        text = self.respond(question, k, params.seed)
        ids, pieces = self._tokens(text)
        stopped = len(ids) < params.max_new_tokens
        if stopped:
            ids = [*ids, self.stop_id]
        else:
            ids, text = ids[: params.max_new_tokens], self._detokenize(pieces, params.max_new_tokens)
        logprobs = [-0.1 * (1 + _hash(question, k, params.seed, j) % 10) for j in range(len(ids))]
        return Completion(text, ids, logprobs, finish_reason(text, stopped))

    def _tokens(self, text: str) -> tuple[list[int], list[Any]]:
        """Token ids of ``text`` and what `_detokenize` needs to rebuild a prefix."""
        if self.tokenizer is not None:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            return ids, ids
        words = text.split()
        return [1 + _hash(w) % _WORD_IDS for w in words], words

    def _detokenize(self, pieces: list[Any], n: int) -> str:
        if self.tokenizer is not None:
            return self.tokenizer.decode(pieces[:n], skip_special_tokens=True)
        return " ".join(pieces[:n])


def _hash(*parts: object) -> int:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big")
