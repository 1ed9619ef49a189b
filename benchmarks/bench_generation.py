"""Generation throughput of `HFGenerator`: batched against one prompt at a time.

Run (from the repository root):

    .venv/bin/python benchmarks/bench_generation.py [--prompts 16] [--max-new-tokens 64] [--repeats 3]

SmolLM2-135M-Instruct (``load_model("smollm2-135m")``, fp32 on the CPU, 2 torch threads)
answers the first ``--prompts`` benign test questions of the built-in safety task (those
whose metadata says ``harmful: False``), greedy, ``--max-new-tokens`` new tokens at most.
Both modes run the same `HFGenerator.generate` call on the same prompts, with ``batch_size``
equal to the number of prompts (batched) or 1 (one at a time); the runs alternate inside one
process after one short warm-up. Timed: the whole ``generate`` call (rendering, tokenising,
``model.generate``, decoding). Counted: generated tokens (stop tokens included, padding of
finished rows not). Prints a markdown section for ``benchmarks/RESULTS.md``; prompt texts
are never printed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import datetime, timezone

import torch
import transformers
from _results import git_commit

from winnow.generation import Completion, HFGenerator, SamplingParams
from winnow.models import load_model
from winnow.tasks import build_task

CPU = torch.device("cpu")


def benign_prompts(n: int) -> list[list[dict[str, str]]]:
    """The first ``n`` benign test questions of the safety task, as chat prompts."""
    test = build_task("safety", seed=0).test
    benign = [ex for ex in test if ex.metadata.get("harmful") is False]
    if len(benign) < n:
        raise SystemExit(f"only {len(benign)} benign test questions, asked for {n}")
    return [list(ex.prompt_messages) for ex in benign[:n]]


def timed(gen: HFGenerator, prompts: list, params: SamplingParams) -> tuple[float, list[list[Completion]]]:
    start = time.perf_counter()
    out = gen.generate(prompts, params)
    return time.perf_counter() - start, out


def tokens(out: list[list[Completion]]) -> int:
    return sum(len(c.token_ids) for comps in out for c in comps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)

    model, tok = load_model("smollm2-135m", device=CPU, dtype=torch.float32)
    prompts = benign_prompts(args.prompts)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0)
    modes = {
        "batched": HFGenerator(model, tok, device=CPU, batch_size=len(prompts)),
        "one at a time": HFGenerator(model, tok, device=CPU, batch_size=1),
    }
    load_start = os.getloadavg()[0]
    for gen in modes.values():  # warm-up: first-call allocations and lazy initialisation
        gen.generate(prompts[:2], SamplingParams(max_new_tokens=4, temperature=0))

    seconds: dict[str, list[float]] = {name: [] for name in modes}
    outputs: dict[str, list[list[Completion]]] = {}
    for r in range(args.repeats):
        for name, gen in modes.items():
            s, outputs[name] = timed(gen, prompts, params)
            seconds[name].append(s)
            print(f"repeat {r + 1}/{args.repeats} {name}: {s:.1f} s, {tokens(outputs[name])} tokens", flush=True)
    load_end = os.getloadavg()[0]
    print(render(args, seconds, outputs, load_start, load_end))


def render(args: argparse.Namespace, seconds: dict[str, list[float]], outputs: dict[str, list[list[Completion]]],
           load_start: float, load_end: float) -> str:
    """The markdown section: context lines, the table and the ratio."""
    rate = {name: tokens(outputs[name]) / statistics.median(s) for name, s in seconds.items()}
    same = sum(a[0].token_ids == b[0].token_ids for a, b in zip(*outputs.values(), strict=True))
    commit = git_commit()
    lines = [
        "## bench_generation",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, torch threads 2, fp32; 1-min load average "
        f"{load_start:.2f} at the start, {load_end:.2f} at the end (the machine is shared)",
        f"- versions: python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}",
        f"- commit: {commit} (working tree may hold uncommitted changes)",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "- command: `.venv/bin/python benchmarks/bench_generation.py`",
        f"- SmolLM2-135M-Instruct, {args.prompts} benign safety-task test questions, greedy, "
        f"max_new_tokens {args.max_new_tokens}, median of {args.repeats} alternating repeats",
        "",
        "| mode | batch size | generated tokens | s (median) | min–max s | tokens/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in seconds.items():
        size = args.prompts if name == "batched" else 1
        lines.append(f"| {name} | {size} | {tokens(outputs[name])} | {statistics.median(s):.1f} | "
                     f"{min(s):.1f}–{max(s):.1f} | {rate[name]:.0f} |")
    ratio = rate["batched"] / rate["one at a time"]
    lines += ["", f"Batched ÷ one at a time: **{ratio:.1f}×** (target ≥ 4×). "
              f"Identical greedy completions in both modes: {same} of {args.prompts}."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
