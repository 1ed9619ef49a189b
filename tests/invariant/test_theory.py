"""Fast versions of the three theory experiments in ``experiments/theory`` (README there).

Each calls the experiment's own ``run(quick=True)`` — the same code as the full script, on fewer
seeds — and asserts the claim with a margin. The measured values are noted next to each bound.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: experiments/ is not installed

from experiments.theory import bmo_vs_bds, coverage, transformer  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """The models are tiny: one thread is faster and makes the trajectories the scripts' own."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_bds_covers_the_useful_data_and_direct_mixing_does_not():
    result = coverage.run(seeds=[0], quick=True)
    m = result["per_seed"][0]["methods"]
    bds, mixing = m["BDS → weighted refit"], m["direct mixing (pool ∪ val, uniform)"]
    assert bds["coverage"] >= 0.95  # measured 1.00
    assert bds["val_loss"] <= 1e-3  # measured 3e-9 (validation loss / mean y²)
    assert bds["useless_mass"] <= 0.01  # measured 1.6e-5
    assert mixing["coverage"] <= 0.8  # measured 0.04
    assert mixing["val_loss"] >= 0.05  # measured 0.47
    # the validation set alone (10 points, d = 20) fits validation but covers almost nothing
    assert m["validation only"]["coverage"] <= 0.5  # measured 0.01
    # no mixing ratio covers the useful data
    assert max(s["coverage"] for s in result["per_seed"][0]["sweep"]) <= 0.8  # measured 0.09


def test_one_layer_transformer_reaches_eps_from_random_inits():
    result = transformer.run(seeds=range(5), quick=True)
    traces = result["traces"]
    reached = [t for t in traces if t["hit_round"] is not None]
    assert len(reached) >= 4  # measured 4/5 within 80 rounds (seeds 0, 1, 3, 4 at rounds 28-39; seed 2 at 95)
    for t in reached:
        assert t["final_val"] <= transformer.EPS  # and stays there: measured at most 3e-6
        assert t["final_mass"] <= 0.01  # the corrupted sequences lost their weight: measured at most 2e-4
        assert abs(t["gap"][-1]) <= 1e-3  # penalty gap closes: measured at most 1e-7 in size
        assert t["dist"][-1] < 0.5 * t["dist"][0]  # weights moved towards the clean mask


def test_bmo_closed_form_selects_the_bds_set():
    result = bmo_vs_bds.run(seeds=[0], quick=True)
    r = result["runs"][bmo_vs_bds.MAIN][0]
    assert r["same_set"]  # measured: identical on 8 of 10 seeds of the full run, seed 0 included
    assert r["bds_errors"] == 0 and r["bmo_errors"] == 0
    # the same set gives the same refit; both reach the clean optimum (0) within float error
    assert r["val_gap"] <= 1e-6  # measured 0
    assert max(r["bds_val_selected"], r["bmo_val_selected"]) <= 1e-6  # measured 1e-15
    assert abs(r["bds_val_weighted"] - r["bmo_val_weighted"]) <= 1e-6  # refits on the weights: measured 2e-11
