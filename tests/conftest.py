"""Shared fixtures: a tiny Llama and tokenizer built in process, and small data files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from winnow.data import Example
from winnow.models import build_tiny

torch.set_num_threads(2)


def arithmetic_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Distinct, deterministic question/answer pairs with a learnable pattern."""
    rng = random.Random(seed)
    seen: set[tuple[int, int]] = set()
    while len(seen) < n:
        seen.add((rng.randint(0, 60), rng.randint(0, 60)))
    return [(f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.") for a, b in sorted(seen, key=str)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def corpus() -> list[tuple[str, str]]:
    return arithmetic_pairs(96)


@pytest.fixture(scope="session")
def tiny_pair(corpus):
    """(model, tokenizer) of the tiny Llama; tests must not train this shared copy in place."""
    texts = [t for pair in corpus for t in pair]
    return build_tiny(texts, seed=0)


@pytest.fixture
def tiny(tiny_pair):
    """A fresh copy of the tiny model (safe to train) and the shared tokenizer."""
    import copy

    model, tok = tiny_pair
    return copy.deepcopy(model), tok


@pytest.fixture
def examples(corpus) -> list[Example]:
    return [Example.from_pair(q, a) for q, a in corpus]


@pytest.fixture
def data_files(tmp_path, corpus) -> tuple[Path, Path]:
    rows = [{"prompt": q, "completion": a} for q, a in corpus]
    return write_jsonl(tmp_path / "train.jsonl", rows[:80]), write_jsonl(tmp_path / "val.jsonl", rows[80:])
