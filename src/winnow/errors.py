"""Errors that Winnow reports to users as a clean message and exit code 2."""

from __future__ import annotations

from pathlib import Path


class WinnowError(Exception):
    """A problem with the user's input or request; the CLI prints it and exits with 2."""


class InputError(WinnowError):
    """Bad input data, naming the file, the line (or record) and the field.

    >>> str(InputError("bad.jsonl", "empty response", line=3, field="completion"))
    'bad.jsonl:3: field "completion": empty response'
    """

    def __init__(
        self,
        path: str | Path,
        message: str,
        *,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.message = message
        where = self.path if line is None else f"{self.path}:{line}"
        what = f' field "{field}":' if field else ""
        super().__init__(f"{where}:{what} {message}")
