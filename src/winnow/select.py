"""Selection over saved scores: top fraction, top-k or threshold -> kept and rejected-with-reason.

Cheap and separate from weighting, so choosing another budget never retrains.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from winnow.data import Example
from winnow.data.writers import to_record
from winnow.errors import WinnowError
from winnow.io import write_json, write_jsonl


@dataclass
class Selection:
    """Examples kept and rejected, each with its score and rank (1 = best)."""

    kept: list[Example]
    rejected: list[Example]
    rank: dict[str, int]
    score: dict[str, float]
    rule: str

    def reason(self, ex: Example) -> str:
        """Why an example was rejected, in words."""
        return f"rank {self.rank[ex.id]} of {len(self.rank)}, score {self.score[ex.id]:.4g}: outside {self.rule}"


def select(
    examples: Sequence[Example],
    scores: Mapping[str, float],
    *,
    top: float | None = None,
    top_k: int | None = None,
    threshold: float | None = None,
) -> Selection:
    """Keep the best-scored examples under exactly one budget rule.

    ``top``: the ``round(top·N)`` highest scores; ``top_k``: the ``k`` highest; ``threshold``:
    every score ``>= threshold``. Ties are broken by id, so a selection is deterministic.

    >>> exs = [Example.from_pair(f"q{i}", "a", id=str(i)) for i in range(5)]
    >>> s = select(exs, {"0": 0.1, "1": 2.0, "2": 1.0, "3": 1.0, "4": 0.5}, top=0.6)
    >>> [e.id for e in s.kept], [e.id for e in s.rejected]
    (['1', '2', '3'], ['4', '0'])
    """
    rules = [r for r in (top, top_k, threshold) if r is not None]
    if len(rules) != 1:
        raise WinnowError("give exactly one of --top, --top-k or --threshold")
    missing = [ex.id for ex in examples if ex.id not in scores]
    if missing:
        raise WinnowError(f"{len(missing)} of {len(examples)} examples have no score (first: {missing[:3]}); "
                          "were the weights computed for another pool?")
    order = sorted(examples, key=lambda ex: (-scores[ex.id], ex.id))
    rank = {ex.id: i + 1 for i, ex in enumerate(order)}
    n = len(order)
    if top is not None:
        if not 0 < top <= 1:
            raise WinnowError(f"--top must be in (0, 1], got {top}")
        k, rule = math.floor(top * n + 0.5), f"top {top:.0%} ({math.floor(top * n + 0.5)} of {n})"
    elif top_k is not None:
        if top_k < 0:
            raise WinnowError(f"--top-k must be >= 0, got {top_k}")
        k, rule = min(top_k, n), f"top {top_k}"
    else:
        k, rule = sum(scores[ex.id] >= threshold for ex in order), f"score >= {threshold}"
    return Selection(order[:k], order[k:], rank, {ex.id: float(scores[ex.id]) for ex in order}, rule)


def write_selection(sel: Selection, out: str | Path, weights: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Write ``kept.jsonl`` (with each example's weight) and ``rejected.jsonl`` (with reasons)."""
    out = Path(out)
    w = weights or {}

    def rec(ex: Example, **extra: Any) -> dict[str, Any]:
        ex = dataclasses.replace(ex, weight=float(w.get(ex.id, ex.weight)))
        return to_record(ex, rank=sel.rank[ex.id], score=sel.score[ex.id], **extra)

    write_jsonl(out / "kept.jsonl", (rec(ex) for ex in sel.kept))
    write_jsonl(out / "rejected.jsonl", (rec(ex, reason=sel.reason(ex)) for ex in sel.rejected))
    summary = {"rule": sel.rule, "kept": len(sel.kept), "rejected": len(sel.rejected)}
    write_json(out / "selection.json", summary)
    return summary
