"""The exceptions factkeep raises for bad input; the CLI turns them into a message and exit code."""

from __future__ import annotations

from pathlib import Path


class FactkeepError(Exception):
    """An error in the user's input (not a bug): the CLI prints it and exits 1."""


class DataError(FactkeepError):
    """Invalid input data, located by file, line and field.

    Example message: ``facts.jsonl:12: field 'answers': must be a non-empty list of strings``.
    """

    def __init__(
        self,
        message: str,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field
        self.reason = message
        where = self.path or "<input>"
        if line is not None:
            where += f":{line}"
        what = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{what} {message}")
