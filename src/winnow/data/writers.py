"""Write examples back in the standard SFT format (plus ``weight``), atomically."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from winnow.data.example import Example
from winnow.io import write_jsonl


def to_record(ex: Example, **extra: Any) -> dict[str, Any]:
    """The on-disk record of one example: its shape, id, weight, provenance and extra fields.

    >>> to_record(Example.from_pair("Q", "A", id="1"))
    {'id': '1', 'prompt': 'Q', 'completion': 'A', 'weight': 1.0, 'source': 'original'}
    """
    rec: dict[str, Any] = {"id": ex.id}
    msgs = list(ex.messages)
    if ex.layout == "messages":
        rec["messages"] = msgs
    elif len(msgs) == 2 and msgs[0]["role"] == "user":
        rec["prompt"], rec["completion"] = msgs[0]["content"], msgs[1]["content"]
    else:  # conversational prompt-completion, as TRL reads it
        rec["prompt"], rec["completion"] = msgs[:-1], msgs[-1:]
    rec["weight"] = ex.weight
    rec["source"] = ex.source
    if ex.parent_id is not None:
        rec["parent_id"] = ex.parent_id
    rec.update(ex.metadata)
    rec.update(extra)
    return rec


def write_examples(path: str | Path, examples: Iterable[Example]) -> None:
    """Write examples as JSON lines in the standard format, atomically."""
    write_jsonl(path, (to_record(ex) for ex in examples))
