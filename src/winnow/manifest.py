"""Stage completion markers: what ran, with which config, versions and seed."""

from __future__ import annotations

import dataclasses
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

DONE = "done.json"
"""Written last by every stage: its presence means the stage's outputs are complete."""


def is_done(folder: str | Path) -> bool:
    """Whether a stage folder holds a completion marker."""
    return (Path(folder) / DONE).exists()


def versions() -> dict[str, str]:
    """Versions of Python and of the libraries that change results."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("winnow", "torch", "transformers", "peft", "accelerate"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def run_info(stage: str, config: Any) -> dict[str, Any]:
    """The body of a completion marker."""
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return {"stage": stage, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": cfg,
            "seed": cfg.get("seed"), "versions": versions()}
