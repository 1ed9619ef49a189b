"""Peak memory and time of one refine training step: the library's step, which differentiates each
loss part as soon as it is known, against one backward of the whole loss (the step before commit
fb45034, kept here as the baseline).

Run (from the repository root; ~6 minutes on 2 CPU cores):

    .venv/bin/python benchmarks/bench_refine_step.py [--steps 5] [--repeats 2] [--lora-layers 0] [--threads 2]

Setup as in ``bench_refine``: SmolLM2-135M-Instruct with LoRA adapters ``θ`` and ``φ`` (every layer by
default), fp32, batches of 8 kept, 8 regenerated and 8 validation pairs of the built-in safety task, ``round``
BMO scope, importance correction on. The regenerated responses are benign pool responses handed out by
the library's ``FakeGenerator`` (no text is printed). Each variant runs in its own process (peak RSS is
per process), alternating, ``--repeats`` times; a process takes one warm-up step, resets its peak RSS
(``/proc/self/clear_refs``), then times ``--steps`` steps. Reported: median step time and the peak RSS over
the timed steps, median over processes, and the ratio of the library step to the baseline.
Results go to ``benchmarks/RESULTS.md`` under ``## bench_refine_step``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from _results import append_section, git_commit


def combined_step(pair, opts, config, autocast, *, kept, val, online):
    """The baseline: every forward first, then one backward per model of its whole loss."""
    from winnow.bilevel import round_bmo_weights
    from winnow.losses import clipped_ratio, sequence_nll
    from winnow.paired import ROLES
    from winnow.step import batch_token_logprobs

    kb, kp = kept
    out = {}
    for w in ("lower", "upper"):
        m = pair.module(w)
        with autocast():
            out[w] = (batch_token_logprobs(m, kb), batch_token_logprobs(m, online),
                      sequence_nll(*batch_token_logprobs(m, val)).mean() if w == "upper" else None)
    fresh = {w: sequence_nll(out[w][1][0].detach(), out[w][1][1], config.bmo_reduction) for w in ROLES}
    known = online["known"]
    lam = round_bmo_weights(known["upper"], known["lower"], online["index"].cpu(), fresh["upper"], fresh["lower"],
                            tau=config.bmo_tau)
    ratio = clipped_ratio(out["upper"][1][0], online["sampler"], config.importance_clip)
    n = kb["input_ids"].shape[0] + len(lam)
    for w in ROLES:
        (lp_k, mk), (lp_o, mk_o), lv = out[w]
        data = ((kp * sequence_nll(lp_k, mk)).sum() + (lam * sequence_nll(lp_o, mk_o, token_weights=ratio)).sum()) / n
        loss = lv + config.gamma * data if w == "upper" else data
        pair.module(w)
        opts[w].zero_grad(set_to_none=True)
        loss.backward()
        opts[w].step()
    return [float(x) for x in lam]


def child(variant: str, args: argparse.Namespace) -> dict:
    from winnow.config import RefineConfig
    from winnow.data import collate
    from winnow.generation import FakeGenerator
    from winnow.online import encode_online, online_batch, online_losses
    from winnow.paired import ROLES, make_pair
    from winnow.prepare import encode_for_training, prepare_model
    from winnow.refine import _step, choose_questions, generate_round
    from winnow.step import to_device
    from winnow.tasks import build_task

    torch.set_num_threads(args.threads)
    task = build_task("safety", seed=0, pool_size=96, val_size=32, test_size=8)
    weights = {ex.id: 0.0 if ex.metadata["label"] == "bad" else 1.0 for ex in task.pool}
    config = RefineConfig(model="smollm2-135m", max_length=128, lora_layers=args.lora_layers, gamma=2.0,
                          keep_top=1 - sum(w == 0 for w in weights.values()) / len(weights))
    kept, questions = choose_questions(task.pool, weights, config.keep_top, 0.0, 0)
    benign = [ex.response for ex in kept]
    texts = [m["content"] for ex in [*task.pool, *task.val] for m in ex.messages]
    model, tok, use_lora = prepare_model(config, texts, seed=0, adapters=ROLES)
    pair, cpu, pad = make_pair(model.eval(), use_lora), torch.device("cpu"), tok.pad_token_id
    gen = FakeGenerator(lambda q, k, seed: benign[(len(q) + k) % len(benign)], tokenizer=tok)
    samples, _ = generate_round(gen, questions, config, 0)
    online = encode_online(tok, samples, config)
    online["known"] = online_losses(pair, online, config, pad, cpu, contextlib.nullcontext)
    kenc, venc = encode_for_training(tok, kept, config), encode_for_training(tok, task.val, config)
    opts = {w: torch.optim.Adam(pair.params(w), lr=config.model_lr) for w in ROLES}
    step = _step if variant == "per-part" else combined_step

    def one(s: int) -> float:
        b = config.batch_size
        ki = [(s * b + j) % len(kenc.items) for j in range(b)]
        vi = [(s * b + j) % len(venc.items) for j in range(b)]
        oi = [(s * b + j) % len(online["items"]) for j in range(b)]
        kb = to_device(collate([kenc.items[i] for i in ki], ki, pad), cpu)
        vb = to_device(collate([venc.items[i] for i in vi], vi, pad), cpu)
        t0 = time.perf_counter()
        step(pair, opts, config, contextlib.nullcontext, kept=(kb, torch.ones(b)), val=vb,
             online=online_batch(online, oi, pad, cpu))
        return time.perf_counter() - t0

    one(0)  # warm-up
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    times = [one(s) for s in range(1, args.steps + 1)]
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {"variant": variant, "step_s": statistics.median(times),
            "peak_rss_gb": int(status["VmHWM"].split()[0]) / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--lora-layers", type=int, default=0, help="last N layers (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", choices=["combined", "per-part"], help=argparse.SUPPRESS)
    ap.add_argument("--no-write", action="store_true", help="print only; do not touch RESULTS.md")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    runs: dict[str, list[dict]] = {"combined": [], "per-part": []}
    for _ in range(args.repeats):
        for variant in runs:
            cmd = [sys.executable, __file__, "--child", variant, "--steps", str(args.steps),
                   "--lora-layers", str(args.lora_layers), "--threads", str(args.threads)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs[variant].append(json.loads(done.stdout.strip().splitlines()[-1]))
    med = {v: {k: statistics.median(r[k] for r in rs) for k in ("step_s", "peak_rss_gb")} for v, rs in runs.items()}
    commit = git_commit()
    base, new = med["combined"], med["per-part"]
    text = "\n".join([
        "## bench_refine_step", "",
        f"Machine: {platform.machine()}, {args.threads} CPU threads, fp32; commit {commit}; "
        f"`python benchmarks/bench_refine_step.py --steps {args.steps} --repeats {args.repeats} "
        f"--lora-layers {args.lora_layers}`; SmolLM2-135M + LoRA "
        f"({f'last {args.lora_layers} layers' if args.lora_layers else 'every layer'}), "
        "batches 8 kept + 8 regenerated + 8 validation. Median over processes of (median step time, "
        "peak RSS over the timed steps).", "",
        "| step | step time (s) | peak RSS (GB) |", "|---|---|---|",
        f"| one backward of the whole loss (baseline) | {base['step_s']:.2f} | {base['peak_rss_gb']:.2f} |",
        f"| each part as soon as known (library) | {new['step_s']:.2f} | {new['peak_rss_gb']:.2f} |",
        f"| ratio library / baseline | {new['step_s'] / base['step_s']:.2f} | "
        f"{new['peak_rss_gb'] / base['peak_rss_gb']:.2f} |", "",
        "Per process: " + "; ".join(f"{v} {r['step_s']:.2f} s / {r['peak_rss_gb']:.2f} GB"
                                    for v, rs in runs.items() for r in rs), "",
    ])
    print(text)
    if not args.no_write:
        append_section(text)


if __name__ == "__main__":
    main()
