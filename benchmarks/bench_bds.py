"""Selection quality and cost of BDS, its lite variant and every baseline on the built-in tasks.

Run (from the repository root):

    .venv/bin/python benchmarks/bench_bds.py [--tasks safety,quality] [--methods penalty,lite,val_gain,...]
        [--model smollm2-135m] [--rounds 4] [--no-write]

Each method runs as its own ``winnow weigh`` process on the task's exported pool and
validation files (so wall time and peak memory are those of the real command). Quality: AUROC of
the scores for good-vs-bad pool pairs (hidden labels from ``pool_labels.jsonl``, read only here)
and precision/recall of the bottom 20 % against the bad set. Cost: wall time and peak RSS of
one BDS round against ``winnow train`` over the same number of optimizer steps and examples.
Results go to ``benchmarks/RESULTS.md`` under ``## bench_bds``.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="safety,quality")
    ap.add_argument("--methods", default="penalty,lite,direct,random,length,base_loss,val_gain")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--extra", default="", help="extra `winnow weigh` flags for every method, e.g. '--gamma 30'")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

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
        write_section(table)


def render(results: list[dict], args: argparse.Namespace) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    lines = [
        "## bench_bds",
        "",
        f"- machine: {platform.processor() or platform.machine()}, 2 cores; commit {commit.stdout.strip()}; "
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


def write_section(table: str) -> None:
    path = ROOT / "benchmarks" / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    start = text.find("## bench_bds")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + table + (text[end + 1:] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + table
    path.write_text(text)


if __name__ == "__main__":
    main()
