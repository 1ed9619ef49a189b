"""Configs as plain data and YAML: the serialisation every stage config shares."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import yaml

from winnow.errors import WinnowError

C = TypeVar("C")


def to_dict(config: Any) -> dict[str, Any]:
    """A config as plain data (for YAML and manifests)."""
    return dataclasses.asdict(config)


def from_dict(cls: type[C], data: dict[str, Any], *, source: str = "config") -> C:
    """Build a config from plain data, rejecting unknown keys by name."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise WinnowError(f"{source}: unknown option(s) {unknown}; known: {sorted(names)}")
    try:
        return cls(**data)
    except TypeError as e:
        raise WinnowError(f"{source}: {e}") from None


def load_yaml(cls: type[C], path: str | Path, section: str | None = None) -> C:
    """Read a config (or one section of a run config) from YAML."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise WinnowError(f"{path}: cannot read config: {e}") from None
    if section is not None:
        data = data.get(section, {}) or {}
    if not isinstance(data, dict):
        raise WinnowError(f"{path}: expected a mapping of options")
    return from_dict(cls, data, source=str(path))


def save_yaml(config: Any, path: str | Path) -> None:
    """Write a resolved config atomically."""
    from winnow.io import atomic_open

    with atomic_open(path) as f:
        yaml.safe_dump(to_dict(config), f, sort_keys=False)


def field_docs(cls: type) -> dict[str, str]:
    """Each field's one-line docstring (the string under it in the class body), for ``--help``."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:], strict=False):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs
