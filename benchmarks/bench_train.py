"""Training throughput of Winnow's weighted fine-tune against TRL's ``SFTTrainer``.

Run (from the repository root):

    .venv/bin/python benchmarks/bench_train.py [--quick] [--repeats 3] [--no-write]

Both trainers get the same model weights and tokenizer (one local folder), the same
prompt/completion JSONL, batch size 8, max length 256, the same number of optimizer steps
(exactly one epoch: the data holds ``steps * 8`` examples), lr 2e-4 with a cosine schedule,
fp32 on the CPU, no evaluation, no checkpoints, no gradient accumulation; for SmolLM2 the
same LoRA adapter (r 16, alpha 32, dropout 0, all linear layers). Runs alternate inside one
process (winnow, trl, trl-grouped, winnow, ...) after one short warm-up run of each.

What is timed, on both sides: the training loop only, from just before the first batch
is collated to the end of the last optimizer step (Winnow: ``elapsed_s`` of the last row
of ``metrics.jsonl``; TRL: a callback's ``on_train_begin`` to the last ``on_step_end``).
Model loading, tokenisation and saving are outside. What is counted: non-padding input
tokens of the batches trained on (Winnow: ``tokens`` of ``metrics.jsonl``, the batch's
attention-mask sum; TRL: the attention-mask sum of every batch its own collator built).

The table is printed and written to ``benchmarks/RESULTS.md`` under ``## bench_train``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
import yaml
from _results import RESULTS, git_commit, replace_section

BATCH_SIZE = 8
LR = 2e-4
WARMUP = 0.05
"""Winnow's default warm-up share; TRL gets the same number of warm-up steps."""
SEED = 0
LENGTH_MARGIN = 8
"""Examples are kept only if they fit in ``max_length - LENGTH_MARGIN`` tokens, so neither
trainer drops or truncates any (they tokenise prompt/completion boundaries separately)."""
SECTION = "## bench_train"


@dataclass(frozen=True)
class Setup:
    """One model configuration benchmarked."""

    name: str
    model: str
    """``tiny`` (built here and saved) or ``smollm2-135m``."""
    lora: bool
    steps: int
    trainers: tuple[str, ...]
    """Winnow first; the ratio column divides by its median."""
    warm_steps: int = 2
    max_length: int = 256


@dataclass
class Run:
    """One timed training run."""

    trainer: str
    loop_s: float
    """Seconds of the training loop (see the module docstring)."""
    tokens: int
    """Non-padding input tokens trained on."""
    padded_tokens: int
    """Tokens of the padded batches (rows times the batch's longest row)."""
    losses: list[float]
    """Training loss of every optimizer step."""
    outer_s: float
    """Seconds of the whole call (``finetune`` with load and save; ``trainer.train()``)."""

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.loop_s

    @property
    def padding(self) -> float:
        return 1.0 - self.tokens / self.padded_tokens if self.padded_tokens else 0.0


# --- data ---------------------------------------------------------------------------------------


def corpus_pairs() -> list[tuple[str, str]]:
    """(statement, reply) pairs of the chatterbot corpus shipped in its wheel (never imported).

    >>> len(corpus_pairs()) > 1000
    True
    """
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("bench_train needs the chatterbot-corpus wheel (make install)")
    root = Path(next(iter(spec.submodule_search_locations))) / "data" / "english"
    pairs = []
    for path in sorted(root.glob("*.yml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conv in doc.get("conversations") or []:
            turns = [str(t).strip() for t in conv if t is not None and str(t).strip()]
            pairs += list(pairwise(turns))
    return pairs


def make_records(n: int, seed: int = SEED) -> list[dict[str, Any]]:
    """``n`` distinct conversational prompt/completion records with a long-tailed length spread.

    The answer is a corpus reply followed by a log-uniform number (0-39) of other replies, and
    a third of the prompts carry a few replies as context, so most examples are short and a
    few are long, as in real SFT data. Deterministic in ``seed``.

    >>> r = make_records(3)
    >>> r == make_records(3), sorted(r[0]), r[0]["completion"][0]["role"]
    (True, ['completion', 'prompt'], 'assistant')
    """
    rng = random.Random(seed)
    pairs = corpus_pairs()
    replies = [a for _, a in pairs]
    seen: set[tuple[str, str]] = set()
    out: list[dict[str, Any]] = []
    while len(out) < n:
        question, reply = rng.choice(pairs)
        extra = int(math.exp(rng.uniform(0.0, math.log(40.0)))) - 1
        answer = " ".join([reply, *rng.sample(replies, extra)])
        if rng.random() < 1 / 3:
            question = " ".join(rng.sample(replies, rng.randint(1, 8))) + "\n\n" + question
        if (question, answer) in seen:
            continue
        seen.add((question, answer))
        out.append({"prompt": [{"role": "user", "content": question}],
                    "completion": [{"role": "assistant", "content": answer}]})
    return out


def fitting(records: Sequence[dict[str, Any]], tokenizer: Any, max_length: int, n: int) -> list[dict[str, Any]]:
    """The first ``n`` records whose Winnow encoding fits in ``max_length - LENGTH_MARGIN`` tokens."""
    from winnow.data import Example
    from winnow.data.formatting import encode

    out = []
    for rec in records:
        ex = Example.from_pair(rec["prompt"][0]["content"], rec["completion"][0]["content"])
        if not isinstance(encode(tokenizer, ex, max_length=max_length - LENGTH_MARGIN), str):
            out.append(rec)
            if len(out) == n:
                return out
    raise SystemExit(f"only {len(out)} of {n} examples fit in {max_length} tokens; raise the pool size")


def model_folder(setup: Setup, records: Sequence[dict[str, Any]], tmp: Path) -> Path:
    """A local model folder both trainers load: the tiny model built once, or cached SmolLM2."""
    from winnow import models

    if setup.model == "smollm2-135m":
        return models.smollm2_path()
    texts = [m["content"] for rec in records for m in (*rec["prompt"], *rec["completion"])]
    model, tokenizer = models.build_tiny(texts, seed=SEED)
    folder = tmp / f"{setup.name}-model"
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def write_data(setup: Setup, tmp: Path) -> tuple[Path, Path, list[int]]:
    """Build the model folder and the JSONL of exactly ``steps * 8`` examples; return their Winnow lengths."""
    from transformers import AutoTokenizer

    from winnow.data import Example
    from winnow.data.formatting import encode

    n = setup.steps * BATCH_SIZE
    pool = make_records(4 * n + 64)
    folder = model_folder(setup, pool, tmp)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    records = fitting(pool, tokenizer, setup.max_length, n)
    path = tmp / f"{setup.name}.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    lengths = [len(encode(tokenizer, Example.from_pair(r["prompt"][0]["content"], r["completion"][0]["content"]),
                          max_length=setup.max_length)) for r in records]  # type: ignore[arg-type]
    return folder, path, lengths


# --- the two trainers ---------------------------------------------------------------------------


def run_winnow(setup: Setup, folder: Path, data: Path, steps: int, out: Path) -> Run:
    """Winnow's ``finetune`` (what ``winnow train`` calls); loop time from its ``metrics.jsonl``."""
    from winnow.config import TrainConfig
    from winnow.data import load_examples
    from winnow.io import read_jsonl
    from winnow.train import finetune

    config = TrainConfig(
        model=str(folder), max_steps=steps, batch_size=BATCH_SIZE, grad_accum=1, lr=LR, warmup=WARMUP,
        max_length=setup.max_length, lora=setup.lora, lora_r=16, lora_alpha=32, lora_dropout=0.0,
        lora_targets="all-linear", save_every=0, log_every=1, seed=SEED,
    )
    examples = load_examples(data).examples
    start = time.perf_counter()
    result = finetune(examples, config, out, progress=False)
    outer = time.perf_counter() - start
    rows = [r for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    report = json.loads((out / "data_report.json").read_text(encoding="utf-8"))
    if result.steps != steps or len(rows) != steps or report["dropped"] or report["truncated"]:
        raise SystemExit(f"winnow run is not the one intended: {result.steps} steps, {len(rows)} rows, {report}")
    tokens = sum(int(r["tokens"]) for r in rows)
    pad = float(report["padding_fraction"])
    # data_report's padding covers the epoch's batches, which are exactly the batches trained on.
    return Run("winnow", rows[-1]["elapsed_s"], tokens, round(tokens / (1.0 - pad)), [r["loss"] for r in rows],
               outer)


class _CountingCollator:
    """Wraps TRL's own collator and records each batch's real and padded token counts."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.batches: list[tuple[int, int]] = []

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(examples)
        mask = batch["attention_mask"]  # (B, T)
        self.batches.append((int(mask.sum()), mask.numel()))
        return batch


def _clock() -> Any:
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        """Wall-clock of the training loop: ``on_train_begin`` and each ``on_step_end``."""

        def __init__(self) -> None:
            self.start = 0.0
            self.ends: list[float] = []

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.ends.append(time.perf_counter())

    return Clock()


def trl_config(setup: Setup, steps: int, out: Path, grouped: bool) -> Any:
    """TRL's settings: ours where the comparison needs them, TRL's defaults elsewhere."""
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(out),
        per_device_train_batch_size=BATCH_SIZE,
        gradient_accumulation_steps=1,
        max_length=setup.max_length,
        max_steps=steps,
        learning_rate=LR,
        lr_scheduler_type="cosine",  # Winnow's schedule, so the losses are comparable
        warmup_steps=int(WARMUP * steps),
        logging_steps=1,  # Winnow logs every step too; gives the per-step losses
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        dataloader_num_workers=0,
        completion_only_loss=True,
        packing=False,
        bf16=False,  # TRL defaults to bf16 autocast; the comparison is fp32
        gradient_checkpointing=False,  # TRL defaults to True; Winnow does not recompute activations
        use_cpu=True,
        seed=SEED,
        disable_tqdm=True,
        model_init_kwargs={"dtype": "float32"},
        train_sampling_strategy="group_by_length" if grouped else "random",
    )


def run_trl(setup: Setup, folder: Path, data: Path, steps: int, out: Path, *, grouped: bool) -> Run:
    """TRL's ``SFTTrainer`` loading the same folder; loop time from a callback."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, PrinterCallback
    from trl import SFTTrainer

    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    peft = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM") if setup.lora else None
    clock = _clock()
    trainer = SFTTrainer(model=str(folder), args=trl_config(setup, steps, out, grouped),
                         train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=peft, callbacks=[clock])
    trainer.remove_callback(PrinterCallback)  # Winnow prints nothing per step either (progress off)
    counter = _CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    start = time.perf_counter()
    trainer.train()
    outer = time.perf_counter() - start
    losses = [float(h["loss"]) for h in trainer.state.log_history if "loss" in h]
    used = counter.batches[:steps]  # accelerate's dataloader looks one batch ahead within an epoch
    if len(clock.ends) != steps or len(losses) != steps or len(used) != steps:
        raise SystemExit(f"trl run is not the one intended: {len(clock.ends)} steps, {len(losses)} losses, "
                         f"{len(counter.batches)} batches")
    tokens = sum(real for real, _ in used)
    if tokens != trainer._total_train_tokens or len(trainer.train_dataset) != len(rows):
        raise SystemExit(f"trl counted {trainer._total_train_tokens} tokens (we counted {tokens}) over "
                         f"{len(trainer.train_dataset)} examples")
    del trainer
    gc.collect()
    return Run("trl-grouped" if grouped else "trl", clock.ends[-1] - clock.start, tokens,
               sum(padded for _, padded in used), losses, outer)


def run_one(trainer: str, setup: Setup, folder: Path, data: Path, steps: int, tmp: Path) -> Run:
    out = Path(tempfile.mkdtemp(prefix=f"{setup.name}-{trainer}-", dir=tmp))
    torch.manual_seed(SEED)
    if trainer == "winnow":
        run = run_winnow(setup, folder, data, steps, out / "run")
    else:
        run = run_trl(setup, folder, data, steps, out, grouped=trainer == "trl-grouped")
    gc.collect()
    return run


# --- benchmark ----------------------------------------------------------------------------------


def bench(setup: Setup, trainers: Sequence[str], repeats: int, tmp: Path) -> dict[str, Any]:
    """Warm up each trainer once (``warm_steps``), then alternate timed runs ``repeats`` times."""
    folder, data, lengths = write_data(setup, tmp)
    print(f"[{setup.name}] {len(lengths)} examples, tokens min/median/max "
          f"{min(lengths)}/{int(statistics.median(lengths))}/{max(lengths)}", flush=True)
    for trainer in trainers:
        run_one(trainer, setup, folder, data, setup.warm_steps, tmp)
    runs: dict[str, list[Run]] = {t: [] for t in trainers}
    for r in range(repeats):
        for trainer in trainers:
            run = run_one(trainer, setup, folder, data, setup.steps, tmp)
            runs[trainer].append(run)
            print(f"[{setup.name}] repeat {r + 1}/{repeats} {trainer:11s} {run.tokens_per_s:8.0f} tok/s "
                  f"loop {run.loop_s:6.2f} s  tokens {run.tokens}  padding {run.padding:.3f}  "
                  f"loss {run.losses[-1]:.4f}", flush=True)
    return {"setup": setup, "lengths": lengths, "runs": runs}


def summary_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per trainer: medians, spread, ratio against Winnow."""
    setup, runs = result["setup"], result["runs"]
    med = {t: statistics.median(r.tokens_per_s for r in rs) for t, rs in runs.items()}
    rows = []
    for trainer, rs in runs.items():
        rows.append({
            "config": f"{setup.name} ({'LoRA r16' if setup.lora else 'full'}, {setup.steps} steps)",
            "trainer": trainer,
            "tok_s": med[trainer],
            "all_tok_s": statistics.median(r.padded_tokens / r.loop_s for r in rs),
            "min": min(r.tokens_per_s for r in rs),
            "max": max(r.tokens_per_s for r in rs),
            "ratio": med["winnow"] / med[trainer] if "winnow" in med else float("nan"),
            "padding": statistics.median(r.padding for r in rs),
            "tokens": statistics.median(r.tokens for r in rs),
            "loop_s": statistics.median(r.loop_s for r in rs),
            "outer_s": statistics.median(r.outer_s for r in rs),
            "loss_last": statistics.median(r.losses[-1] for r in rs),
            "loss_mean": statistics.median(statistics.fmean(r.losses) for r in rs),
        })
    return rows


def table(rows: Sequence[dict[str, Any]]) -> str:
    head = ("| config | trainer | tok/s (median) | min–max | winnow ÷ this | padding | tok/s incl. padding | "
            "tokens | loop s | outer s | loss last step | loss mean |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    return head + "".join(
        f"| {r['config']} | {r['trainer']} | {r['tok_s']:.0f} | {r['min']:.0f}–{r['max']:.0f} | "
        f"{r['ratio']:.2f} | {r['padding']:.1%} | {r['all_tok_s']:.0f} | {r['tokens']:.0f} | {r['loop_s']:.2f} | "
        f"{r['outer_s']:.2f} | "
        f"{r['loss_last']:.3f} | {r['loss_mean']:.3f} |\n" for r in rows)


def machine(command: str, load: tuple[float, float]) -> str:
    import peft
    import transformers
    import trl

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    commit = git_commit()
    return (f"- machine: {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; 1-min load "
            f"average {load[0]:.2f} at the start, {load[1]:.2f} at the end (the machine is shared)\n"
            f"- versions: python {platform.python_version()}, torch {torch.__version__}, transformers "
            f"{transformers.__version__}, trl {trl.__version__}, peft {peft.__version__}\n"
            f"- commit: {commit} (working tree may hold uncommitted changes)\n"
            f"- date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}\n"
            f"- command: `{command}`\n")


NOTES = """\
What is timed and counted (identically for every trainer):

- **timed**: the training loop only. Winnow: `elapsed_s` of the last `metrics.jsonl` row, measured by
  `finetune` from just before its first batch is collated to the end of the last optimizer step (model
  loading, tokenisation, optimizer creation and the final save are outside). TRL: a `TrainerCallback`,
  from `on_train_begin` (after the dataloader, optimizer and accelerator set-up) to the last
  `on_step_end`. `outer s` is the whole call for context: `finetune` including model load, tokenisation
  and save; `trainer.train()` including its set-up.
- **counted**: non-padding input tokens of the batches trained on (the attention-mask sum). Winnow:
  the `tokens` of each `metrics.jsonl` row. TRL: recorded from the batches its own collator builds
  (the collator is wrapped, not replaced). Both train exactly one epoch over the same examples, so the
  token totals agree up to how each tokenises the prompt/completion boundary.
- **padding**: share of the padded batch tensors that is padding. Winnow: `padding_fraction` of
  `data_report.json`; TRL: from the recorded batches. `tok/s incl. padding` counts the padded batch
  tensors instead, which separates per-token compute speed from padding.
- **loss**: per-step training loss, last step and mean over the run. They differ in reduction:
  TRL averages over all completion tokens of the batch, Winnow over each example's completion tokens,
  then over examples (uniform weights here), so long answers weigh more in TRL's number.

Settings shared by both: batch 8, one epoch of `steps × 8` examples (every example fits, none is
dropped or truncated), max length 256, lr 2e-4, cosine schedule with 5% warm-up steps, grad-norm
clipping at 1.0, no weight decay, no gradient accumulation, fp32 on CPU, seed 0, no evaluation, no
checkpoints, logging every step, progress bars off; SmolLM2: LoRA r=16, alpha=32, dropout 0, all linear
layers. Each run starts from the saved weights; one warm-up run of each trainer comes first (2 steps on
tiny, 1 on SmolLM2), then the runs alternate (winnow, trl, trl-grouped, winnow, ...).

TRL 1.16 `SFTConfig` used: `per_device_train_batch_size=8, gradient_accumulation_steps=1, max_length=256,
max_steps=N, learning_rate=2e-4, lr_scheduler_type="cosine", warmup_steps=int(0.05·N), logging_steps=1,
save_strategy="no", eval_strategy="no", report_to="none", dataloader_num_workers=0,
completion_only_loss=True, packing=False, bf16=False, gradient_checkpointing=False, use_cpu=True, seed=0,
disable_tqdm=True, model_init_kwargs={"dtype": "float32"}`, and `train_sampling_strategy` `"random"`
(trl, the default) or `"group_by_length"` (trl-grouped); `peft_config=LoraConfig(...)` for SmolLM2; the
dataset is conversational prompt/completion (`datasets.Dataset.from_list`). TRL defaults that matter:
it pads each batch to its longest example and samples at random (no length grouping) unless
`train_sampling_strategy="group_by_length"`; its defaults `bf16=True` and `gradient_checkpointing=True`
are overridden here (fp32 comparison; Winnow does not recompute activations); its default optimizer is
`adamw_torch_fused`, kept; it computes the loss through its chunked "fused LM head" (on CPU every position
is scored, entropy and top-1 accuracy are computed too, and the logits are recomputed in backward), kept.

trl-grouped runs on tiny only. transformers' `LengthGroupedSampler` sorts mega-batches of
`min(n // (4·batch), 50)` batches, which is 1 batch for SmolLM2's 40 examples (5 steps): it only reorders rows
inside each random batch and moves the longest batch first, so it pads exactly like `trl` there and would
add ~3 minutes for no information (`--only smollm2 --trainers winnow,trl,trl-grouped` runs it). On tiny
(480 examples) it sorts mega-batches of 15 batches, close to Winnow's 16.
"""


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few steps, one repeat each")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per trainer and model (default 3)")
    parser.add_argument("--tiny-steps", type=int, default=60, help="optimizer steps on the tiny model")
    parser.add_argument("--smollm2-steps", type=int, default=5, help="optimizer steps on SmolLM2 + LoRA")
    parser.add_argument("--trainers", help="comma-separated, winnow first (default: winnow,trl,trl-grouped "
                        "on tiny; winnow,trl on SmolLM2, see RESULTS.md)")
    parser.add_argument("--only", choices=["tiny", "smollm2"], help="benchmark one model only")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    # Nothing here may reach a model hub; set before transformers and datasets are first imported.
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(name, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore")
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    repeats = 1 if args.quick else args.repeats
    given = tuple(t.strip() for t in args.trainers.split(",") if t.strip()) if args.trainers else None
    setups = [Setup("tiny", "tiny", lora=False, steps=6 if args.quick else args.tiny_steps,
                    trainers=given or ("winnow", "trl", "trl-grouped")),
              Setup("smollm2-135m", "smollm2-135m", lora=True, steps=2 if args.quick else args.smollm2_steps,
                    trainers=given or ("winnow", "trl"), warm_steps=1)]
    setups = [s for s in setups if args.only is None or s.name.startswith(args.only)]
    command = " ".join([".venv/bin/python", "benchmarks/bench_train.py", *(argv or sys.argv[1:])])
    start, load = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_train-") as tmp:
        rows = [row for s in setups for row in summary_rows(bench(s, s.trainers, repeats, Path(tmp)))]
    body = table(rows)
    print("\n" + body)
    print(f"total {time.perf_counter() - start:.0f} s")
    if not args.no_write:
        replace_section(SECTION, f"{SECTION}\n\n{machine(command, (load, os.getloadavg()[0]))}\n{body}\n{NOTES}")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
