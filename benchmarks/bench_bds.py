"""Selection quality and cost of BDS, its lite variant and every baseline on the built-in tasks.

Run (from the repository root):

    .venv/bin/python benchmarks/bench_bds.py [--tasks safety,quality] [--methods penalty,lite,val_gain,...]
        [--model smollm2-135m] [--rounds 4] [--no-write]
    .venv/bin/python benchmarks/bench_bds.py --cost [--threads 1]    # cost of one BDS round vs plain SFT

Each method runs as its own ``winnow weigh`` process on the task's exported pool and
validation files (so wall time and peak memory are those of the real command). Quality: AUROC of
the scores for good-vs-bad pool pairs (hidden labels from ``pool_labels.jsonl``, read only here)
and precision/recall of the bottom 20 % against the bad set. Cost: wall time and peak RSS of
one BDS round against ``winnow train`` over the same number of optimizer steps and examples.
Results go to ``benchmarks/RESULTS.md`` under ``## bench_bds``.

``--cost`` measures instead, each in a fresh process (so ``ru_maxrss`` is that measurement's own
peak): one BDS round (``steps_per_round`` steps of both models, then the forward-only scoring pass
over the pool), plain weighted SFT over the same ``steps_per_round`` batches, and one weighted-SFT
epoch over the whole pool (the examples the scoring pass reads). Time covers the work only (not
model loading or tokenisation); the peak RSS after set-up is reported next to the overall peak.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _results import git_commit, replace_section

from winnow.config import WeighConfig
from winnow.io import read_jsonl
from winnow.metrics import auroc
from winnow.tasks import build_task, export_task

ROOT = Path(__file__).resolve().parents[1]
WINNOW = [sys.executable, "-m", "winnow.cli"]


def run(cmd: list[str]) -> tuple[float, float]:
    """Run a command; return (wall seconds, peak RSS of the child in MiB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(peak, before) / 1024


def quality(weights: Path, labels: dict[str, int]) -> dict[str, float]:
    """AUROC (good above bad) and precision/recall of the bottom 20 % against the bad set."""
    rows = read_jsonl(weights)
    score = {r["id"]: (r["score"] if r["score"] is not None else float("-inf")) for r in rows}
    ids = sorted(score, key=lambda i: (score[i], i))
    k = round(0.2 * len(ids))
    bottom = set(ids[:k])
    bad = {i for i in ids if labels[i] == 0}
    hit = len(bottom & bad)
    return {"auroc": auroc([score[i] for i in ids], [labels[i] for i in ids]),
            "precision": hit / max(1, k), "recall": hit / max(1, len(bad))}


def cost_child(kind: str, args: argparse.Namespace) -> dict:
    """One cost measurement in this (fresh) process: ``bds`` round, ``sft`` steps or ``sft_epoch``."""
    from winnow.bilevel import learn_weights
    from winnow.data import collate
    from winnow.paired import ROLES, make_pair
    from winnow.prepare import encode_for_training, prepare_model
    from winnow.step import flat_batches, weighted_step
    from winnow.weigh import EncodedData

    torch.set_num_threads(args.threads)
    task = build_task(args.tasks.split(",")[0])
    config = WeighConfig(model=args.model, max_length=args.max_length, rounds=1)
    texts = [m["content"] for ex in [*task.pool, *task.val] for m in ex.messages]
    model, tok, use_lora = prepare_model(config, texts, adapters=ROLES if kind == "bds" else ("default",))
    model.eval()
    pool, val = encode_for_training(tok, task.pool, config), encode_for_training(tok, task.val, config)
    pad, cpu = tok.pad_token_id, torch.device("cpu")
    setup_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    if kind == "bds":
        learn_weights(make_pair(model, use_lora), EncodedData(pool, pad, cpu), EncodedData(val, pad, cpu), config,
                      progress=False)
        examples = config.steps_per_round * config.batch_size
    else:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=2e-4)  # as the final fine-tune
        steps = config.steps_per_round if kind == "sft" else -(-len(pool.items) // config.batch_size)
        batches = flat_batches(pool.lengths, config.batch_size, seed=0, group_by_length=False, start=0)
        for _ in range(steps):
            _, idx = next(batches)
            batch = collate([pool.items[i] for i in idx], idx, pad)
            weighted_step(model, opt, [(batch, torch.ones(len(idx)))], params=params, max_grad_norm=0)
        examples = min(len(pool.items), steps * config.batch_size)
    return {"kind": kind, "wall_s": time.perf_counter() - t0, "examples": examples, "pool": len(pool.items),
            "setup_peak_mib": setup_rss, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def cost(args: argparse.Namespace) -> list[dict]:
    """Each measurement in a fresh subprocess; returns their rows."""
    rows = []
    for kind in ("bds", "sft", "sft_epoch"):
        cmd = [sys.executable, __file__, "--cost-child", kind, "--tasks", args.tasks, "--model", args.model,
               "--max-length", str(args.max_length), "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{kind} failed:\n{proc.stderr[-2000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def render_cost(rows: list[dict], args: argparse.Namespace) -> str:
    c = WeighConfig()
    lines = [
        "",
        f"Cost (`--cost --threads {args.threads}`, task {args.tasks.split(',')[0]}, {args.model}, max length "
        f"{args.max_length}; defaults: steps_per_round {c.steps_per_round}, batch {c.batch_size}, validation batch "
        f"{c.val_batch_size}; one fresh process per row):",
        "",
        "| measurement | examples trained | wall s | peak RSS after set-up MiB | peak RSS MiB |",
        "|---|---:|---:|---:|---:|",
    ]
    names = {"bds": "one BDS round (both models + scoring pass)", "sft": "weighted SFT, same steps",
             "sft_epoch": "weighted SFT, one epoch over the pool"}
    lines += [f"| {names[r['kind']]} | {r['examples']} | {r['wall_s']:.1f} | {r['setup_peak_mib']:.0f} | "
              f"{r['peak_mib']:.0f} |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="safety,quality")
    ap.add_argument("--methods", default="penalty,lite,direct,random,length,base_loss,val_gain")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--extra", default="", help="extra `winnow weigh` flags for every method, e.g. '--gamma 30'")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--cost", action="store_true", help="measure one BDS round against plain weighted SFT")
    ap.add_argument("--cost-child", choices=["bds", "sft", "sft_epoch"], help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for --cost")
    args = ap.parse_args()
    if args.cost_child:
        print(json.dumps(cost_child(args.cost_child, args)))
        return
    if args.cost:
        print(render_cost(cost(args), args))
        return

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.tasks.split(","):
            files = export_task(build_task(name), Path(tmp) / name)
            labels = {r["id"]: int(r["label"] == "good") for r in read_jsonl(files["pool_labels"])}
            common = ["--pool", str(files["pool"]), "--val", str(files["val"]), "--model", args.model,
                      "--max-length", str(args.max_length), "--no-progress", *args.extra.split()]
            for method in args.methods.split(","):
                out = Path(tmp) / name / f"weigh-{method}"
                wall, peak = run([*WINNOW, "weigh", *common, "--method", method, "--rounds", str(args.rounds),
                                  "--out", str(out)])
                row = {"task": name, "method": method, "wall_s": wall, "peak_mib": peak,
                       **quality(out / "weights.jsonl", labels)}
                results.append(row)
                print(json.dumps(row), flush=True)
    table = render(results, args)
    print(table)
    if not args.no_write:
        replace_section("## bench_bds", table)


def render(results: list[dict], args: argparse.Namespace) -> str:
    commit = git_commit()
    lines = [
        "## bench_bds",
        "",
        f"- machine: {platform.processor() or platform.machine()}, 2 cores; commit {commit}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- command: `python benchmarks/bench_bds.py --tasks {args.tasks} --methods {args.methods} "
        f"--model {args.model} --max-length {args.max_length} --rounds {args.rounds} {args.extra}`",
        "- one run per method (seed 0); wall time and peak RSS are of the whole `winnow weigh` process",
        "",
        "| task | method | AUROC | bottom-20% precision | recall | wall s | peak MiB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['task']} | {r['method']} | {r['auroc']:.3f} | {r['precision']:.2f} | {r['recall']:.2f} | "
              f"{r['wall_s']:.0f} | {r['peak_mib']:.0f} |" for r in results]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
