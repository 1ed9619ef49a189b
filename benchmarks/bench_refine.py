"""Online self-refinement on the safety task: do the regenerated responses turn into refusals, and do
BMO weights rank refusals above compliant regenerations?

Run (from the repository root; about 5 minutes a round on 2 CPU cores, round 1 included):

    .venv/bin/python benchmarks/bench_refine.py [--rounds 3] [--samples 4] [--pool 96] [--threads 2] [--no-write]

The BMO options default to the library's (``RefineConfig``: held sparsemax weights, weighted draws, ``φ`` on
the kept pairs, ESS floor 0.5); ``--bmo-refresh step --bmo-min-ess 0 --online-sampling uniform --lower-data
all --bmo-form softmax`` is the per-step loop the earlier sections of RESULTS.md measured first.

The refined questions are exactly the pool's harmful-compliance ones (the hidden labels set the cut,
so this measures refinement, not selection). Each round generates ``G`` responses per question with
the current upper model ``θ`` (round 1: the model before any refinement step), then trains. Reports,
per round: the share of regenerated responses the refusal judge accepts, and the AUROC of the
round's BMO weights for refusal-vs-compliance (pooled over questions; with the default `round` scope the
weights have mean 1 over the round). Also counts model forward passes per training step with BMO
weights against the same step with uniform weights on the regenerated pairs (the extra cost of BMO), on the tiny model.
Batched-vs-sequential generation throughput is ``benchmarks/bench_generation.py``.
Results go to ``benchmarks/RESULTS.md`` under ``## bench_refine``.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
from _results import append_section, git_commit

from winnow.config import RefineConfig
from winnow.data import load_examples
from winnow.io import read_jsonl
from winnow.judge import is_refusal
from winnow.metrics import auroc
from winnow.refine import refine
from winnow.tasks import build_task

DEFAULTS = RefineConfig()
"""The library's BMO options are the bench's defaults (its training sizes are the bench's own)."""


def run_refine(args: argparse.Namespace, out: Path) -> tuple[list[dict], list[dict], float]:
    """Refine the harmful-compliance questions; per-round judge share and BMO AUROC."""
    task = build_task("safety", seed=0, pool_size=args.pool, val_size=args.val_size, test_size=8)
    bad = [ex for ex in task.pool if ex.metadata["label"] == "bad"]
    weights = {ex.id: 0.0 if ex.metadata["label"] == "bad" else 1.0 for ex in task.pool}
    config = RefineConfig(model=args.model, max_length=128, lora_layers=args.lora_layers,
                          keep_top=1 - len(bad) / len(task.pool), rounds=args.rounds,
                          samples_per_question=args.samples, max_new_tokens=args.max_new_tokens,
                          steps_per_round=args.steps, temperature=args.temperature, model_lr=args.lr,
                          model_lr_end=args.lr_end, gamma=args.gamma,
                          bmo_reduction=args.bmo_reduction, bmo_scope=args.bmo_scope,
                          bmo_tau=args.bmo_tau, bmo_form=args.bmo_form, bmo_refresh=args.bmo_refresh,
                          bmo_min_ess=args.bmo_min_ess, online_sampling=args.online_sampling,
                          bmo_gap=args.bmo_gap, lower_data=args.lower_data)
    t0 = time.perf_counter()
    refine(task.pool, task.val, weights, config, out, judge=lambda t, p: is_refusal(t, prompt=p))
    wall = time.perf_counter() - t0
    rows = []
    bad_ids = {ex.id for ex in bad}
    for r in range(1, args.rounds + 1):
        path = out / "rounds" / f"round-{r}.jsonl"
        # every draw counts: identical responses (a templated refusal) are separate samples
        drawn = load_examples(path, dedupe=False).examples if path.stat().st_size else []
        samples = [ex for ex in drawn if ex.parent_id in bad_ids]
        refused = [is_refusal(ex.response, prompt=ex.prompt) for ex in samples]
        skipped = [s for s in read_jsonl(out / "rounds" / f"skipped-{r}.jsonl") if s["parent_id"] in bad_ids]
        refused_cut = [is_refusal(s.get("response", ""), prompt=s.get("prompt")) for s in skipped]
        generated = len(samples) + len(skipped)
        per_q = {q: 0 for q in bad_ids}  # refusals among each refined question's draws (cut ones too)
        for ex, y in zip(samples, refused, strict=True):
            per_q[ex.parent_id] += y
        for s, y in zip(skipped, refused_cut, strict=True):
            per_q[s["parent_id"]] += y
        rows.append({
            "round": r, "generated": generated, "trained_on": len(samples),
            "refusal_share_all": (sum(refused) + sum(refused_cut)) / max(1, generated),
            "refusal_share_trained": sum(refused) / max(1, len(samples)),
            "bmo_auroc": auroc([ex.weight for ex in samples], refused) if 0 < sum(refused) < len(refused) else None,
            # the order the weights come from (sparsemax ties every weight below its cut at 0)
            "gap_auroc": (auroc([-ex.metadata["loss_gap"] for ex in samples], refused)
                          if 0 < sum(refused) < len(refused) and samples[0].metadata.get("loss_gap") is not None
                          else None),
            "bmo_refusal_mean": _mean([ex.weight for ex, y in zip(samples, refused, strict=True) if y]),
            "bmo_compliance_mean": _mean([ex.weight for ex, y in zip(samples, refused, strict=True) if not y]),
            "questions_none": sum(v == 0 for v in per_q.values()),
            "questions_all": sum(v == args.samples for v in per_q.values()),
            "trained_zero": sum(ex.weight == 0 for ex in samples),
        })
    return rows, read_jsonl(out / "metrics.jsonl"), wall


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def forward_counts() -> dict[str, int]:
    """Model forward passes in one refine step with BMO weights vs with uniform online weights (tiny model)."""
    from winnow.bilevel import bmo

    return {"bmo": _forwards_per_step(bmo.bmo_weights),
            "uniform": _forwards_per_step(lambda up, lo, **kw: torch.ones_like(up))}


def _forwards_per_step(weight_fn) -> int:
    from winnow import refine as refine_mod
    from winnow.generation import FakeGenerator

    task = build_task("safety", seed=0, pool_size=24, val_size=8, test_size=8)
    weights = {ex.id: 0.0 if ex.metadata["label"] == "bad" else 1.0 for ex in task.pool}
    n = {"forward": 0, "steps": 0}
    real_step, real_bmo = refine_mod._step, refine_mod.bmo_weights

    def bump(*_):
        n["forward"] += 1

    def counted_step(pair, *a, **kw):
        # the decoder stacks (the loss code calls them directly, then the head on targets only)
        stacks = {id(s): s for s in (_stack(pair.module(w)) for w in ("upper", "lower"))}
        hooks = [s.register_forward_pre_hook(bump) for s in stacks.values()]
        try:
            n["steps"] += 1
            return real_step(pair, *a, **kw)
        finally:
            for h in hooks:
                h.remove()

    refine_mod._step, refine_mod.bmo_weights = counted_step, weight_fn
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = RefineConfig(model="tiny", max_length=256, keep_top=0.75, rounds=1, steps_per_round=3,
                               samples_per_question=2)
            refine(task.pool, task.val, weights, cfg, Path(tmp) / "r", progress=False,
                   generator_for=lambda m, t: FakeGenerator(tokenizer=t))
    finally:
        refine_mod._step, refine_mod.bmo_weights = real_step, real_bmo
    return n["forward"] // n["steps"]


def _stack(model: torch.nn.Module) -> torch.nn.Module:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, "model", base)


def write_results(args: argparse.Namespace, rows: list[dict], metrics: list[dict], wall: float,
                  counts: dict[str, int], commit: str) -> str:
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [
        "## bench_refine", "",
        f"Machine: {platform.machine()}, {args.threads} CPU threads, fp32; commit {commit}; "
        f"`python benchmarks/bench_refine.py --rounds {args.rounds} --samples {args.samples} --pool {args.pool} "
        f"--val-size {args.val_size} "
        f"--steps {args.steps} --lr {args.lr}{f' --lr-end {args.lr_end}' if args.lr_end else ''} --gamma {args.gamma} "
        f"--max-new-tokens {args.max_new_tokens} --temperature {args.temperature} "
        f"--bmo-reduction {args.bmo_reduction} --bmo-scope {args.bmo_scope} --bmo-tau {args.bmo_tau} "
        f"--bmo-form {args.bmo_form} "
        f"--bmo-refresh {args.bmo_refresh} --bmo-min-ess {args.bmo_min_ess} --online-sampling {args.online_sampling} "
        f"--bmo-gap {args.bmo_gap} --lower-data {args.lower_data}`;"
        f" model {args.model} + LoRA ({f'last {args.lora_layers}' if args.lora_layers else 'all'} layers); "
        f"wall {wall / 60:.1f} min. Refined questions: the pool's harmful-compliance ones. Round k's responses "
        "come from θ after k−1 rounds of refinement; one run (sampling seed 0).", "",
        "| round | generated | trained on | judge refusals (of generated) | (of trained on) | BMO AUROC "
        "refusal > compliance | gap AUROC | mean λ refusals | mean λ compliances | λ = 0 | ESS | τ | questions "
        "never / always refused | val loss after round |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row, m in zip(rows, metrics, strict=True):
        ess = "–" if m.get("bmo_ess") is None else f"{m['bmo_ess'] * row['trained_on']:.1f}"
        lines.append(f"| {row['round']} | {row['generated']} | {row['trained_on']} | {row['refusal_share_all']:.2f} | "
                     f"{row['refusal_share_trained']:.2f} | {fmt(row['bmo_auroc'])} | {fmt(row['gap_auroc'])} | "
                     f"{fmt(row['bmo_refusal_mean'])} | "
                     f"{fmt(row['bmo_compliance_mean'])} | {row['trained_zero']} | "
                     f"{ess} | {m.get('bmo_tau', 0):.1f} | "
                     f"{row['questions_none']} / {row['questions_all']} | {m['val_loss']:.3f} |")
    lines += ["", f"Model forward passes per training step: {counts['bmo']} with BMO weights, {counts['uniform']} "
              f"with uniform weights on the regenerated pairs → {counts['bmo'] - counts['uniform']} extra "
              "(tiny model, counted with forward hooks).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lr-end", type=float, help="learning rate in the last round (default: constant --lr)")
    ap.add_argument("--gamma", type=float, default=0.5)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--bmo-reduction", default="sum")
    ap.add_argument("--bmo-scope", default="round")
    ap.add_argument("--bmo-tau", type=float, default=5.0)
    ap.add_argument("--bmo-form", default=DEFAULTS.bmo_form, choices=["softmax", "sparsemax"],
                    help="BMO weights as the entropy- (softmax) or quadratic-regularised optimum (sparsemax: exact 0s)")
    ap.add_argument("--bmo-refresh", default=DEFAULTS.bmo_refresh, choices=["step", "generation"],
                    help="BMO weights every step, or once per generation and held for the round")
    ap.add_argument("--bmo-min-ess", type=float, default=DEFAULTS.bmo_min_ess,
                    help="with --bmo-refresh generation: raise τ until the weights' ESS is this share")
    ap.add_argument("--online-sampling", default=DEFAULTS.online_sampling, choices=["uniform", "weighted"],
                    help="with --bmo-refresh generation: draw a step's responses in proportion to the held weights")
    ap.add_argument("--bmo-gap", default="models", choices=["models", "val_step"],
                    help="BMO weights from the trained θ, φ or from one validation step of θ "
                         "(needs --bmo-refresh generation)")
    ap.add_argument("--lower-data", default=DEFAULTS.lower_data, choices=["all", "kept"],
                    help="what φ trains on: the kept pairs and the weighted responses, or the kept pairs alone")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--pool", type=int, default=96)
    ap.add_argument("--val-size", type=int, default=32, help="validation pairs (about half of them refusals)")
    ap.add_argument("--lora-layers", type=int, default=0, help="last N layers (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="keep the refine run here (default: a temporary folder)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not touch RESULTS.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    commit = git_commit()  # the code that runs: HEAD when the bench starts, not when it ends
    counts = forward_counts()
    with tempfile.TemporaryDirectory() as tmp:
        rows, metrics, wall = run_refine(args, Path(args.out or tmp) / "refine")
    text = write_results(args, rows, metrics, wall, counts, commit)
    print(text)
    if not args.no_write:
        append_section(text)


if __name__ == "__main__":
    main()

