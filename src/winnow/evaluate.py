"""Evaluation: refusal rates, reference loss, selection quality and win rate of a fine-tuned model.

Run: ``winnow eval --model runs/sft --test test.jsonl --out runs/eval`` or call ``evaluate``.

The metric functions are pure over their inputs (a generator, a model, score and label maps);
``evaluate_model`` combines them, ``write_eval`` and ``evaluate`` do the I/O. Responses to harmful
prompts go to ``generations.jsonl`` only, never to logs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from winnow.config import EvalConfig, ModelOptions
from winnow.config_io import from_dict, to_dict
from winnow.data import Example, read_examples, read_scores
from winnow.errors import WinnowError
from winnow.generation.base import Generator, SamplingParams
from winnow.io import read_jsonl, write_json, write_jsonl
from winnow.judge import is_refusal, judge_accuracy, refusal_score
from winnow.loading import load_trained
from winnow.manifest import DONE, is_done, run_info
from winnow.metrics import auroc
from winnow.prepare import encode_for_training
from winnow.step import dataset_losses

log = logging.getLogger(__name__)

Row = dict[str, Any]

TIE_TOLERANCE = 1e-9
"""A pair score this close to 0.5 is a tie (rounding in the two-order average)."""


class PairwiseJudge(Protocol):
    """Compares two responses to one prompt."""

    def prefer(self, prompt: str, a: str, b: str) -> float:
        """How much ``a`` is better than ``b``, in [0, 1]: 1 = ``a``, 0 = ``b``, 0.5 = a tie."""
        ...


@dataclass
class EvalResult:
    """What an evaluation measured: flat metrics and one row per generated response."""

    metrics: dict[str, float]
    rows: list[Row]
    """Per test prompt: ``id``, ``harmful``, ``refusal`` (None when not judged), ``refusal_score``,
    ``finish_reason``, ``response`` (and ``win`` when a win rate was computed)."""
    judge: dict[str, float] = field(default_factory=dict)
    """Accuracy, precision, recall and ``n`` of the refusal judge on PyRIT's human labels."""
    config: EvalConfig | None = None


# --- refusal rate -----------------------------------------------------------------------------


def refusal_rate(generator: Generator, examples: Sequence[Example], params: SamplingParams) -> tuple[float, list[Row]]:
    """Share of ``examples`` whose generated response is a refusal (``judge.is_refusal``, given the prompt).

    One batched ``generate`` call over every example's prompt messages (evaluation passes greedy
    ``params``). A ``too_long`` completion (the prompt does not fit the model) is not judged: its
    row has ``refusal=None`` and it is left out of the rate. The rate is NaN when nothing was judged.
    """
    if params.n != 1:
        raise ValueError("refusal_rate judges one response per prompt; use params.n == 1")
    if not examples:
        return math.nan, []
    outputs = generator.generate([ex.prompt_messages for ex in examples], params)
    if len(outputs) != len(examples):
        raise WinnowError(f"the generator returned {len(outputs)} results for {len(examples)} prompts")
    rows = []
    for ex, completions in zip(examples, outputs, strict=True):
        c = completions[0]
        judged = c.finish_reason != "too_long"
        score = refusal_score(c.text, ex.prompt) if judged else None
        rows.append({"id": ex.id, "harmful": bool(ex.metadata.get("harmful", False)),
                     "refusal": is_refusal(c.text, ex.prompt) if judged else None, "refusal_score": score,
                     "finish_reason": c.finish_reason, "response": c.text})
    return _rate(rows), rows


def _rate(rows: Sequence[Row]) -> float:
    judged = [r["refusal"] for r in rows if r["refusal"] is not None]
    return sum(judged) / len(judged) if judged else math.nan


# --- reference loss ---------------------------------------------------------------------------


def reference_loss(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[Example],
    options: ModelOptions,
    device: torch.device | str | None = None,
    *,
    batch_size: int = 16,
) -> float:
    """Mean over ``examples`` of each one's token-mean response NLL (``step.dataset_losses``).

    Examples too long for ``options.max_length`` are dropped (or cut, per ``options.truncation``)
    exactly as in training. ``device``: the model's own when ``None``.
    """
    enc = encode_for_training(tokenizer, examples, options)
    if not enc.items:
        raise WinnowError(f"no example to compute a loss on ({len(examples)} given, {len(enc.dropped)} dropped)")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    losses = dataset_losses(model, enc, pad_id=tokenizer.pad_token_id, batch_size=batch_size, device=device)
    return float(losses.mean())


# --- selection quality ------------------------------------------------------------------------


def selection_quality(scores: Mapping[str, float], labels: Mapping[str, str], keep_top: float) -> dict[str, float]:
    """How well scores separate good pool pairs from bad ones, over the ids that have both.

    ``auroc``: chance a good pair scores above a bad one. The top ``round(keep_top·n)`` by score
    are kept (ties broken by id, as ``select(top=keep_top)`` does); the rest are rejected.
    ``rejected_precision``: share of bad among the rejected; ``rejected_recall``: share of the bad
    that were rejected; ``bad_in_kept``: share of bad among the kept. A key whose ratio is
    undefined (nothing rejected, no bad pair, one class only) is left out.

    >>> q = selection_quality({"a": 3, "b": 2, "c": 1, "d": 0}, {"a": "good", "b": "bad", "c": "good",
    ...                       "d": "bad"}, keep_top=0.5)
    >>> q["auroc"], q["rejected_precision"], q["rejected_recall"], q["bad_in_kept"]
    (0.75, 0.5, 0.5, 0.5)
    """
    if not 0 < keep_top <= 1:
        raise ValueError(f"keep_top must be in (0, 1], got {keep_top}")
    unknown = sorted({v for v in labels.values()} - {"good", "bad"})
    if unknown:
        raise ValueError(f"labels must be 'good' or 'bad', got {unknown}")
    ids = sorted((i for i in labels if i in scores), key=lambda i: (-scores[i], i))
    if not ids:
        raise ValueError("no labelled id has a score; were the scores computed for another pool?")
    n = len(ids)
    k = math.floor(keep_top * n + 0.5)
    bad = {i for i in ids if labels[i] == "bad"}
    kept, rejected = ids[:k], ids[k:]
    caught = sum(i in bad for i in rejected)
    out: dict[str, float] = {"n": n, "n_unscored": len(labels) - n, "n_bad": len(bad),
                             "n_kept": len(kept), "n_rejected": len(rejected), "bad_share": len(bad) / n}
    if 0 < len(bad) < n:
        out["auroc"] = auroc([scores[i] for i in ids], [i not in bad for i in ids])
    if rejected:
        out["rejected_precision"] = caught / len(rejected)
    if bad:
        out["rejected_recall"] = caught / len(bad)
    if kept:
        out["bad_in_kept"] = sum(i in bad for i in kept) / len(kept)
    return out


# --- win rate ---------------------------------------------------------------------------------


def pairwise_scores(prompts: Sequence[str], ours: Sequence[str], theirs: Sequence[str],
                    judge: PairwiseJudge) -> list[float]:
    """Per prompt, how much ``ours`` beats ``theirs`` in [0, 1], judged in both orders and averaged
    (``(prefer(p, ours, theirs) + 1 − prefer(p, theirs, ours)) / 2``), which cancels position bias."""
    if not len(prompts) == len(ours) == len(theirs):
        raise ValueError(f"lengths differ: {len(prompts)} prompts, {len(ours)} ours, {len(theirs)} theirs")
    out = []
    for p, a, b in zip(prompts, ours, theirs, strict=True):
        first, second = float(judge.prefer(p, a, b)), float(judge.prefer(p, b, a))
        if not (0 <= first <= 1 and 0 <= second <= 1):
            raise ValueError(f"judge preferences must be in [0, 1], got {first} and {second}")
        out.append((first + (1 - second)) / 2)
    return out


def win_rate(prompts: Sequence[str], ours: Sequence[str], theirs: Sequence[str],
             judge: PairwiseJudge) -> dict[str, float]:
    """Mean of ``pairwise_scores`` (``win_rate``; 0.5 = even), with counts of wins (> 0.5), losses and ties (0.5).

    >>> class First:
    ...     def prefer(self, prompt, a, b): return 1.0
    >>> win_rate(["q"], ["x"], ["y"], First())["win_rate"]
    0.5
    """
    return _win_summary(pairwise_scores(prompts, ours, theirs, judge))


def _win_summary(s: Sequence[float]) -> dict[str, float]:
    if not s:
        raise ValueError("win_rate needs at least one prompt")
    tie = [abs(v - 0.5) <= TIE_TOLERANCE for v in s]
    return {"win_rate": sum(s) / len(s), "wins": sum(v > 0.5 and not t for v, t in zip(s, tie, strict=True)),
            "losses": sum(v < 0.5 and not t for v, t in zip(s, tie, strict=True)), "ties": sum(tie), "n": len(s)}


# --- one model --------------------------------------------------------------------------------


@functools.cache
def _cached_judge_accuracy() -> tuple[tuple[str, float], ...]:
    return tuple(judge_accuracy().items())


def subsample(examples: Sequence[Example], limit: int | None, seed: int) -> list[Example]:
    """At most ``limit`` examples, chosen by a seeded hash of their ids (independent of file order),
    kept in their given order.

    >>> exs = [Example.from_pair(f"q{i}", "a", id=str(i)) for i in range(10)]
    >>> [e.id for e in subsample(exs, 3, seed=0)] == [e.id for e in subsample(exs[::-1], 3, seed=0)][::-1]
    True
    """
    if limit is None or len(examples) <= limit:
        return list(examples)
    key = {ex.id: hashlib.sha256(f"{seed}:{ex.id}".encode()).hexdigest() for ex in examples}
    chosen = set(sorted(key, key=key.__getitem__)[:limit])
    return [ex for ex in examples if ex.id in chosen]


def evaluate_model(
    model: torch.nn.Module,
    tokenizer: Any,
    test: Sequence[Example],
    config: EvalConfig,
    *,
    generator: Generator | None = None,
    scores: Mapping[str, float] | None = None,
    labels: Mapping[str, str] | None = None,
    judge: PairwiseJudge | None = None,
    reference_outputs: Mapping[str, str] | None = None,
) -> EvalResult:
    """Evaluate a loaded model on test pairs (``metadata["harmful"]`` marks harmful prompts).

    Metrics: ``harmful_refusal_rate`` (safety; higher is safer), ``benign_refusal_rate``
    (over-refusal), ``benign_loss`` (mean NLL of the benign reference responses), ``refusal_loss``
    (of the harmful prompts' reference refusals), the judge's accuracy, counts; with ``scores`` and
    ``labels`` (pool id -> ``good``/``bad``) ``selection_*``; with ``judge`` and
    ``reference_outputs`` (test id -> another model's response) ``win_*`` over the prompts that
    have a reference. A task without harmful prompts (``quality``) gets only the benign metrics.

    ``config.limit`` keeps at most that many harmful and that many benign prompts (``subsample``).
    ``generator``: the Hugging Face backend over ``model`` when ``None``.
    """
    if (judge is None) != (reference_outputs is None):
        raise WinnowError("a win rate needs both a pairwise judge and reference outputs")
    if (scores is None) != (labels is None):
        raise WinnowError("selection quality needs both scores and labels")
    harmful = subsample([ex for ex in test if ex.metadata.get("harmful") is True], config.limit, config.seed)
    benign = subsample([ex for ex in test if ex.metadata.get("harmful") is not True], config.limit, config.seed)
    metrics: dict[str, float] = {"n_test": len(test), "n_harmful": len(harmful), "n_benign": len(benign)}

    # --- generation and refusals ----------------------------------------------------------------
    generator = generator if generator is not None else _default_generator(model, tokenizer, config)
    params = SamplingParams(max_new_tokens=config.max_new_tokens, temperature=0.0, n=1, seed=config.seed)
    _, rows = refusal_rate(generator, harmful + benign, params)
    for name, part in (("harmful", rows[: len(harmful)]), ("benign", rows[len(harmful):])):
        if part:
            metrics[f"n_{name}_too_long"] = sum(r["refusal"] is None for r in part)
            if not math.isnan(rate := _rate(part)):  # NaN: every prompt too long, nothing judged
                metrics[f"{name}_refusal_rate"] = rate

    # --- losses of the reference responses ------------------------------------------------------
    for name, part in (("benign_loss", benign), ("refusal_loss", harmful)):
        if part:
            try:
                metrics[name] = reference_loss(model, tokenizer, part, config, batch_size=config.batch_size)
            except WinnowError as e:  # every pair too long for max_length: say so, keep the other metrics
                log.warning("no %s: %s", name, e)

    # --- judge, selection, win rate -------------------------------------------------------------
    try:
        judge_acc = dict(_cached_judge_accuracy())
        metrics.update({f"judge_{k}": v for k, v in judge_acc.items() if k != "n"})
    except WinnowError as e:
        log.warning("refusal judge accuracy unavailable: %s", e)
        judge_acc = {}
    if scores is not None and labels is not None:
        quality = selection_quality(scores, labels, config.keep_top)
        metrics.update({f"selection_{k}": v for k, v in quality.items()})
    if judge is not None and reference_outputs is not None:
        metrics.update(_win_metrics(rows, harmful + benign, reference_outputs, judge))
    log.info("eval: %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
    return EvalResult(metrics, rows, judge_acc, config)


def _win_metrics(rows: list[Row], examples: Sequence[Example], refs: Mapping[str, str],
                 judge: PairwiseJudge) -> dict[str, float]:
    """Win rate over the judged rows with a reference output; adds each row's ``win``."""
    pairs = [(r, ex) for r, ex in zip(rows, examples, strict=True) if r["refusal"] is not None and ex.id in refs]
    if not pairs:
        log.warning("no test prompt has a reference output: no win rate")
        return {}
    s = pairwise_scores([ex.prompt for _, ex in pairs], [r["response"] for r, _ in pairs],
                        [refs[ex.id] for _, ex in pairs], judge)
    for (r, _), v in zip(pairs, s, strict=True):
        r["win"] = v
    return {k if k == "win_rate" else f"win_{k}": v for k, v in _win_summary(s).items()}


def _default_generator(model: Any, tokenizer: Any, config: EvalConfig) -> Generator:
    try:
        from winnow.generation.hf import HFGenerator
    except ImportError as e:
        raise WinnowError("no generator given and the Hugging Face backend (winnow.generation.hf) "
                          f"cannot be imported: {e}") from e
    device = next(model.parameters()).device
    return HFGenerator(model, tokenizer, device=device, batch_size=config.batch_size)


# --- I/O: the stage -----------------------------------------------------------------------------


def write_eval(result: EvalResult, out: str | Path) -> None:
    """Write ``results.json`` (metrics, judge accuracy, config), ``generations.jsonl`` and ``done.json`` last."""
    out = Path(out)
    config = to_dict(result.config) if result.config is not None else {}
    write_json(out / "results.json", {"metrics": result.metrics, "judge": result.judge, "config": config})
    write_jsonl(out / "generations.jsonl", result.rows)
    write_json(out / DONE, {**run_info("eval", config), "metrics": result.metrics})


def load_eval(out: str | Path) -> EvalResult:
    """Read back what ``write_eval`` wrote."""
    out = Path(out)
    data = json.loads((out / "results.json").read_text(encoding="utf-8"))
    config = from_dict(EvalConfig, data["config"]) if data.get("config") else None
    return EvalResult(data["metrics"], read_jsonl(out / "generations.jsonl"), data.get("judge", {}), config)


def evaluate(
    model: str | Path,
    test: str | Path | Sequence[Example],
    config: EvalConfig,
    out: str | Path,
    *,
    generator: Generator | None = None,
    scores: Mapping[str, float] | str | Path | None = None,
    labels: Mapping[str, str] | str | Path | None = None,
    judge: PairwiseJudge | None = None,
    reference_outputs: Mapping[str, str] | str | Path | None = None,
) -> EvalResult:
    """Evaluate a saved model on a test file and write the results under ``out`` (the ``eval`` stage).

    ``model`` is loaded by ``load_trained`` (a ``winnow train`` folder, a model folder or a built-in
    name). ``scores``: a ``weights.jsonl`` (its ``score``, else ``weight``) or a map; ``labels``: a
    ``pool_labels.jsonl`` or a map; ``reference_outputs``: another evaluation's ``generations.jsonl``
    or a map of test id -> response. A folder with ``done.json`` is not evaluated again.
    """
    out = Path(out)
    if is_done(out):
        log.info("%s is already complete; nothing to do", out)
        return load_eval(out)
    examples = read_examples(test) if isinstance(test, str | Path) else list(test)
    lm, tokenizer = load_trained(model, config, texts=[m["content"] for ex in examples for m in ex.messages])
    if isinstance(scores, str | Path):
        scores = read_scores(scores)
    result = evaluate_model(lm, tokenizer, examples, config, generator=generator, scores=scores,
                            labels=read_labels(labels) if isinstance(labels, str | Path) else labels,
                            judge=judge, reference_outputs=_references(reference_outputs))
    write_eval(result, out)
    return result


def read_labels(path: str | Path) -> dict[str, str]:
    """``{id: label}`` from a ``pool_labels.jsonl`` (rows ``{"id", "label", "kind"}``)."""
    return {str(r["id"]): str(r["label"]) for r in read_jsonl(path)}


def _references(refs: Mapping[str, str] | str | Path | None) -> Mapping[str, str] | None:
    if not isinstance(refs, str | Path):
        return refs
    return {str(r["id"]): r["response"] for r in read_jsonl(refs) if r.get("finish_reason") != "too_long"}
