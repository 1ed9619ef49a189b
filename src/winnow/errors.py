"""Errors that Winnow reports to users as a clean message and exit code 2."""

from __future__ import annotations

from pathlib import Path


class WinnowError(Exception):
    """A problem with the user's input or request; the CLI prints it and exits with 2."""


class InputError(WinnowError):
    """Bad input data, naming the file, the line (or record) and the field.

    ``line`` is a line number for line-based files (JSONL) and a 1-based record number
    for the others (JSON arrays, Parquet, dataset folders); ``unit`` says which.

    >>> str(InputError("bad.jsonl", "empty response", line=3, field="completion"))
    'bad.jsonl:3: field "completion": empty response'
    >>> str(InputError("bad.parquet", "not a string", line=2, field="prompt", unit="record"))
    'bad.parquet: record 2: field "prompt": not a string'
    """

    def __init__(
        self,
        path: str | Path,
        message: str,
        *,
        line: int | None = None,
        field: str | None = None,
        unit: str = "line",
    ) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.message = message
        if line is None:
            where = self.path
        elif unit == "line":
            where = f"{self.path}:{line}"
        else:
            where = f"{self.path}: {unit} {line}"
        what = f' field "{field}":' if field else ""
        super().__init__(f"{where}:{what} {message}")
