"""``analysis.json``: what an analysis shows in ``factkeep report``.

Every analysis command (``factkeep analyze drift``, ``analyze overlap``, ``analyze keys``, ...)
writes, beside its own files, an ``analysis.json`` in its out folder::

    {
      "kind": "drift",
      "title": "Hidden-state drift of held-out entities",
      "description": "What is measured and how to read it, in 1-3 sentences.",
      "tables": [{"caption": "...", "columns": ["method", "final"], "rows": [["sft", 0.12]]}],
      "figures": [{"file": "drift.png", "caption": "..."}]
    }

``kind`` names the analysis; ``title`` becomes the report section's heading and ``description``
its first paragraph. Table cells are strings, numbers, or ``null`` for a missing value; every row
has one cell per column. Figures are PNG files in the same folder (a relative path without
``..``). The file is written last, after the figures it names, so its presence marks a finished
analysis; ``factkeep report`` finds it under ``runs=`` and ``analyses=``.

Example::

    summary = AnalysisSummary(
        kind="drift",
        title="Hidden-state drift",
        description="Mean cosine distance to the reference model; higher is more drift.",
        tables=[AnalysisTable("Distance per run", ["run", "final"], [["runs/sft", 0.12]])],
        figures=[AnalysisFigure("drift.png", "Distance along training.")],
    )
    write_summary("runs/an/drift", summary)
    assert read_summary("runs/an/drift") == summary
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeAlias

from factkeep.errors import DataError
from factkeep.rundir import atomic_write_json

__all__ = [
    "SUMMARY_FILE",
    "AnalysisFigure",
    "AnalysisSummary",
    "AnalysisTable",
    "Cell",
    "read_summary",
    "write_summary",
]

SUMMARY_FILE = "analysis.json"
"""The file name of an analysis summary."""

Cell: TypeAlias = str | int | float | None
"""A table cell: text, a number, or None (``null``) for a missing value."""

_PNG = b"\x89PNG\r\n\x1a\n"


@dataclass
class AnalysisTable:
    """A table of an analysis: a caption, the column headings and rows of cells."""

    caption: str
    columns: list[str]
    rows: list[list[Cell]]


@dataclass
class AnalysisFigure:
    """A figure of an analysis: a PNG file in the analysis folder and its caption."""

    file: str
    caption: str


@dataclass
class AnalysisSummary:
    """The content of ``analysis.json`` (see the module docs for the format).

    Attributes:
        kind: the analysis, e.g. ``"drift"``, ``"overlap"``, ``"keys"``.
        title: heading of its report section.
        description: 1-3 sentences: what is measured and how to read it.
        tables: tables shown below the description.
        figures: PNG files in the analysis folder, shown after the tables.
    """

    kind: str
    title: str
    description: str
    tables: list[AnalysisTable] = field(default_factory=list)
    figures: list[AnalysisFigure] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document (non-finite numbers become None)."""
        return {
            "kind": self.kind,
            "title": self.title,
            "description": self.description,
            "tables": [
                {
                    "caption": t.caption,
                    "columns": list(t.columns),
                    "rows": [[_clean(c) for c in row] for row in t.rows],
                }
                for t in self.tables
            ],
            "figures": [{"file": f.file, "caption": f.caption} for f in self.figures],
        }


class _FieldError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.reason = message


def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _keys(data: Any, where: str, required: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise _FieldError(where or "(document)", "must be a JSON object")
    prefix = f"{where}." if where else ""
    for key in data:
        if key not in required:
            raise _FieldError(f"{prefix}{key}", f"unknown field (fields: {', '.join(required)})")
    for key in required:
        if key not in data:
            raise _FieldError(f"{prefix}{key}", "missing")
    return data


def _text(value: Any, where: str, empty: bool = False) -> str:
    if not isinstance(value, str) or (not empty and not value.strip()):
        raise _FieldError(where, "must be a non-empty string" if not empty else "must be a string")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise _FieldError(where, "must be a list")
    return value


def _cell(value: Any, where: str) -> Cell:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise _FieldError(where, "must be a finite number (use null for a missing value)")
        return value
    raise _FieldError(where, f"must be a string, a number or null, got {type(value).__name__}")


def _figure_file(value: Any, where: str) -> str:
    name = _text(value, where)
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name:
        raise _FieldError(where, f"must be a path inside the analysis folder, got {name!r}")
    if path.suffix.lower() != ".png":
        raise _FieldError(where, f"must name a PNG file (.png), got {name!r}")
    return name


def _parse(data: Any) -> AnalysisSummary:
    """Check a decoded ``analysis.json`` and build the summary (raises :class:`_FieldError`)."""
    doc = _keys(data, "", ("kind", "title", "description", "tables", "figures"))
    tables = []
    for i, raw in enumerate(_list(doc["tables"], "tables")):
        where = f"tables[{i}]"
        table = _keys(raw, where, ("caption", "columns", "rows"))
        columns = [
            _text(c, f"{where}.columns[{k}]")
            for k, c in enumerate(_list(table["columns"], f"{where}.columns"))
        ]
        if not columns:
            raise _FieldError(f"{where}.columns", "must name at least one column")
        rows = []
        for r, row in enumerate(_list(table["rows"], f"{where}.rows")):
            cells = _list(row, f"{where}.rows[{r}]")
            if len(cells) != len(columns):
                raise _FieldError(
                    f"{where}.rows[{r}]", f"has {len(cells)} cells for {len(columns)} columns"
                )
            rows.append([_cell(c, f"{where}.rows[{r}][{k}]") for k, c in enumerate(cells)])
        tables.append(
            AnalysisTable(_text(table["caption"], f"{where}.caption", True), columns, rows)
        )
    figures = []
    for i, raw in enumerate(_list(doc["figures"], "figures")):
        where = f"figures[{i}]"
        figure = _keys(raw, where, ("file", "caption"))
        figures.append(
            AnalysisFigure(
                _figure_file(figure["file"], f"{where}.file"),
                _text(figure["caption"], f"{where}.caption", True),
            )
        )
    return AnalysisSummary(
        kind=_text(doc["kind"], "kind"),
        title=_text(doc["title"], "title"),
        description=_text(doc["description"], "description"),
        tables=tables,
        figures=figures,
    )


def _check_figures(folder: Path, summary: AnalysisSummary) -> None:
    for i, figure in enumerate(summary.figures):
        path = folder / figure.file
        try:
            with path.open("rb") as handle:
                head = handle.read(len(_PNG))
        except OSError:
            raise _FieldError(f"figures[{i}].file", f"no such file: {path}") from None
        if head != _PNG:
            raise _FieldError(f"figures[{i}].file", f"not a PNG image: {path}")


def write_summary(out_dir: str | Path, summary: AnalysisSummary) -> Path:
    """Check ``summary`` and write it as ``out_dir/analysis.json`` (atomically).

    Write the figures first: every figure must already be a PNG file in ``out_dir``. Non-finite
    numbers in table cells are written as ``null``.

    Returns:
        The path of the written file.

    Raises:
        ValueError: if the summary breaks the format (the message names the field) or a figure
            is missing; nothing is written then.
    """
    folder = Path(out_dir)
    path = folder / SUMMARY_FILE
    document = summary.to_dict()
    try:
        _check_figures(folder, _parse(document))
    except _FieldError as exc:
        raise ValueError(f"{path}: field '{exc.field}': {exc.reason}") from None
    atomic_write_json(path, document)
    return path


def read_summary(folder: str | Path) -> AnalysisSummary:
    """Read and check ``folder/analysis.json`` (its figures must be PNG files in ``folder``).

    Raises:
        DataError: if the file is missing, is not JSON, breaks the format or names a missing
            figure; the message names the file (and line or field), e.g.
            ``runs/an/drift/analysis.json: field 'tables[0].rows[2]': has 3 cells for 4 columns``.
    """
    path = Path(folder) / SUMMARY_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError("no such file", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the file: {exc}", path) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"not valid JSON: {exc.msg} (column {exc.colno})", path, exc.lineno
        ) from None
    try:
        summary = _parse(data)
        _check_figures(path.parent, summary)
    except _FieldError as exc:
        raise DataError(exc.reason, path, field=exc.field) from None
    return summary
