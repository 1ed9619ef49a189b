"""Shared pieces of the theory experiments: data, models, the ``Indexed`` wrapper, output helpers.

Not a script: ``coverage.py``, ``transformer.py`` and ``bmo_vs_bds.py`` import it. Every task is
realisable on its useful part (a teacher inside the model class labels the useful pool examples
and the validation set), so the clean-only optimum has zero loss and "fits a sample" has a
precise meaning.
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from winnow.bilevel.bds import BDSResult, TwoCopies, learn_weights
from winnow.config import WeighConfig

RESULTS = Path(__file__).resolve().parent / "results"


# --- data ---------------------------------------------------------------------------------------
class Tensors:
    """``Indexed`` (what ``learn_weights`` reads) over an input tensor and a target vector."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y
        self.lengths = [1] * len(y)
        self.targets = [1] * len(y)  # one loss term per example: sequence sum = token mean

    def batch(self, index: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[list(index)], self.y[list(index)]

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Task:
    """A pool with a known useless part, a clean validation set and a clean held-out test set."""

    pool: Tensors
    val: Tensors
    test: Tensors
    bad: torch.Tensor
    """``(N,)`` bool: the pool example conflicts with the validation task."""
    scale: float
    """Mean squared target of the clean task; every loss below is divided by it."""
    groups: torch.Tensor | None = None
    """``(N,)`` question id of each pool example (grouped tasks only)."""


def _material_inputs(sample, teacher, n_bad: int, g: torch.Generator, margin: float) -> torch.Tensor:
    """Draw ``n_bad`` inputs whose clean target is at least ``margin`` in size: a corrupted label on
    an input whose clean target is ~0 is almost right, and no validation signal can flag it."""
    rows = []
    while len(rows) < n_bad:
        x = sample(64, g)
        rows.extend(x[teacher(x).abs() >= margin])
    return torch.stack(rows[:n_bad])


def linear_task(seed: int, *, n: int = 100, d: int = 20, n_val: int = 10, share: float = 0.3,
                n_test: int = 2000) -> Task:
    """Linear regression ``y = x·w`` whose first ``share·n`` pool targets are flipped (``y = −x·w``).

    The useful examples (and the validation set) are fit exactly by ``w``; a flipped example is fit
    by no model that is optimal on validation once the clean data pins ``w`` down.
    """
    g, w, sample, teacher = _linear_teacher(seed, d)

    n_bad = int(share * n)
    x = torch.cat([_material_inputs(sample, teacher, n_bad, g, 0.5 * float(w.norm())), sample(n - n_bad, g)])
    y = teacher(x)
    bad = torch.arange(n) < n_bad
    y[bad] = -y[bad]
    xv, xt = sample(n_val, g), sample(n_test, g)
    return Task(Tensors(x, y), Tensors(xv, teacher(xv)), Tensors(xt, teacher(xt)), bad, float(w.norm() ** 2))


def _linear_teacher(seed: int, d: int):
    """(generator, teacher weights, input sampler, teacher) of a linear task."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g)

    def sample(k, gen):
        return torch.randn(k, d, generator=gen)

    def teacher(x):
        return x @ w

    return g, w, sample, teacher


def grouped_linear_task(seed: int, *, questions: int = 300, d: int = 10, n_val: int = 20,
                        share: float = 0.4) -> Task:
    """Two responses per question (input): both ``x·w``, or, for a ``share`` of the questions, one
    ``x·w`` and one ``−x·w``. The BMO setting: several responses per question, some of them bad."""
    g, w, sample, teacher = _linear_teacher(seed, d)

    n_bad = int(share * questions)
    xq = torch.cat([_material_inputs(sample, teacher, n_bad, g, 0.5 * float(w.norm())),
                    sample(questions - n_bad, g)])
    x, y = xq.repeat_interleave(2, 0), teacher(xq).repeat_interleave(2)
    bad = torch.zeros(2 * questions, dtype=torch.bool)
    bad[1:2 * n_bad:2] = True  # the second response of each of the first n_bad questions
    y[bad] = -y[bad]
    xv, xt = sample(n_val, g), sample(2000, g)
    return Task(Tensors(x, y), Tensors(xv, teacher(xv)), Tensors(xt, teacher(xt)), bad, float(w.norm() ** 2),
                groups=torch.arange(questions).repeat_interleave(2))


# --- models -------------------------------------------------------------------------------------
def squared_error(module: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Per-example squared error ``(B,)``: the loss ``TwoCopies`` hands to the loop."""
    x, y = batch
    return (module(x).reshape(-1) - y) ** 2


def linear_from_zero(d: int) -> torch.nn.Linear:
    """A bias-free linear model initialised at 0 (the start of the synthetic BDS checks)."""
    lin = torch.nn.Linear(d, 1, bias=False)
    torch.nn.init.zeros_(lin.weight)
    return lin


def weighted_least_squares(x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Minimum-norm minimiser of ``Σ weights_i (x_i·θ − y_i)²`` (exact, float64): ``(d,)``."""
    s = weights.double().clamp_min(0).sqrt()
    sol = torch.linalg.pinv(x.double() * s[:, None]) @ (y.double() * s)
    return sol.float()


class OneLayerAttention(torch.nn.Module):
    """One softmax-attention layer read out at the last position.

    ``f(X) = v · Σ_t softmax_t(x_T^T W x_t) x_t`` for a sequence ``X = (x_1..x_T)``: the last token is
    the query, every token is a key and a value (identity value map), ``v`` reads the result out.
    """

    def __init__(self, d: int, init_scale: float, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(init_scale * torch.randn(d, d, generator=generator))
        self.v = torch.nn.Parameter(init_scale * torch.randn(d, generator=generator) / math.sqrt(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = x[:, -1]  # (B, d)
        scores = torch.einsum("bd,de,bte->bt", q, self.w, x)  # (B, T)
        attn = torch.softmax(scores, dim=-1)  # (B, T)
        return torch.einsum("bt,btd,d->b", attn, x, self.v)  # (B,)


def attention_task(seed: int, *, n: int = 200, n_val: int = 40, d: int = 4, length: int = 6,
                   share: float = 0.3, teacher_scale: float = 0.5) -> tuple[Task, OneLayerAttention]:
    """Sequences labelled by a teacher ``OneLayerAttention``; the first ``share·n`` pool targets flipped.

    The teacher's ``W`` has entries ``N(0, teacher_scale²)`` and ``v`` entries ``N(0, 1)``.
    """
    g = torch.Generator().manual_seed(seed)
    teacher = OneLayerAttention(d, 1.0, generator=g)
    with torch.no_grad():
        teacher.w.mul_(teacher_scale)
        teacher.v.mul_(math.sqrt(d))
    teacher.requires_grad_(False)

    def sample(k, gen):
        return torch.randn(k, length, d, generator=gen)

    xv, xt = sample(n_val, g), sample(2000, g)
    scale = float((teacher(xt) ** 2).mean())
    n_bad = int(share * n)
    x = torch.cat([_material_inputs(sample, teacher, n_bad, g, 0.5 * math.sqrt(scale)), sample(n - n_bad, g)])
    y = teacher(x)
    bad = torch.arange(n) < n_bad
    y[bad] = -y[bad]
    return Task(Tensors(x, y), Tensors(xv, teacher(xv)), Tensors(xt, teacher(xt)), bad, scale), teacher


# --- running the loop ---------------------------------------------------------------------------
RECIPE = dict(method="penalty", weight_map="softmax", rounds=30, steps_per_round=4, resync=True, gamma=10.0,
              gamma_end=None, model_optimizer="sgd", model_lr=0.1, omega_update="natural", omega_lr=0.1, tau=0.5,
              gain_cap=1.0, batch_size=8, val_batch_size=8)
"""Every loop option these experiments rely on, pinned: the recipe of ``benchmarks/RESULTS.md`` (the
library's ``WeighConfig`` defaults when the experiments were written). The library's defaults move (on
2026-11-21 they became 1 step per round, lr 0.02, validation batch 32), and a changed validation batch
size alone changes which seed passes, so nothing here leans on them."""


def recipe(**overrides: Any) -> WeighConfig:
    """``WeighConfig`` of the pinned ``RECIPE`` with ``overrides``."""
    return WeighConfig(**{**RECIPE, **overrides})


def run_bds(module: torch.nn.Module, task: Task, config: WeighConfig, on_round=None) -> tuple[BDSResult, TwoCopies]:
    """Winnow's own loop on a task: ``learn_weights`` over two copies of ``module`` (θ is ``module``)."""
    paired = TwoCopies(module, squared_error)
    result = learn_weights(paired, task.pool, task.val, config, progress=False, on_round=on_round)
    return result, paired


def mean_loss(module_or_theta, data: Tensors, scale: float) -> float:
    """Mean squared error over ``data`` divided by the task's scale (a module or a linear ``θ``)."""
    with torch.no_grad():
        pred = data.x @ module_or_theta if isinstance(module_or_theta, torch.Tensor) else module_or_theta(data.x)
        return float(((pred.reshape(-1) - data.y) ** 2).mean()) / scale


def mask_distance(weights: torch.Tensor, bad: torch.Tensor) -> float:
    """RMS distance between the weights and the ideal clean mask, both normalised to mean 1."""
    p = weights / weights.mean()
    m = (~bad).float()
    return float(((p - m / m.mean()) ** 2).mean().sqrt())


def useless_mass(weights: torch.Tensor, bad: torch.Tensor) -> float:
    """Share of the total weight on the useless examples."""
    return float(weights[bad].sum() / weights.sum())


# --- output -------------------------------------------------------------------------------------
def fmt(v: Any) -> str:
    """A table cell: small or large floats in scientific notation, others as they are."""
    if isinstance(v, float):
        if v != v:
            return "–"
        if v.is_integer() and abs(v) < 1e4:
            return str(int(v))
        if 1e-3 <= abs(v) < 1e4:
            return f"{v:.3f}"
        return f"{v:.1e}"
    return str(v).replace("|", "\\|")


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Rows (dicts) as a markdown table over ``columns``."""
    lines = ["| " + " | ".join(fmt(c) for c in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def write_results(name: str, title: str, tables: dict[str, tuple[list[dict], list[str]]], data: dict,
                  out_dir: Path) -> Path:
    """Write ``<name>.md`` (one markdown table per entry of ``tables``) and ``<name>.json`` (``data``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}", "", f"wall time {data['wall_s']:.1f} s; {json.dumps(data['environment'])}", ""]
    for heading, (rows, columns) in tables.items():
        parts += [f"## {heading}", "", markdown_table(rows, columns), ""]
    md = out_dir / f"{name}.md"
    md.write_text("\n".join(parts), encoding="utf-8")
    (out_dir / f"{name}.json").write_text(json.dumps(data, indent=1, default=float), encoding="utf-8")
    return md


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def script_main(run: Any, description: str, quick_help: str, tables: Sequence[str] = ("rows",)) -> None:
    """The command line every experiment shares: ``[--quick] [--out DIR]``, 1 thread, rows printed."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny models: threads only add overhead
    result = run(quick=args.quick, out_dir=None if args.quick else args.out)
    for row in (r for t in tables for r in result[t]):
        print({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()})
    print(f"wall {result['wall_s']:.1f} s")

