"""What every benchmark records beside its numbers: the commit measured, and where the section goes.

The benchmarks run as scripts (``python benchmarks/bench_x.py``), so this folder is on ``sys.path``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def git_commit() -> str:
    """The short hash of the checked-out commit (``unknown`` outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def append_section(text: str) -> None:
    """Add a markdown section at the end of ``RESULTS.md``."""
    RESULTS.write_text(RESULTS.read_text(encoding="utf-8").rstrip() + "\n\n" + text, encoding="utf-8")
