"""The end-to-end run: task → weigh → select → refine → fine-tune each arm per seed → eval → report.

Run: ``winnow run --config run.yaml --out runs/demo``. Each stage writes its own folder of the run
directory (DESIGN §4) with a completion marker last; re-running the same command skips finished
stages and resumes the interrupted one from its checkpoint.
"""

from __future__ import annotations

import logging
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from winnow.config import EvalConfig, RefineConfig, RunConfig, TrainConfig, WeighConfig
from winnow.config_io import save_yaml, to_dict
from winnow.data import Example, read_examples, write_examples
from winnow.errors import WinnowError
from winnow.io import atomic_open, read_json, read_jsonl, write_json
from winnow.manifest import DONE, is_done, run_info

log = logging.getLogger(__name__)

METRICS = ("harmful_refusal_rate", "benign_refusal_rate", "benign_loss", "refusal_loss", "val_loss")
"""What the summary compares across arms (those a task does not have are left out)."""


@dataclass
class RunData:
    """The data of a run, as the stages see it; ``labels`` only for evaluation and the oracle."""

    pool: list[Example]
    val: list[Example]
    test: list[Example]
    labels: dict[str, str]
    judge: bool
    """Whether the task has harmful test prompts (so refusals are judged)."""


def run_pipeline(config: RunConfig, out: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Run every stage under ``out`` and return the summary (also ``summary.json``/``summary.md``).

    Finished stages are skipped; an interrupted stage resumes from its checkpoint.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_same_config(config, out)
    t0 = time.perf_counter()
    data = prepare_data(config, out / "task")
    plan = _plan(config, data, out, progress)
    log.info("run %s: %d stages (%s)", out, len(plan), ", ".join(name for name, _ in plan))
    n_arms = sum(name not in ("weigh", "select", "refine") for name, _ in plan)
    arm_times: list[float] = []
    for k, (name, stage) in enumerate(plan, 1):
        left = ""
        if arm_times:  # arms cost about the same each: extrapolate from the finished ones
            remaining = min(n_arms, len(plan) - k + 1)  # the arms come last in the plan
            left = f", about {statistics.fmean(arm_times) * remaining / 60:.1f} min left"
        log.info("stage %d/%d: %s (%.1f min so far%s)", k, len(plan), name, (time.perf_counter() - t0) / 60, left)
        t_stage = time.perf_counter()
        stage()
        if name not in ("weigh", "select", "refine") and time.perf_counter() - t_stage > 1.0:  # not a resumed no-op
            arm_times.append(time.perf_counter() - t_stage)
    summary = summarise(config, out, data, wall_s=time.perf_counter() - t0)
    from winnow.report import write_report

    write_report(out)
    return summary


def _check_same_config(config: RunConfig, out: Path) -> None:
    """A run directory belongs to one config: resuming with another would mix results."""
    path = out / "config.yaml"
    if path.exists():
        import yaml

        old = yaml.safe_load(path.read_text(encoding="utf-8"))
        if old != yaml.safe_load(yaml.safe_dump(to_dict(config))):
            raise WinnowError(f"{out} holds a run with another config; use a new --out or delete it")
    else:
        save_yaml(config, path)


def prepare_data(config: RunConfig, folder: Path) -> RunData:
    """Build (or read back) the task: ``pool.jsonl`` without labels, labels apart, val, test."""
    if config.task is not None:
        if not is_done(folder):
            from winnow.tasks import DEFAULT_SIZES, build_task, export_task

            d = DEFAULT_SIZES[config.task]
            task = build_task(config.task, seed=config.task_seed, pool_size=config.pool_size or d.pool,
                              val_size=config.val_size or d.val, test_size=config.test_size or d.test)
            export_task(task, folder)
            write_json(folder / DONE, {"task": config.task, "seed": config.task_seed})
        pool, val, test = (read_examples(folder / f"{n}.jsonl") for n in ("pool", "val", "test"))
        labels = {r["id"]: r["label"] for r in read_jsonl(folder / "pool_labels.jsonl")}
    else:
        pool, val, test = read_examples(config.pool), read_examples(config.val), read_examples(config.test)
        labels = {}
        if config.labels:
            from winnow.evaluate import read_labels

            labels = read_labels(config.labels)
        if not is_done(folder):
            write_examples(folder / "pool.jsonl", pool)
            if labels:
                from winnow.io import write_jsonl

                write_jsonl(folder / "pool_labels.jsonl", ({"id": i, "label": v, "kind": v} for i, v in labels.items()))
            write_json(folder / DONE, {"pool": config.pool, "val": config.val, "test": config.test})
    if not val:
        raise WinnowError("the validation set is empty")
    judge = any(ex.metadata.get("harmful") for ex in test)
    return RunData(pool, val, test, labels, judge)


def _plan(config: RunConfig, data: RunData, out: Path, progress: bool) -> list[tuple[str, Any]]:
    """The stages this config needs, in order, each a no-argument callable."""
    arms = [a for a in config.arms if a != "oracle" or data.labels]
    if len(arms) < len(config.arms):
        log.warning("no pool labels: the oracle arm is skipped")
    plan: list[tuple[str, Any]] = []
    if any(a in ("bds", "bds_refine") for a in arms):
        plan.append(("weigh", lambda: weigh_stage(config, data, out, progress)))
        plan.append(("select", lambda: select_stage(config, data, out)))
    if "bds_refine" in arms:
        plan.append(("refine", lambda: refine_stage(config, data, out, progress)))
    for arm in arms:
        for seed in config.seeds:
            run = lambda arm=arm, seed=seed: arm_stage(config, data, out, arm, seed, progress)  # noqa: E731
            plan.append((f"{arm} (seed {seed})", run))
    return plan


# --- stages -----------------------------------------------------------------------------------


def weigh_stage(config: RunConfig, data: RunData, out: Path, progress: bool = True) -> dict[str, float]:
    from winnow.weigh import weigh

    wc = config.stage("weigh", WeighConfig)
    if not is_done(out / "weigh"):
        save_yaml(wc, _mkdir(out / "weigh") / "config.yaml")
    return weigh(data.pool, data.val, wc, out / "weigh", progress=progress)


def _weights(out: Path) -> dict[str, float]:
    return {r["id"]: float(r["weight"]) for r in read_jsonl(out / "weigh" / "weights.jsonl")}


def _scores(out: Path) -> dict[str, float]:
    """Selection scores by id; examples the weighing could not encode rank last."""
    return {r["id"]: float(r["score"]) if r["score"] is not None else float("-inf")
            for r in read_jsonl(out / "weigh" / "weights.jsonl")}


def select_stage(config: RunConfig, data: RunData, out: Path) -> None:
    from winnow.select import select, write_selection

    folder = out / "select"
    if is_done(folder):
        return
    sel = select(data.pool, _scores(out), top=config.keep_top)
    summary = write_selection(sel, folder, _weights(out))
    if data.labels:
        from winnow.evaluate import selection_quality

        summary["quality"] = selection_quality(_scores(out), data.labels, config.keep_top)
        write_json(folder / "quality.json", summary["quality"])
    write_json(folder / DONE, {**run_info("select", {"keep_top": config.keep_top}), **summary})


def refine_stage(config: RunConfig, data: RunData, out: Path, progress: bool = True) -> None:
    from winnow.refine import refine

    rc = config.stage("refine", RefineConfig)
    judge = None
    if data.judge:
        from winnow.judge import is_refusal

        judge = lambda text, prompt: is_refusal(text, prompt=prompt)  # noqa: E731
    lower = out / "weigh" / "lower"  # absent in runs weighed before it was saved: φ then starts as θ
    refine(data.pool, data.val, _weights(out), rc, out / "refine", start=out / "weigh" / "upper",
           start_lower=lower if lower.exists() else None, judge=judge, progress=progress)


def arm_data(config: RunConfig, data: RunData, out: Path, arm: str, seed: int) -> list[Example]:
    """What an arm fine-tunes on; every arm also sees the trusted validation pairs (DESIGN §1.2).

    ``direct``: the whole pool; ``bds``: the kept pairs; ``bds_refine``: the kept pairs plus the
    regenerated responses with their BMO weights; ``oracle``: the pool's good pairs (labels);
    ``random``: as many pool pairs as BDS keeps, drawn by the seed.
    """
    uniform = lambda exs: [replace(ex, weight=1.0) for ex in exs]  # noqa: E731
    n_keep = int(config.keep_top * len(data.pool) + 0.5)
    if arm == "direct":
        chosen = uniform(data.pool)
    elif arm == "bds":
        chosen = uniform(read_examples(out / "select" / "kept.jsonl"))
    elif arm == "bds_refine":
        refined = read_examples(out / "refine" / "refined.jsonl")
        chosen = [replace(ex, weight=1.0) if ex.source == "original" else ex for ex in refined]
    elif arm == "oracle":
        chosen = uniform([ex for ex in data.pool if data.labels.get(ex.id) == "good"])
    elif arm == "random":
        chosen = uniform(random.Random(seed).sample(data.pool, n_keep))
    else:
        raise WinnowError(f"unknown arm {arm!r}")
    return [*chosen, *uniform(data.val)]


def arm_stage(config: RunConfig, data: RunData, out: Path, arm: str, seed: int, progress: bool = True) -> None:
    """Fine-tune one arm with one seed and evaluate it on the test set."""
    from winnow.evaluate import evaluate
    from winnow.train import finetune

    folder = out / "arms" / arm / f"seed{seed}"
    tc = config.stage("train", TrainConfig, seed=seed)
    if tc.max_steps is None:
        raise WinnowError("run config: train.max_steps must be set so every arm gets the same budget")
    finetune(arm_data(config, data, out, arm, seed), tc, folder / "train", val=data.val, progress=progress)
    ec = config.stage("eval", EvalConfig, seed=seed)
    evaluate(folder / "train", data.test, ec, folder / "eval")


# --- summary ----------------------------------------------------------------------------------


def summarise(config: RunConfig, out: Path, data: RunData, *, wall_s: float) -> dict[str, Any]:
    """Mean and spread of each metric per arm over seeds → ``summary.json`` and ``summary.md``."""
    from winnow.evaluate import load_eval
    from winnow.report import summary_markdown

    arms: dict[str, dict[str, Any]] = {}
    judge_acc = None
    for arm in config.arms:
        runs = [out / "arms" / arm / f"seed{s}" for s in config.seeds]
        if not all(is_done(r / "eval") for r in runs):
            continue
        results = [load_eval(r / "eval") for r in runs]
        judge_acc = results[0].judge.get("accuracy", judge_acc)
        for r, res in zip(runs, results, strict=True):
            done = read_jsonl(r / "train" / "metrics.jsonl")
            res.metrics["val_loss"] = next(x["val_loss"] for x in reversed(done) if "val_loss" in x)
        arms[arm] = {m: _spread([res.metrics[m] for res in results]) for m in METRICS
                     if all(m in res.metrics for res in results)}
    summary: dict[str, Any] = {
        "task": config.task or config.pool, "model": config.model, "seeds": list(config.seeds), "arms": arms,
        "judge_accuracy": judge_acc, "wall_s": wall_s, "notes": _notes(config, out, data),
    }
    if (out / "select" / "quality.json").exists():
        summary["selection"] = read_json(out / "select" / "quality.json")
    write_json(out / "summary.json", summary)
    with atomic_open(out / "summary.md") as f:
        f.write(summary_markdown(summary))
    return summary


def _spread(values: Sequence[float]) -> dict[str, Any]:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "values": list(values)}


def _notes(config: RunConfig, out: Path, data: RunData) -> list[str]:
    notes = [f"{len(config.seeds)} fine-tuning seed(s) per arm; std is the sample standard deviation over seeds"]
    if len(config.seeds) < 3:
        notes.append("fewer than 3 seeds: differences between arms may be data-order noise")
    if not data.labels:
        notes.append("no pool labels: no oracle arm and no selection quality")
    return notes


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
