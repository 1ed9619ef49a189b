"""Write a built task to a folder: the pool without its labels, the labels apart, validation and test."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from winnow.data import write_examples
from winnow.io import write_json, write_jsonl
from winnow.tasks.build import Task, summary


def export_task(task: Task, out: str | Path) -> dict[str, Path]:
    """Write ``pool.jsonl`` (no labels, so selection can run on it honestly), ``pool_labels.jsonl``
    (``{"id", "label", "kind"}`` for evaluation), ``val.jsonl``, ``test.jsonl`` and ``task.json``
    (counts and checks), each atomically; returns their paths by name.
    """
    out = Path(out)
    paths = {name: out / f"{name}.jsonl" for name in ("pool", "pool_labels", "val", "test")}
    paths["task"] = out / "task.json"
    write_examples(paths["pool"], (replace(e, metadata={}) for e in task.pool))
    write_jsonl(paths["pool_labels"], ({"id": e.id, "label": e.metadata["label"], "kind": e.metadata["kind"]}
                                       for e in task.pool))
    write_examples(paths["val"], task.val)
    write_examples(paths["test"], task.test)
    write_json(paths["task"], {**summary(task), "description": task.description})
    return paths
