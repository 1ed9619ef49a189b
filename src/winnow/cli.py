"""The ``winnow`` command: each subcommand parses its options and calls one library function."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from winnow.errors import WinnowError

log = logging.getLogger("winnow")


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt-field", help="record field holding the prompt (default: recognise the shape)")
    p.add_argument("--response-field", help="record field holding the response")


def _config_args(p: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """One ``--flag`` per config field, documented by the field's docstring in ``winnow.config``."""
    from winnow.config_io import field_docs

    docs = field_docs(cls)
    p.add_argument("--config", help="YAML file with options (flags given here override it)")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool | None", "bool"):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                           help=docs.get(f.name))
        else:
            kind = {"int": int, "float": float, "int | None": int, "float | None": float}.get(str(f.type), str)
            p.add_argument(flag, dest=f.name, type=kind, default=None, metavar=f.name.upper(),
                           help=f"{docs.get(f.name, '')} (default: {f.default})")


def _config(cls: type, args: argparse.Namespace, section: str | None = None) -> Any:
    from winnow.config_io import from_dict, load_yaml, to_dict

    base = load_yaml(cls, args.config, section) if args.config else cls()
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
             if getattr(args, f.name, None) is not None}
    return from_dict(cls, {**to_dict(base), **given})


def _fields(args: argparse.Namespace) -> Any:
    from winnow.data import FieldMap

    try:
        return FieldMap(args.prompt_field, args.response_field)
    except ValueError as e:
        raise WinnowError(str(e)) from None


# --- subcommands ------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    from winnow.config import TrainConfig
    from winnow.data import check_weights_cover, load_examples, read_weights
    from winnow.train import finetune

    config = _config(TrainConfig, args)
    fields = _fields(args)
    train = load_examples(args.data, fields).examples
    val = load_examples(args.val, fields).examples if args.val else None
    weights = None
    if args.weights:
        weights = read_weights(args.weights)
        check_weights_cover(weights, train, args.weights)
    result = finetune(train, config, args.out, val=val, weights=weights, progress=not args.no_progress)
    val_txt = f", validation loss {result.val_loss:.4f}" if result.val_loss is not None else ""
    print(f"trained {result.steps} steps{val_txt}; model saved to {result.out / 'model'}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    import json

    from winnow.data import load_examples
    from winnow.data.inspect import format_report, inspect_data
    from winnow.models import load_model

    data = load_examples(args.data, _fields(args))
    texts = [m["content"] for ex in data.examples for m in ex.messages]
    _, tokenizer = load_model(args.model, texts=texts)
    report = inspect_data(data, tokenizer, max_length=args.max_length, truncation=args.truncation,
                          batch_size=args.batch_size)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def cmd_weigh(args: argparse.Namespace) -> int:
    from winnow.config import WeighConfig
    from winnow.data import load_examples
    from winnow.weigh import weigh

    config = _config(WeighConfig, args)
    fields = _fields(args)
    pool = load_examples(args.pool, fields).examples
    val = load_examples(args.val, fields).examples
    weights = weigh(pool, val, config, args.out, progress=not args.no_progress)
    low = sum(w < 0.1 for w in weights.values())
    print(f"weighed {len(weights)} examples ({config.method}); {low} below 0.1; "
          f"weights in {args.out}/weights.jsonl")
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from winnow.data import load_examples, read_scores, read_weights
    from winnow.select import select, write_selection

    pool = load_examples(args.pool, _fields(args)).examples
    scores = read_scores(args.weights)
    sel = select(pool, scores, top=args.top, top_k=args.top_k, threshold=args.threshold)
    summary = write_selection(sel, args.out, read_weights(args.weights))
    print(f"kept {summary['kept']}, rejected {summary['rejected']} ({summary['rule']}); "
          f"wrote {args.out}/kept.jsonl and {args.out}/rejected.jsonl")
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from winnow.tasks import DEFAULT_SIZES, TASKS, build_task, export_task, summary

    if args.action == "list":
        for name, text in TASKS.items():
            d = DEFAULT_SIZES[name]
            print(f"{name}: {text}\n  defaults: pool {d.pool} ({d.bad_share:.0%} bad), val {d.val}, test {d.test}")
        return 0
    if args.name is None or args.out is None:
        raise WinnowError("usage: winnow tasks export NAME --out DIR [--seed N] [--pool-size N] ...")
    task = build_task(args.name, seed=args.seed, pool_size=args.pool_size, val_size=args.val_size,
                      test_size=args.test_size, bad_share=args.bad_share)
    paths = export_task(task, args.out)
    counts = {"pool": len(task.pool), "pool_labels": len(task.pool), "val": len(task.val), "test": len(task.test)}
    for name, path in paths.items():
        print(f"{path}" + (f"  ({counts[name]} records)" if name in counts else ""))
    info = summary(task)
    print(f"task {task.name}, seed {task.seed}: bad share {info['bad_share']:.2f}, "
          f"response-length AUROC {info.get('length_auroc', float('nan')):.3f}")
    return 0


def cmd_refine(args: argparse.Namespace) -> int:
    from winnow.config import RefineConfig
    from winnow.data import check_weights_cover, load_examples, read_weights
    from winnow.judge import is_refusal
    from winnow.refine import refine

    config = _config(RefineConfig, args)
    fields = _fields(args)
    pool = load_examples(args.pool, fields).examples
    val = load_examples(args.val, fields).examples
    weights = read_weights(args.weights)
    check_weights_cover(weights, pool, args.weights)
    judge = (lambda text, prompt: is_refusal(text, prompt=prompt)) if args.judge_refusals else None
    res = refine(pool, val, weights, config, args.out, start=args.start, start_lower=args.start_lower, judge=judge,
                 progress=not args.no_progress)
    regen = sum(ex.source == "regenerated" for ex in res.examples)
    print(f"refined data: {len(res.examples) - regen} kept pairs + {regen} regenerated responses "
          f"in {args.out}/refined.jsonl")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from winnow.config import EvalConfig
    from winnow.evaluate import evaluate

    config = _config(EvalConfig, args)
    res = evaluate(args.model_dir, args.test, config, args.out, scores=args.scores, labels=args.labels)
    for name, value in sorted(res.metrics.items()):
        print(f"{name:28s} {value:.4g}" if isinstance(value, float) else f"{name:28s} {value}")
    if res.judge:
        print(f"(refusal judge accuracy on {res.judge.get('n', 105):.0f} human-labelled responses: "
              f"{res.judge.get('accuracy', float('nan')):.3f})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from winnow.config import RunConfig
    from winnow.config_io import load_yaml
    from winnow.pipeline import run_pipeline

    summary = run_pipeline(load_yaml(RunConfig, args.config), args.out, progress=not args.no_progress)
    return _print_summary(summary, args.out)


def cmd_demo(args: argparse.Namespace) -> int:
    from winnow.demo import demo_config
    from winnow.pipeline import run_pipeline

    out = args.out or ("runs/demo-quick" if args.quick else "runs/demo")
    config = demo_config(quick=args.quick, seeds=args.seeds)
    print(f"winnow demo: task {config.task}, model {config.model}, arms {', '.join(config.arms)}, "
          f"{len(config.seeds)} seed(s); run directory {out} (re-run to resume)")
    return _print_summary(run_pipeline(config, out, progress=not args.no_progress), out)


def _print_summary(summary: dict[str, Any], out: str) -> int:
    from winnow.report import summary_markdown

    print(summary_markdown(summary))
    if summary.get("judge_accuracy") is not None:
        print(f"refusal judge accuracy on pyrit's human-labelled responses: {summary['judge_accuracy']:.3f}")
    for note in summary.get("notes", []):
        print(f"note: {note}")
    print(f"wall time {summary['wall_s'] / 60:.1f} min; report: {out}/report.html")
    return 0


# --- wiring -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from winnow import __version__
    from winnow.config import EvalConfig, RefineConfig, TrainConfig, WeighConfig

    parser = argparse.ArgumentParser(prog="winnow", description="Curate LLM fine-tuning data against a trusted "
                                     "validation set.")
    parser.add_argument("--version", action="version", version=f"winnow {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="weighted fine-tuning (LoRA for large models)")
    p.add_argument("--data", required=True, help="training data: JSONL, JSON, Parquet or a dataset folder")
    p.add_argument("--val", help="validation data, evaluated during and after training")
    p.add_argument("--weights", help="JSONL of {id, weight} (e.g. from `winnow weigh`); default: "
                   "each record's own `weight`, else uniform")
    p.add_argument("--out", required=True, help="output folder (re-running resumes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _data_args(p)
    _config_args(p, TrainConfig)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("validate", help="read and tokenise data without training; report what training would see")
    p.add_argument("--data", required=True)
    p.add_argument("--model", default="smollm2-135m", help="model whose tokenizer and chat template to use")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--truncation", choices=["right", "left", "drop"], default="right")
    p.add_argument("--batch-size", type=int, default=8, help="for the padding estimate")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _data_args(p)
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("weigh", help="learn one weight per pool example against a validation set (BDS)")
    p.add_argument("--pool", required=True, help="the SFT data to weigh")
    p.add_argument("--val", required=True, help="small trusted validation set")
    p.add_argument("--out", required=True, help="output folder (re-running resumes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _data_args(p)
    _config_args(p, WeighConfig)
    p.set_defaults(func=cmd_weigh)

    p = sub.add_parser("select", help="keep the best-weighted examples (no retraining)")
    p.add_argument("--weights", required=True, help="weights.jsonl of `winnow weigh`")
    p.add_argument("--pool", required=True, help="the data that was weighed")
    p.add_argument("--out", required=True, help="folder for kept.jsonl and rejected.jsonl")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--top", type=float, help="keep this fraction, e.g. 0.8")
    budget.add_argument("--top-k", type=int, help="keep this many")
    budget.add_argument("--threshold", type=float, help="keep every example scoring at least this")
    _data_args(p)
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("tasks", help="list the built-in tasks, or export one (pool, labels, val, test)")
    p.add_argument("action", nargs="?", choices=["list", "export"], default="list")
    p.add_argument("name", nargs="?", help="task to export (see `winnow tasks`)")
    p.add_argument("--out", help="folder for pool.jsonl, pool_labels.jsonl, val.jsonl, test.jsonl, task.json")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and of every random choice")
    p.add_argument("--pool-size", type=int, help="pool examples (default: the task's)")
    p.add_argument("--val-size", type=int, help="validation examples (default: the task's)")
    p.add_argument("--test-size", type=int, help="test examples (default: the task's)")
    p.add_argument("--bad-share", type=float, help="share of bad pool pairs (default: the task's)")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("refine", help="regenerate responses for the low-weighted questions; BMO-weight them")
    p.add_argument("--pool", required=True, help="the data that was weighed")
    p.add_argument("--val", required=True, help="the trusted validation set")
    p.add_argument("--weights", required=True, help="weights.jsonl of `winnow weigh`")
    p.add_argument("--start", help="start both models from this saved adapter/model (e.g. runs/weigh/upper)")
    p.add_argument("--start-lower", help="start the lower model φ from this one instead (e.g. runs/weigh/lower)")
    p.add_argument("--judge-refusals", action="store_true", help="log the share of regenerated refusals per round")
    p.add_argument("--out", required=True, help="output folder (re-running resumes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _data_args(p)
    _config_args(p, RefineConfig)
    p.set_defaults(func=cmd_refine)

    p = sub.add_parser("eval", help="refusal rate, over-refusal, reference loss (and selection quality) of a model")
    p.add_argument("--model-dir", required=True, help="a `winnow train` output folder or a model folder")
    p.add_argument("--test", required=True, help="test pairs; records with \"harmful\": true are harmful prompts")
    p.add_argument("--scores", help="weights.jsonl of `winnow weigh`, for selection quality (with --labels)")
    p.add_argument("--labels", help="pool_labels.jsonl ({id, label}) for selection quality")
    p.add_argument("--out", required=True, help="folder for results.json and generations.jsonl")
    _config_args(p, EvalConfig)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("run", help="the whole pipeline from a run config (weigh, select, refine, train arms, eval)")
    p.add_argument("--config", required=True, help="run YAML (see `RunConfig` in winnow/config/run.py)")
    p.add_argument("--out", required=True, help="run directory (re-running resumes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("demo", help="the safety task end to end with SmolLM2-135M (--quick: the tiny model)")
    p.add_argument("--quick", action="store_true", help="tiny model, about 3 minutes on 2 CPU cores")
    p.add_argument("--seeds", type=int, default=1, help="fine-tuning seeds per arm (3 for a publishable table)")
    p.add_argument("--out", help="run directory (default runs/demo or runs/demo-quick)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``winnow`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "transformers", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except WinnowError as e:
        print(f"winnow: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("winnow: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
