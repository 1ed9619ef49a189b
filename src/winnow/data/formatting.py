"""Chat formatting and loss masks: labels on assistant tokens only, end-of-turn included.

Each conversation is rendered with the tokenizer's chat template (or ``PLAIN_TEMPLATE`` when
it has none) and cut into alternating context / target pieces: the target of assistant turn
``k`` is what ``render(messages[:k+1])`` adds after ``render(messages[:k], add_generation_prompt=True)``,
so the template's own end-of-turn token is a target and the model learns to stop. Pieces are
tokenised separately, which is exactly how a prompt is tokenised at generation time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from winnow.data.example import Example
from winnow.errors import WinnowError
from winnow.losses import IGNORE_INDEX

PLAIN_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% else %}Assistant: {{ m['content'] }}{{ eos_token }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant: {% endif %}"
)
"""Fallback template for tokenizers without one: ``User: …`` / ``Assistant: …<eos>``."""

Truncation = Literal["drop", "left", "right"]
TrainOn = Literal["all", "last"]


@dataclass(frozen=True)
class Encoded:
    """Token ids and labels of one example (labels are ``IGNORE_INDEX`` off-target)."""

    input_ids: list[int]
    labels: list[int]
    cut: int = 0
    """Tokens removed by truncation: ``> 0`` from the left (context), ``< 0`` from the right (the
    response's end); 0: untouched."""

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_targets(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


@dataclass
class EncodedSet:
    """Encoded examples aligned with the positions of the examples they came from."""

    items: list[Encoded]
    index: list[int]
    """``items[j]`` encodes ``examples[index[j]]``."""
    dropped: list[tuple[str, str]] = field(default_factory=list)
    """(example id, reason) for each example that will not be trained on."""
    truncated: list[tuple[str, int]] = field(default_factory=list)
    """(example id, ``Encoded.cut``) for each example that was shortened."""

    @property
    def lengths(self) -> list[int]:
        return [len(e) for e in self.items]


def render(tokenizer: Any, messages: Sequence[dict[str, str]], *, generation_prompt: bool) -> str:
    """Render messages with the tokenizer's chat template, or the plain fallback."""
    template = None if getattr(tokenizer, "chat_template", None) else PLAIN_TEMPLATE
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=generation_prompt, chat_template=template
    )


def render_prompt(tokenizer: Any, ex: Example) -> str:
    """The text a model continues to answer ``ex``: its context plus the assistant header."""
    return render(tokenizer, ex.prompt_messages, generation_prompt=True)


def pieces(tokenizer: Any, messages: Sequence[dict[str, str]], train_on: TrainOn = "all") -> list[tuple[str, bool]]:
    """Cut a rendered conversation into (text, is_target) pieces.

    Raises:
        WinnowError: the chat template is not prefix-consistent, so masks cannot be derived.
    """
    full = render(tokenizer, messages, generation_prompt=False)
    turns = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    if train_on == "last":
        turns = turns[-1:]
    out: list[tuple[str, bool]] = []
    cursor = 0
    for k in turns:
        head = render(tokenizer, messages[:k], generation_prompt=True)
        upto = render(tokenizer, messages[: k + 1], generation_prompt=False)
        if not (upto.startswith(head) and full.startswith(upto) and len(head) >= cursor):
            raise WinnowError(
                "the chat template does not render conversations prefix-consistently, so the "
                "response tokens cannot be located; pass a model whose template does"
            )
        out.append((full[cursor : len(head)], False))
        out.append((full[len(head) : len(upto)], True))
        cursor = len(upto)
    if cursor < len(full):
        out.append((full[cursor:], False))
    return [p for p in out if p[0]]


def encode(
    tokenizer: Any,
    ex: Example,
    *,
    max_length: int,
    truncation: Truncation = "right",
    train_on: TrainOn = "all",
) -> Encoded | str:
    """Encode one example, or return the reason it cannot be trained on.

    Over-long examples are dropped (``truncation="drop"``), have their context cut from the
    left (``"left"``; the final response is never cut, so one that does not fit alone is
    dropped), or keep their first ``max_length`` tokens (``"right"``, TRL's default: the
    response's end is cut; dropped only when no response token is left).
    """
    first = pieces(tokenizer, ex.messages, train_on)
    ids: list[int] = leading_bos(tokenizer, first[0][0])
    labels: list[int] = [IGNORE_INDEX] * len(ids)
    last_target_start = 0
    for text, target in first:
        toks = tokenizer(text, add_special_tokens=False)["input_ids"]
        if target:
            last_target_start = len(ids)
        ids += toks
        labels += toks if target else [IGNORE_INDEX] * len(toks)
    if not any(t != IGNORE_INDEX for t in labels):
        return "no response tokens"
    if len(ids) <= max_length:
        return Encoded(ids, labels)
    if truncation == "drop":
        return f"too long ({len(ids)} tokens > max_length {max_length})"
    cut = len(ids) - max_length
    if truncation == "right":
        if all(t == IGNORE_INDEX for t in labels[:max_length]):
            return f"too long ({len(ids)} tokens > max_length {max_length}) with no response token within it"
        return Encoded(ids[:max_length], labels[:max_length], cut=-cut)
    if cut >= last_target_start:
        return f"response alone does not fit in max_length {max_length}"
    return Encoded(ids[cut:], labels[cut:], cut=cut)


def encode_all(
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    max_length: int,
    truncation: Truncation = "right",
    train_on: TrainOn = "all",
) -> EncodedSet:
    """Encode every example, keeping track of what was dropped or truncated and why."""
    out = EncodedSet([], [])
    for i, ex in enumerate(examples):
        enc = encode(tokenizer, ex, max_length=max_length, truncation=truncation, train_on=train_on)
        if isinstance(enc, str):
            out.dropped.append((ex.id, enc))
            continue
        out.items.append(enc)
        out.index.append(i)
        if enc.cut:
            out.truncated.append((ex.id, enc.cut))
    return out


def leading_bos(tokenizer: Any, text: str) -> list[int]:
    """``[BOS]`` when the tokenizer would prepend it itself and the rendered ``text`` lacks it, else ``[]``.

    Rendered text is tokenised without special tokens; this puts back the one BOS the
    tokenizer expects, never a second one after a template that writes its own. Training
    (``encode``) and generation prompts both use it, so they see the same ids.
    """
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None or (tokenizer.bos_token and text.startswith(tokenizer.bos_token)):
        return []
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return [bos] if ids and ids[0] == bos else []


def first_targets(data: EncodedSet, k: int | Sequence[int]) -> EncodedSet:
    """A copy whose labels keep only each example's first ``k`` target tokens (``k[j]`` for item ``j``).

    >>> s = first_targets(EncodedSet([Encoded([1, 2, 3, 4], [IGNORE_INDEX, 2, 3, 4])], [0]), 2)
    >>> s.items[0].labels
    [-100, 2, 3, -100]
    """
    ks = [k] * len(data.items) if isinstance(k, int) else list(k)
    items = []
    for e, k in zip(data.items, ks, strict=True):
        labels, seen = [], 0
        for t in e.labels:
            keep = t != IGNORE_INDEX and seen < k
            seen += t != IGNORE_INDEX
            labels.append(t if keep else IGNORE_INDEX)
        items.append(Encoded(e.input_ids, labels, e.cut))
    return EncodedSet(items, list(data.index), list(data.dropped), list(data.truncated))
