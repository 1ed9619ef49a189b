"""Claim 3 — BMO recovers BDS: on separable data the closed-form BMO weights select BDS's useful set.

Run from the repository root (about 2 minutes on 2 CPU cores)::

    .venv/bin/python -m experiments.theory.bmo_vs_bds            # 4 settings × 10 seeds, writes results/bmo_vs_bds.*
    .venv/bin/python -m experiments.theory.bmo_vs_bds --quick    # main setting, 1 seed, prints only

Setting (the BMO use case of DESIGN §1.3): questions with two responses each, scored by squared
error of a linear model. Separable: every response is fit to zero loss by some model, and all the
good ones (``y = x·w``) by ``w`` together with the validation set; for 40 % of the questions the
second response is bad (``y = −x·w``).

- **BDS**: Winnow's ``learn_weights`` over all (question, response) pairs; selected: weight ≥ 0.1 × mean.
- **BMO**: no learning. ``θ`` = the validation-aligned model (least squares on the validation set),
  ``φ`` = the model fitted to the responses (least squares on the whole pool, uniform weights);
  ``λ = bmo_weights(l(θ), l(φ), tau, groups=question)`` (mean 1 per question, as the library's
  online loop normalises); selected: ``λ ≥ 0.5`` (half the question's mean).

Both are then judged by the model refit exactly on their selected set (validation loss divided by
the mean squared target) and by the model refit on their weights. Four settings: the validation
set identifies the model (d = 10, 20 validation points, 300 questions); fewer questions (100); a
validation set that does not identify the model (d = 20, 10 points); and an interpolating pool
(d = 40 > 30 questions, so the pool fit ``φ`` fits every question's mean response exactly, with 60
validation points): there BMO's pick within a question is provably right, and the BDS recipes
tried are listed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from experiments.theory.common import (
    Task,
    environment,
    grouped_linear_task,
    linear_from_zero,
    mean_loss,
    pyplot,
    recipe,
    run_bds,
    script_main,
    weighted_least_squares,
    write_results,
)
from winnow.bilevel.bmo import bmo_weights
from winnow.bilevel.weights import weight_stats
from winnow.config import WeighConfig

TAU = 0.01
"""BMO temperature in units of the mean squared target."""
TAUS = (0.001, 0.01, 0.1, 1.0)
BDS_KEEP, BMO_KEEP = 0.1, 0.5
SETTINGS = {
    "val identifies the model (d 10, 20 val, 300 questions)": dict(questions=300, d=10, n_val=20),
    "fewer questions (d 10, 20 val, 100 questions)": dict(questions=100, d=10, n_val=20),
    "val does not identify the model (d 20, 10 val, 300 questions)": dict(questions=300, d=20, n_val=10),
    "interpolating pool (d 40, 60 val, 30 questions)": dict(questions=30, d=40, n_val=60),
}
MAIN = next(iter(SETTINGS))
INTERPOLATING = list(SETTINGS)[-1]
BDS_TRIES = {"recipe (τ 0.5)": {}, "τ 1": {"tau": 1.0}, "τ 5": {"tau": 5.0}, "gain_cap 0": {"gain_cap": 0.0},
             "omega_lr 0.03": {"omega_lr": 0.03}, "resync off": {"resync": False}, "γ 1": {"gamma": 1.0},
             "γ 100": {"gamma": 100.0}, "20 rounds": {"rounds": 20}}
"""BDS recipes tried in the interpolating setting (where the pinned recipe drops good responses)."""


def bds_config(d: int, seed: int, **overrides) -> WeighConfig:
    """The loop's recipe here: lr ~ 1/d (0.1 at d = 10, 0.025 above), 8 steps × 100 rounds."""
    return recipe(**{"model_lr": 0.1 if d <= 10 else 0.025, "steps_per_round": 8, "rounds": 100, "seed": seed,
                     **overrides})


def bmo(task: Task, tau: float) -> torch.Tensor:
    """Closed-form BMO weights from the validation-aligned ``θ`` and the response-fitted ``φ``."""
    theta = weighted_least_squares(task.val.x, task.val.y, torch.ones(len(task.val)))
    phi = weighted_least_squares(task.pool.x, task.pool.y, torch.ones(len(task.pool)))

    def losses(m):
        return (task.pool.x @ m - task.pool.y) ** 2

    return bmo_weights(losses(theta), losses(phi), tau=tau * task.scale, groups=task.groups)


def refit_val(task: Task, weights: torch.Tensor) -> float:
    """Validation loss of the model refit exactly on the pool under ``weights``."""
    return mean_loss(weighted_least_squares(task.pool.x, task.pool.y, weights), task.val, task.scale)


def _short(weights: torch.Tensor) -> list[float]:
    """Weights to 4 significant digits (the JSON keeps every seed's weights)."""
    return [float(f"{w:.4g}") for w in weights.tolist()]


def one_seed(seed: int, spec: dict, with_taus: bool, **overrides) -> dict:
    task = grouped_linear_task(seed, **spec)
    d = spec["d"]
    torch.manual_seed(seed)
    result, _ = run_bds(linear_from_zero(d), task, bds_config(d, seed, **overrides))
    p = result.weights / result.weights.mean()
    lam = bmo(task, TAU)
    keep_bds, keep_bmo = p >= BDS_KEEP, lam >= BMO_KEEP
    union = int((keep_bds | keep_bmo).sum())
    out = {
        "seed": seed, "same_set": bool((keep_bds == keep_bmo).all()),
        "jaccard": int((keep_bds & keep_bmo).sum()) / max(union, 1),
        "bds_errors": int((keep_bds != ~task.bad).sum()), "bmo_errors": int((keep_bmo != ~task.bad).sum()),
        "bds_val_selected": refit_val(task, keep_bds.float()), "bmo_val_selected": refit_val(task, keep_bmo.float()),
        "bds_val_weighted": refit_val(task, p), "bmo_val_weighted": refit_val(task, lam),
        "useful_val_selected": refit_val(task, (~task.bad).float()),
        "bds_ess": weight_stats(p)["ess"], "bmo_ess": weight_stats(lam)["ess"],
        "weights_bds": _short(p), "weights_bmo": _short(lam), "bad": task.bad.tolist(),
    }
    out["val_gap"] = abs(out["bds_val_selected"] - out["bmo_val_selected"])
    if with_taus:
        out["taus"] = {}
        for tau in TAUS:
            lt = bmo(task, tau)
            out["taus"][tau] = {"same_set": bool(((lt >= BMO_KEEP) == keep_bds).all()),
                                "val_weighted": refit_val(task, lt), "useless_max": float(lt[task.bad].max())}
    return out


def summarise(label: str, runs: list[dict]) -> dict:
    return {"setting": label, "seeds": len(runs),
            "same set": f"{sum(r['same_set'] for r in runs)}/{len(runs)}",
            "Jaccard min": min(r["jaccard"] for r in runs),
            "BDS wrong picks (total)": sum(r["bds_errors"] for r in runs),
            "BMO wrong picks (total)": sum(r["bmo_errors"] for r in runs),
            "val, true useful set (median)": statistics.median(r["useful_val_selected"] for r in runs),
            "val, BDS set (median)": statistics.median(r["bds_val_selected"] for r in runs),
            "val, BMO set (median)": statistics.median(r["bmo_val_selected"] for r in runs),
            "|val BDS − val BMO| (max)": max(r["val_gap"] for r in runs),
            "val, BDS weights (median)": statistics.median(r["bds_val_weighted"] for r in runs),
            "val, BMO weights (median)": statistics.median(r["bmo_val_weighted"] for r in runs),
            "ESS BDS / BMO (min)": f"{min(r['bds_ess'] for r in runs):.2f} / {min(r['bmo_ess'] for r in runs):.2f}"}


def try_recipe(name: str, overrides: dict, seeds: Sequence[int]) -> dict:
    """One BDS recipe in the interpolating setting: does it pick the set BMO picks?"""
    rs = [one_seed(s, SETTINGS[INTERPOLATING], False, **overrides) for s in seeds]
    good = [w for r in rs for w, b in zip(r["weights_bds"], r["bad"], strict=True) if not b]
    useless = [w for r in rs for w, b in zip(r["weights_bds"], r["bad"], strict=True) if b]
    return {"BDS recipe": name, "seeds": len(rs), "same set as BMO": f"{sum(r['same_set'] for r in rs)}/{len(rs)}",
            "BDS wrong picks (total)": sum(r["bds_errors"] for r in rs),
            "BMO wrong picks (total)": sum(r["bmo_errors"] for r in rs),
            "smallest good weight": min(good), "largest useless weight": max(useless)}


def run(seeds: Sequence[int] = tuple(range(10)), quick: bool = False, out_dir: Path | None = None) -> dict:
    """All settings over ``seeds``; ``quick``: the main setting on the first seed only."""
    t0 = time.perf_counter()
    seeds = list(seeds)[:1] if quick else list(seeds)
    settings = {MAIN: SETTINGS[MAIN]} if quick else SETTINGS
    runs = {label: [one_seed(s, spec, with_taus=label == MAIN) for s in seeds] for label, spec in settings.items()}
    rows = [summarise(label, rs) for label, rs in runs.items()]
    tries = [] if quick else [try_recipe(name, overrides, seeds[:5]) for name, overrides in BDS_TRIES.items()]
    tau_rows = [{"τ (× mean y²)": tau,
                 "same set as BDS": f"{sum(r['taus'][tau]['same_set'] for r in runs[MAIN])}/{len(seeds)}",
                 "val, BMO weights (median)": statistics.median(r["taus"][tau]["val_weighted"] for r in runs[MAIN]),
                 "largest useless weight (max)": max(r["taus"][tau]["useless_max"] for r in runs[MAIN])}
                for tau in TAUS]
    result = {"claim": "bmo_vs_bds", "tau": TAU, "seeds": seeds, "settings": settings, "rows": rows,
              "tau_rows": tau_rows, "bds_tries": tries, "runs": runs, "wall_s": time.perf_counter() - t0,
              "environment": environment()}
    if out_dir is not None:
        report(result, out_dir)
    return result


COLUMNS = ["setting", "seeds", "same set", "Jaccard min", "BDS wrong picks (total)", "BMO wrong picks (total)",
           "val, true useful set (median)", "val, BDS set (median)",
           "val, BMO set (median)", "|val BDS − val BMO| (max)", "val, BDS weights (median)",
           "val, BMO weights (median)", "ESS BDS / BMO (min)"]


def report(result: dict, out_dir: Path) -> None:
    """Tables (markdown + JSON) and the weight scatter."""
    write_results("bmo_vs_bds", f"Claim 3: BMO closed form vs learned BDS weights (τ = {result['tau']} × mean y²)", {
        "Settings": (result["rows"], COLUMNS),
        f"τ sweep, {MAIN}": (result["tau_rows"], list(result["tau_rows"][0])),
        f"BDS recipes, {INTERPOLATING}, 5 seeds": (result["bds_tries"], list(result["bds_tries"][0])),
    }, result, out_dir)
    plt = pyplot()
    first = result["runs"][MAIN][0]
    bad = torch.tensor(first["bad"])
    wb = torch.tensor(first["weights_bds"]).clamp_min(1e-30)
    wm = torch.tensor(first["weights_bmo"]).clamp_min(1e-30)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.scatter(wb[~bad], wm[~bad], s=10, c="C0", label="good response")
    ax.scatter(wb[bad], wm[bad], s=10, c="C3", label="bad response")
    ax.axvline(BDS_KEEP, color="k", ls=":", lw=0.8)
    ax.axhline(BMO_KEEP, color="k", ls=":", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="BDS weight (learned, mean 1)",
           ylabel="BMO weight (closed form, mean 1 per question)", title=f"Seed {first['seed']}, {MAIN.split(' (')[0]}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "bmo_vs_bds_weights.png", dpi=120)
    plt.close(fig)


def main() -> None:
    script_main(run, __doc__.split("\n")[0], "main setting, one seed, print only",
                tables=("rows", "tau_rows", "bds_tries"))


if __name__ == "__main__":
    main()
