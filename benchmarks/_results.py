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


def replace_section(heading: str, text: str) -> None:
    """Put ``text`` (which starts with ``heading``, a ``## `` line) in place of that section of ``RESULTS.md``,
    or at the end when there is none: for benchmarks that keep one current table."""
    old = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# Benchmark results\n"
    lines = old.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        RESULTS.write_text(old.rstrip("\n") + "\n\n" + text, encoding="utf-8")
        return
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    rest = "".join(lines[end:])
    RESULTS.write_text("".join(lines[:start]) + text.rstrip("\n") + "\n" + ("\n" + rest if rest else ""),
                       encoding="utf-8")
