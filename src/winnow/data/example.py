"""The one record type that flows through every Winnow stage."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Message = dict[str, str]
Layout = Literal["prompt_completion", "messages"]
ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Example:
    """One conversation whose assistant turns are the training targets.

    ``messages`` is the whole conversation; the last message is the assistant response
    that selection and refinement act on. ``layout`` remembers the on-disk shape so a
    written file has the shape the user gave.

    >>> ex = Example.from_pair("Hi?", "Hello.")
    >>> ex.prompt, ex.response, len(ex.id)
    ('Hi?', 'Hello.', 16)
    """

    id: str
    messages: tuple[Message, ...]
    source: str = "original"
    parent_id: str | None = None
    weight: float = 1.0
    metadata: dict[str, Any] = field(default_factory=dict)
    layout: Layout = "prompt_completion"

    @classmethod
    def from_pair(
        cls,
        prompt: str,
        response: str,
        *,
        id: str | None = None,
        system: str | None = None,
        **kwargs: Any,
    ) -> Example:
        """Build a single-turn example; the id defaults to a content hash."""
        messages: list[Message] = [] if system is None else [{"role": "system", "content": system}]
        messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        msgs = tuple(messages)
        return cls(id=id or content_id(msgs), messages=msgs, **kwargs)

    @property
    def prompt_messages(self) -> tuple[Message, ...]:
        """Everything before the final assistant response."""
        return self.messages[:-1]

    @property
    def prompt(self) -> str:
        """Text of the last user turn (the question)."""
        users = [m["content"] for m in self.messages[:-1] if m["role"] == "user"]
        return users[-1] if users else ""

    @property
    def response(self) -> str:
        """Text of the final assistant turn."""
        return self.messages[-1]["content"]

    def with_response(self, response: str, **changes: Any) -> Example:
        """A regenerated copy: same prompt, new response, a fresh content id and this id as parent."""
        msgs = self.messages[:-1] + ({"role": "assistant", "content": response},)
        changes.setdefault("parent_id", self.id)
        changes.setdefault("id", content_id(msgs))
        return replace(self, messages=msgs, **changes)


def content_id(messages: tuple[Message, ...] | list[Message]) -> str:
    """A stable id from the conversation's content alone (16 hex chars of SHA-256).

    >>> content_id([{"role": "user", "content": "a"}]) == content_id([{"content": "a", "role": "user"}])
    True
    """
    canon = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()[:16]


def merge_duplicates(examples: Sequence[Example]) -> list[Example]:
    """Fold exact repeats (same conversation) into their first copy, adding up the weights.

    A model often samples the same response twice (a templated refusal above all); each draw
    carries weight, and a reader drops exact duplicates, so the refined set holds each
    conversation once with the summed weight and ``metadata["copies"]``.

    >>> a = Example.from_pair("q", "no", id="q-r1s0", weight=1.5)
    >>> out = merge_duplicates([a, Example.from_pair("q", "no", id="q-r1s1", weight=0.5),
    ...                         Example.from_pair("q", "yes", id="q-r1s2")])
    >>> [(e.id, e.weight, e.metadata.get("copies")) for e in out]
    [('q-r1s0', 2.0, 2), ('q-r1s2', 1.0, None)]
    """
    first: dict[str, int] = {}
    out: list[Example] = []
    for ex in examples:
        key = content_id(ex.messages)
        if key not in first:
            first[key] = len(out)
            out.append(ex)
            continue
        j = first[key]
        copies = out[j].metadata.get("copies", 1) + 1
        out[j] = replace(out[j], weight=out[j].weight + ex.weight, metadata={**out[j].metadata, "copies": copies})
    return out
