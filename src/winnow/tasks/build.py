"""The built-in tasks: a pool with hidden good/bad labels, a trusted validation set and a test set.

Both tasks are built offline from the asset wheels (see ``sources``) and split by prompt, so
no prompt is in two of pool, validation and test. The build is deterministic for a seed:
every random choice comes from a generator seeded by the task name, the seed and its purpose.

Pool examples carry the hidden ground truth in ``metadata["label"]`` (``"good"``/``"bad"``)
and ``metadata["kind"]``; only evaluation may read them.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from winnow.data import Example
from winnow.errors import WinnowError
from winnow.judge import is_refusal
from winnow.metrics import auroc
from winnow.tasks.corrupt import cut_to_words, ends_sentence, fragment, sentences, word_count
from winnow.tasks.refusals import write_refusal
from winnow.tasks.sources import (
    Pair,
    advbench_prompts,
    chatterbot_pairs,
    donotanswer_prompts,
    harmbench_prompts,
    harmful_compliances,
    norm_prompt,
)


@dataclass
class Task:
    """A built-in task: the pool to curate, the trusted validation set and the held-out test set."""

    name: str
    pool: list[Example]
    """Pairs to weigh; each has ``metadata["label"]`` (hidden truth) and ``metadata["kind"]``."""
    val: list[Example]
    """Trusted validation pairs."""
    test: list[Example]
    """Held-out test pairs (safety: ``metadata["harmful"]`` says which prompts are harmful)."""
    description: str
    seed: int = 0


@dataclass(frozen=True)
class Sizes:
    """How many examples each part of a task gets."""

    pool: int
    val: int
    test: int
    bad_share: float
    """Share of bad pairs in the pool."""

    def __post_init__(self) -> None:
        if min(self.pool, self.val, self.test) < 0:
            raise WinnowError(f"sizes must not be negative: {self}")
        if not 0.0 <= self.bad_share <= 1.0:
            raise WinnowError(f"bad_share must be in [0, 1], got {self.bad_share}")

    @property
    def n_bad(self) -> int:
        return round(self.pool * self.bad_share)


TASKS: dict[str, str] = {
    "safety": "benign chatterbot Q&A mixed with harmful requests answered compliantly; validation: refusals "
    "of Do-Not-Answer prompts plus benign pairs; test: AdvBench/HarmBench prompts plus benign pairs",
    "quality": "benign chatterbot Q&A where a share of responses is corrupted (another question's answer, "
    "a fragment, off-topic text); validation and test: clean pairs",
}
DEFAULT_SIZES: dict[str, Sizes] = {
    "safety": Sizes(pool=160, val=32, test=96, bad_share=0.25),
    "quality": Sizes(pool=160, val=32, test=64, bad_share=0.25),
}
MIN_HARMFUL_WORDS = 3
"""Harmful responses are cut to a benign-like length, but never below this many words."""
FRAGMENT_MIN_WORDS = 6
"""Only responses at least this long are cut into fragments."""


def build_task(
    name: str,
    *,
    seed: int = 0,
    pool_size: int | None = None,
    val_size: int | None = None,
    test_size: int | None = None,
    bad_share: float | None = None,
) -> Task:
    """Build a built-in task (``TASKS`` lists them); ``None`` sizes take ``DEFAULT_SIZES``.

    ``val_size`` and ``test_size`` are totals; for ``safety`` half of each (rounded down) are
    harmful prompts. Raises ``WinnowError`` for an unknown task or sizes beyond the data.
    """
    if name not in TASKS:
        raise WinnowError(f"unknown task {name!r}; built-in tasks: {', '.join(TASKS)}")
    d = DEFAULT_SIZES[name]
    sizes = Sizes(
        pool=d.pool if pool_size is None else pool_size,
        val=d.val if val_size is None else val_size,
        test=d.test if test_size is None else test_size,
        bad_share=d.bad_share if bad_share is None else bad_share,
    )
    task = (_safety if name == "safety" else _quality)(sizes, seed)
    check_disjoint(task)
    return task


def _rng(task: str, seed: int, purpose: str) -> random.Random:
    return random.Random(f"{task}:{seed}:{purpose}")  # str seeds hash with SHA-512: stable across runs


# --- shared pieces ----------------------------------------------------------------------------


def _benign_split(rng: random.Random, n_val: int, n_test: int) -> tuple[list[Pair], list[Pair], list[list[Pair]]]:
    """Group the benign pairs by prompt and shuffle the groups: one pair per group for test, then
    for validation; the remaining groups (each shuffled) are left for the pool."""
    groups: dict[str, list[Pair]] = {}
    for p in chatterbot_pairs():
        groups.setdefault(norm_prompt(p.prompt), []).append(p)
    keys = list(groups)
    rng.shuffle(keys)
    if n_val + n_test > len(keys):
        raise WinnowError(f"validation + test need {n_val + n_test} benign prompts; the corpus has {len(keys)}")
    test = [rng.choice(groups[k]) for k in keys[:n_test]]
    val = [rng.choice(groups[k]) for k in keys[n_test : n_test + n_val]]
    rest = [groups[k][:] for k in keys[n_test + n_val :]]
    for g in rest:
        rng.shuffle(g)
    return val, test, rest


def _round_robin(groups: list[list[Pair]], n: int) -> list[Pair]:
    """``n`` pairs: one from every group first, then second ones, and so on (prompt diversity)."""
    out: list[Pair] = []
    depth = 0
    while len(out) < n:
        layer = [g[depth] for g in groups if len(g) > depth]
        if not layer:
            raise WinnowError(f"the pool needs {n} benign pairs; only {len(out)} are left after validation and test")
        out += layer[: n - len(out)]
        depth += 1
    return out


def _take(items: list[Pair], n: int, what: str) -> list[Pair]:
    if n > len(items):
        raise WinnowError(f"{n} {what} requested; only {len(items)} available")
    return items[:n]


def _shuffled(items: list[Pair], rng: random.Random) -> list[Pair]:
    items = list(items)
    rng.shuffle(items)
    return items


def _pool_example(prompt: str, response: str, label: str, kind: str) -> Example:
    return Example.from_pair(prompt, response, metadata={"label": label, "kind": kind})


def _finish(name: str, seed: int, pool: list[Example], val: list[Example], test: list[Example]) -> Task:
    rng = _rng(name, seed, "order")
    for part in (pool, val, test):
        rng.shuffle(part)
    return Task(name, pool, val, test, TASKS[name], seed)


# --- safety -----------------------------------------------------------------------------------


def _safety(s: Sizes, seed: int) -> Task:
    n_val_harm, n_test_harm = s.val // 2, s.test // 2
    val_b, test_b, rest = _benign_split(_rng("safety", seed, "benign"), s.val - n_val_harm, s.test - n_test_harm)
    good = _round_robin(rest, s.pool - s.n_bad)

    rng = _rng("safety", seed, "test")
    n_hb = n_test_harm // 2
    test_h = _take(_shuffled(harmbench_prompts(), rng), n_hb, "HarmBench test prompts")
    test_h += _take(_shuffled(advbench_prompts(), rng), n_test_harm - n_hb, "AdvBench test prompts")
    # HarmBench's behaviours also occur among the many-shot prompts: hold the test ones out.
    held_out = {norm_prompt(p.prompt) for p in test_h}

    rng = _rng("safety", seed, "harmful")
    # Match the benign responses' lengths and how often they end a sentence, so neither tells them apart.
    lengths = [word_count(p.response) for p in (good or chatterbot_pairs())]
    closed = sum(ends_sentence(p.response) for p in (good or chatterbot_pairs())) / len(lengths)
    bad: list[Example] = []
    for p in _shuffled(harmful_compliances(), rng):
        if len(bad) == s.n_bad:
            break
        if norm_prompt(p.prompt) in held_out or is_refusal(p.response):
            continue  # a refusal among the "compliances" would be a mislabelled bad pair
        cut = cut_to_words(p.response, max(MIN_HARMFUL_WORDS, rng.choice(lengths)), close=rng.random() < closed)
        if not is_refusal(cut):
            bad.append(_pool_example(p.prompt, cut, "bad", "harmful_compliance"))
    if len(bad) < s.n_bad:
        raise WinnowError(f"the pool needs {s.n_bad} harmful pairs; only {len(bad)} are available")

    rng = _rng("safety", seed, "refusals")
    val_h = _take(_shuffled(donotanswer_prompts(), _rng("safety", seed, "val")), n_val_harm, "Do-Not-Answer prompts")
    val = [Example.from_pair(p.prompt, write_refusal(p.category, rng),
                             metadata={"harmful": True, "dataset": "donotanswer", "category": p.category})
           for p in val_h]
    val += [_benign(p) for p in val_b]
    test = [Example.from_pair(p.prompt, write_refusal(None, rng), metadata={"harmful": True, "dataset": p.category})
            for p in test_h]
    test += [_benign(p) for p in test_b]
    pool = [_pool_example(p.prompt, p.response, "good", "benign") for p in good] + bad
    return _finish("safety", seed, pool, val, test)


def _benign(p: Pair) -> Example:
    return Example.from_pair(p.prompt, p.response,
                             metadata={"harmful": False, "dataset": "chatterbot", "category": p.category})


# --- quality ----------------------------------------------------------------------------------

QUALITY_KINDS = ("swapped", "fragment", "off_topic")


def _quality(s: Sizes, seed: int) -> Task:
    val_b, test_b, rest = _benign_split(_rng("quality", seed, "benign"), s.val, s.test)
    chosen = _round_robin(rest, s.pool)
    donors = [p for g in rest for p in g]  # never a validation or test pair
    group_responses: dict[str, set[str]] = {}
    for p in chatterbot_pairs():
        group_responses.setdefault(norm_prompt(p.prompt), set()).add(p.response)

    rng = _rng("quality", seed, "corrupt")
    kinds = [QUALITY_KINDS[i % len(QUALITY_KINDS)] for i in range(s.n_bad)]
    rng.shuffle(kinds)
    order = list(range(len(chosen)))
    rng.shuffle(order)
    bad: dict[int, Example] = {}
    for kind in kinds:
        i = next((i for i in order if i not in bad and (kind != "fragment" or
                  word_count(chosen[i].response) >= FRAGMENT_MIN_WORDS)), None)
        if i is None:
            raise WinnowError(f"not enough pool pairs to corrupt {s.n_bad} of {s.pool}")
        p = chosen[i]
        right = group_responses[norm_prompt(p.prompt)]  # every answer the corpus has for this prompt
        wrong = [d for d in donors if d.category != p.category and d.response not in right]
        if kind == "swapped":
            text = rng.choice(wrong).response
        elif kind == "fragment":
            text = fragment(p.response, rng.uniform(0.3, 0.6))
        else:
            text = rng.choice([t for d in wrong for t in sentences(d.response)[1:] if word_count(t) >= 3])
        bad[i] = _pool_example(p.prompt, text, "bad", kind)
    pool = [bad.get(i) or _pool_example(p.prompt, p.response, "good", "clean") for i, p in enumerate(chosen)]
    val = [Example.from_pair(p.prompt, p.response, metadata={"category": p.category}) for p in val_b]
    test = [Example.from_pair(p.prompt, p.response, metadata={"category": p.category}) for p in test_b]
    return _finish("quality", seed, pool, val, test)


# --- checks -----------------------------------------------------------------------------------


def check_disjoint(task: Task) -> None:
    """Raise unless no prompt is shared between pool, validation and test, and pool ids are unique."""
    parts = {k: {norm_prompt(e.prompt) for e in getattr(task, k)} for k in ("pool", "val", "test")}
    for a, b in (("pool", "val"), ("pool", "test"), ("val", "test")):
        if parts[a] & parts[b]:
            raise WinnowError(f"task {task.name}: {len(parts[a] & parts[b])} prompt(s) shared by {a} and {b}")
    if len({e.id for e in task.pool}) != len(task.pool):
        raise WinnowError(f"task {task.name}: duplicate pool ids")


def length_auroc(pool: list[Example], *, of: str = "response") -> float:
    """AUROC of the word count of each pair's ``response`` (or ``prompt``) for telling bad (positive)
    from good pool pairs; 0.5 = no signal."""
    return auroc([word_count(getattr(e, of)) for e in pool], [e.metadata["label"] == "bad" for e in pool])


def summary(task: Task) -> dict[str, object]:
    """Counts, shares and the length check of a task (no example text)."""
    labels = Counter(e.metadata["label"] for e in task.pool)
    out: dict[str, object] = {
        "task": task.name,
        "seed": task.seed,
        "pool": len(task.pool),
        "val": len(task.val),
        "test": len(task.test),
        "bad_share": labels["bad"] / len(task.pool) if task.pool else 0.0,
        "kinds": dict(sorted(Counter(e.metadata["kind"] for e in task.pool).items())),
    }
    if labels["bad"] and labels["good"]:
        out["length_auroc"] = round(length_auroc(task.pool), 4)
        out["prompt_length_auroc"] = round(length_auroc(task.pool, of="prompt"), 4)
    for part in ("val", "test"):
        harmful = [e for e in getattr(task, part) if "harmful" in e.metadata]
        if harmful:
            out[f"{part}_harmful"] = sum(bool(e.metadata["harmful"]) for e in harmful)
    return out
