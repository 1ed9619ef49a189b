"""What ``winnow validate`` reports: counts, duplicates, token lengths, drops and truncations."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from winnow.data.batching import epoch_batches, padding_fraction
from winnow.data.formatting import TrainOn, Truncation, encode_all
from winnow.data.readers import LoadedData


def inspect_data(
    data: LoadedData,
    tokenizer: Any,
    *,
    max_length: int,
    truncation: Truncation = "right",
    train_on: TrainOn = "all",
    batch_size: int = 8,
) -> dict[str, Any]:
    """Tokenise without training and summarise what training would see."""
    enc = encode_all(tokenizer, data.examples, max_length=max_length, truncation=truncation, train_on=train_on)
    lengths = enc.lengths
    targets = [e.n_targets for e in enc.items]
    layouts = Counter(ex.layout for ex in data.examples)
    turns = Counter(sum(m["role"] == "assistant" for m in ex.messages) > 1 for ex in data.examples)
    report: dict[str, Any] = {
        "file": data.path,
        "records": data.records,
        "examples": len(data.examples),
        "duplicates_dropped": len(data.duplicates),
        "duplicate_locations": [f"{data.unit} {a} = {data.unit} {b}" for a, b, _ in data.duplicates[:10]],
        "layouts": dict(layouts),
        "multi_turn": turns.get(True, 0),
        "trainable": len(enc.items),
        "dropped": len(enc.dropped),
        "drop_reasons": dict(Counter(_reason_kind(r) for _, r in enc.dropped)),
        "truncated": len(enc.truncated),
        "max_length": max_length,
    }
    if lengths:
        report["tokens"] = _stats(lengths)
        report["response_tokens"] = _stats(targets)
        batches = epoch_batches(lengths, batch_size, seed=0, epoch=0)
        report["padding_fraction"] = round(padding_fraction(lengths, batches), 4)
        report["padding_fraction_ungrouped"] = round(
            padding_fraction(lengths, epoch_batches(lengths, batch_size, seed=0, epoch=0, group_by_length=False)), 4
        )
    return report


def _stats(values: list[int]) -> dict[str, float]:
    s = sorted(values)
    return {
        "min": s[0],
        "median": statistics.median(s),
        "p95": s[min(len(s) - 1, int(0.95 * len(s)))],
        "max": s[-1],
        "total": sum(s),
    }


def _reason_kind(reason: str) -> str:
    return reason.split(" (")[0]


def format_report(report: dict[str, Any]) -> str:
    """Human-readable lines of an ``inspect_data`` report."""
    lines = [
        f"file: {report['file']}",
        f"records: {report['records']}  examples: {report['examples']}  "
        f"duplicates dropped: {report['duplicates_dropped']}",
    ]
    lines += [f"  duplicate: {d}" for d in report["duplicate_locations"]]
    lines.append(f"layouts: {report['layouts']}  multi-turn: {report['multi_turn']}")
    for key in ("tokens", "response_tokens"):
        if key in report:
            s = report[key]
            lines.append(f"{key}: min {s['min']}  median {s['median']}  p95 {s['p95']}  max {s['max']}  "
                         f"total {s['total']}")
    lines.append(f"max_length {report['max_length']}: trainable {report['trainable']}  dropped {report['dropped']} "
                 f"{report['drop_reasons'] or ''}  truncated {report['truncated']}")
    if "padding_fraction" in report:
        lines.append(f"padding fraction: {report['padding_fraction']:.1%} with length grouping, "
                     f"{report['padding_fraction_ungrouped']:.1%} without")
    return "\n".join(lines)
