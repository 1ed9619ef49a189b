"""Resumable checkpoints: tensors as safetensors, optimizer states, RNG states, progress.

A checkpoint is a folder ``step-<N>`` written whole or not at all (``atomic_dir``), so the
latest one found is always complete.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from winnow.io import atomic_dir


def rng_state() -> dict[str, Any]:
    """Every random state that training touches."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` captured."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    root: str | Path,
    step: int,
    *,
    tensors: dict[str, torch.Tensor],
    states: dict[str, Any],
    meta: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write ``root/step-<step>`` atomically and keep only the ``keep`` newest checkpoints."""
    root = Path(root)
    path = root / f"step-{step:08d}"
    with atomic_dir(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp / "tensors.safetensors")
        torch.save({**states, "rng": rng_state()}, tmp / "states.pt")
        (tmp / "meta.json").write_text(json.dumps({"step": step, **meta}, indent=2))
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint folder under ``root``, if any."""
    found = sorted(p for p in Path(root).glob("step-*") if (p / "meta.json").exists())
    return found[-1] if found else None


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Read (tensors, states, meta) back; the caller restores RNG with ``set_rng_state``."""
    path = Path(path)
    tensors = load_file(path / "tensors.safetensors")
    states = torch.load(path / "states.pt", weights_only=False)
    meta = json.loads((path / "meta.json").read_text())
    return tensors, states, meta
