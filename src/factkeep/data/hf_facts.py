"""Facts from Hugging Face datasets: saved folders, Parquet/JSON/CSV files and hub datasets.

A *dataset source* is accepted wherever factkeep reads facts (``factkeep probe facts=``,
``factkeep split categories=``, ``factkeep train data.train=``/``data.eval=``/..., ``factkeep eval
facts=``)::

    data/qa_saved                a folder written by ``Dataset.save_to_disk``
    data/qa_saved:validation     one split of a folder written by ``DatasetDict.save_to_disk``
    data/qa.parquet              a Parquet file (also ``.json``: JSON Lines or an array of
                                 objects; ``.csv``)
    hf:data/qa.jsonl             any local file or folder read with ``datasets`` (a plain
                                 ``.jsonl`` path is a factkeep facts file; ``hf:`` reads it as a
                                 dataset; a folder of data files, e.g. a downloaded hub repository,
                                 also needs ``hf:``)
    hub:owner/name               a hub dataset (its only split), ``hub:owner/name:split`` or
                                 ``hub:owner/name:config:split``
    SOURCE#question=q#answers=a  any of the above with a column mapping for this source

Each row becomes a :class:`~factkeep.data.facts.Fact` through a column mapping
(:class:`ColumnMap`): the command's ``columns.*`` options, overridden per source by
``#field=column`` pieces. A field that no option names is looked up under its default column,
then under common alternatives (:data:`DEFAULT_COLUMNS`; used only when exactly one is present).
``question``, ``answers``, ``relation`` and ``subject`` are required; ``id`` is generated as
``{name}-{row}`` (the source's :attr:`DatasetSource.name`, the 0-based row index) when the
dataset has no id column; ``category`` and ``meta`` are optional. A dotted column
(``answers=answers.text``) reads a field of a struct column (or of every struct of a list column).
``answers`` may hold a list of strings or one string (a string holding a JSON array of strings,
as in PopQA's ``possible_answers``, is read as that list); integer ids and answers are written as
strings. Other columns are ignored.

Every row is converted and validated before anything is returned; an error names the source,
the 0-based row (as in ``dataset[row]``) and the field::

    data/facts.parquet: row 12: field 'answers': must be a non-empty list of strings (column 'a')

``datasets`` is an optional dependency (``pip install 'factkeep[datasets]'``), imported only when
a dataset source is read.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from factkeep.config import ConfigError, help_field
from factkeep.data.facts import Fact
from factkeep.errors import DataError, FactkeepError

__all__ = [
    "DEFAULT_COLUMNS",
    "ColumnMap",
    "DatasetRowError",
    "DatasetSource",
    "parse_dataset_source",
    "read_dataset_facts",
    "rows_to_facts",
]

DEFAULT_COLUMNS: dict[str, tuple[str, ...]] = {
    "question": ("question", "query"),
    "answers": ("answers", "answer", "aliases", "possible_answers"),
    "relation": ("relation", "prop", "property", "predicate"),
    "subject": ("subject", "subj", "entity"),
    "id": ("id", "question_id", "qid"),
    "category": ("category",),
    "meta": ("meta",),
}
"""Per fact field, the columns looked up when no option names one: the first (the field's own
name) wins; an alternative is used only when it is the only one present."""

REQUIRED_FIELDS = ("question", "answers", "relation", "subject")
FILE_FORMATS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}
"""File suffix -> ``datasets`` builder; ``.jsonl`` is read this way only with ``hf:`` or a
column mapping (otherwise it is a factkeep facts file)."""
_AUTO_SUFFIXES = (".parquet", ".json", ".csv")
_SAVED_MARKERS = ("state.json", "dataset_dict.json")
_INSTALL = "pip install 'factkeep[datasets]'"


def _alternatives(name: str) -> str:
    first, *others = DEFAULT_COLUMNS[name]
    return f"'{first}'" + (f", else {' / '.join(others)}" if others else "")


@dataclass
class ColumnMap:
    """Which dataset column holds each fact field (empty: the default column, see
    docs/datasets.md). Applies to Hugging Face dataset sources only; a source's own
    ``#field=column`` pieces override it."""

    question: str = help_field(
        "", f"Column of the question (default: {_alternatives('question')})."
    )
    answers: str = help_field(
        "",
        "Column of the answers: a list of strings or one string; a dotted name reads a struct "
        f"field, e.g. answers.text (default: {_alternatives('answers')}).",
    )
    relation: str = help_field(
        "", f"Column of the relation (default: {_alternatives('relation')})."
    )
    subject: str = help_field("", f"Column of the subject (default: {_alternatives('subject')}).")
    id: str = help_field(
        "",
        f"Column of the fact id (default: {_alternatives('id')}; if none exists, ids are "
        "generated as {name}-{row}).",
    )
    category: str = help_field(
        "", "Column of the SLiCK category (default: 'category' if present, else none)."
    )
    meta: str = help_field(
        "", "Column of the metadata object (default: 'meta' if present, else empty)."
    )

    def as_dict(self) -> dict[str, str]:
        """The fields that name a column (empty ones left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}


FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ColumnMap))


class DatasetRowError(DataError):
    """Invalid dataset content, located by source, 0-based row and field.

    Example message: ``data/facts.parquet: row 12: field 'answers': must be a non-empty list of
    strings (column 'a')``. ``line`` is None; ``row`` holds the row index.
    """

    def __init__(
        self, message: str, source: str, row: int | None = None, field: str | None = None
    ) -> None:
        super().__init__(message, source, None, field)
        self.row = row
        where = source + (f": row {row}" if row is not None else "")
        what = f" field '{field}':" if field else ""
        self.args = (f"{where}:{what} {message}",)


@dataclass(frozen=True)
class DatasetSource:
    """A parsed dataset source (see the module docstring for the syntax).

    Attributes:
        kind: ``hub`` (a hub id), ``saved`` (a ``save_to_disk`` folder), ``file`` (a data file)
            or ``folder`` (a folder of data files read by ``datasets.load_dataset``).
        location: The hub id or the local path.
        config: The hub configuration name, if given.
        split: The split, if given.
        columns: The source's own column mapping (``#field=column`` pieces).
        text: The source as written, without its column mapping (names it in messages).
    """

    kind: Literal["hub", "saved", "file", "folder"]
    location: str
    config: str | None = None
    split: str | None = None
    columns: Mapping[str, str] | None = None
    text: str = ""

    @property
    def name(self) -> str:
        """A short name: the file stem, folder name or hub dataset name, then ``-config`` and
        ``-split`` when given (e.g. ``trivia_qa-rc-validation``); generated ids start with it."""
        if self.kind == "hub":
            base = self.location.rstrip("/").rsplit("/", 1)[-1]
        else:
            path = Path(self.location)
            base = path.stem if self.kind == "file" else path.name or str(path)
        return "-".join(part for part in (base, self.config, self.split) if part)


def split_column_mapping(entry: str) -> tuple[str, dict[str, str]]:
    """Split ``SOURCE#field=column#...`` into the source and its column mapping.

    A ``#`` belongs to the path unless every ``#``-separated piece after it is ``key=value``.

    Raises:
        ConfigError: A piece names an unknown field or no column.
    """
    parts = entry.split("#")
    for k in range(1, len(parts)):
        pieces = parts[k:]
        if not all("=" in piece for piece in pieces):
            continue
        mapping: dict[str, str] = {}
        for piece in pieces:
            key, _, column = (s.strip() for s in piece.partition("="))
            if key not in FIELDS:
                raise ConfigError(
                    f"{entry}: unknown field '{key}' in the column mapping "
                    f"(fields: {', '.join(FIELDS)})"
                )
            if not column:
                raise ConfigError(f"{entry}: the column mapping '{key}=' names no column")
            if "," in column and "=" in column:
                raise ConfigError(
                    f"{entry}: separate the pieces of a column mapping with '#', not ',' "
                    "(e.g. data.parquet#question=q#answers=a)"
                )
            mapping[key] = column
        return "#".join(parts[:k]), mapping
    return entry, {}


def _is_saved_folder(path: Path) -> bool:
    return any((path / marker).is_file() for marker in _SAVED_MARKERS)


def _local_path_and_split(text: str) -> tuple[Path, str | None]:
    """``folder:split`` -> (folder, split) when ``text`` itself does not exist."""
    path = Path(text)
    if not path.exists() and ":" in text:
        base, _, split = text.rpartition(":")
        if base and split and Path(base).is_dir():
            return Path(base), split
    return path, None


def parse_dataset_source(entry: str) -> DatasetSource | None:
    """Parse ``entry`` as a dataset source, or None if it is not one (a factkeep JSONL path or a
    split name).

    It is one if it starts with ``hub:`` or ``hf:``, has a column mapping, ends in ``.parquet``,
    ``.json`` or ``.csv``, or is a folder written by ``save_to_disk`` (``:split`` may follow
    it).

    Raises:
        ConfigError: An ``hf://`` URL, an empty hub id, or a bad column mapping.
    """
    text, columns = split_column_mapping(entry)
    if text.startswith("hf://"):
        raise ConfigError(
            f"{text}: write a hub dataset as hub:owner/name[:split] "
            "(or hub:owner/name:config:split)"
        )
    if text.startswith("hub:"):
        parts = text[len("hub:") :].split(":")
        if not parts[0] or len(parts) > 3 or not all(parts):
            raise ConfigError(
                f"{text}: expected hub:owner/name, hub:owner/name:split or "
                "hub:owner/name:config:split"
            )
        config = parts[1] if len(parts) == 3 else None
        split = parts[-1] if len(parts) > 1 else None
        return DatasetSource("hub", parts[0], config, split, columns, text)
    forced = text.startswith("hf:")
    path, split = _local_path_and_split(text[len("hf:") :] if forced else text)
    if path.is_dir():
        kind: Literal["saved", "folder"] = "saved" if _is_saved_folder(path) else "folder"
        if kind == "saved" or forced or columns:
            return DatasetSource(kind, str(path), None, split, columns, text)
        return None
    if forced or columns or path.suffix.lower() in _AUTO_SUFFIXES:
        return DatasetSource("file", str(path), None, None, columns, text)
    return None


def _import_datasets(source: DatasetSource) -> Any:
    """The ``datasets`` module, or a clear error naming the extra to install."""
    # Imported here, not at the top: datasets is an optional dependency (factkeep[datasets]) that
    # only dataset sources need, and importing it takes a second.
    try:
        import datasets
    except ImportError:
        raise FactkeepError(
            f"{source.text}: reading a Hugging Face dataset needs the 'datasets' package: "
            f"{_INSTALL}"
        ) from None
    return datasets


def _describe(exc: BaseException) -> str:
    """``Type: message`` of an exception and of the causes it wraps (the root cause says what is
    wrong in the file, e.g. a JSON syntax error under ``DatasetGenerationError``)."""
    parts: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(parts) < 3:
        text = f"{type(current).__name__}: {current}".strip()
        if text not in parts:
            parts.append(text)
        current = current.__cause__ or current.__context__
    return "; caused by ".join(parts)


def _pick_split(data: Any, source: DatasetSource, datasets: Any) -> Any:
    """The ``Dataset`` of ``data``: itself, the requested split, or the only split."""
    if not isinstance(data, datasets.DatasetDict):
        if source.split is not None and source.kind != "hub":
            raise DataError(f"a single dataset has no split '{source.split}'", source.text)
        return data
    names = list(data)
    if source.split is not None:
        if source.split not in data:
            raise DataError(f"no split '{source.split}' (splits: {', '.join(names)})", source.text)
        return data[source.split]
    if len(names) == 1:
        return data[names[0]]
    raise DataError(
        f"the dataset has splits {', '.join(names)}: choose one with {source.text}:SPLIT",
        source.text,
    )


@contextmanager
def _open_dataset(source: DatasetSource) -> Iterator[Any]:
    """Load the source's ``Dataset``; local data files are prepared in a temporary cache that is
    removed on exit (nothing is left in the user's cache)."""
    datasets = _import_datasets(source)
    path = Path(source.location)
    if source.kind != "hub" and not path.exists():
        what = "folder" if source.kind in ("saved", "folder") else "file"
        raise DataError(f"{what} not found", source.text)
    if source.kind == "file" and path.suffix.lower() not in FILE_FORMATS:
        raise DataError(
            f"cannot tell the format of '{path.name}' (use {', '.join(FILE_FORMATS)}, a "
            "save_to_disk folder or a folder of data files)",
            source.text,
        )
    with tempfile.TemporaryDirectory(prefix="factkeep-datasets-") as cache:
        try:
            if source.kind == "hub":
                data = datasets.load_dataset(
                    source.location, name=source.config, split=source.split
                )
            elif source.kind == "saved":
                data = datasets.load_from_disk(str(path))
            elif source.kind == "folder":
                data = datasets.load_dataset(str(path), cache_dir=cache)
            else:
                builder = FILE_FORMATS[path.suffix.lower()]
                data = datasets.load_dataset(
                    builder, data_files=[str(path)], split="train", cache_dir=cache
                )
        except Exception as exc:  # any failure of the library: name the source and the cause
            raise DataError(f"cannot load the dataset: {_describe(exc)}", source.text) from exc
        yield _pick_split(data, source, datasets)


def _column_exists(column: str, names: list[str]) -> bool:
    return column in names or ("." in column and column.split(".", 1)[0] in names)


def resolve_columns(
    names: list[str], columns: Mapping[str, str], source: str
) -> dict[str, str | None]:
    """The column of every fact field (None: absent optional field).

    Args:
        names: The dataset's column names.
        columns: Explicit field -> column choices (dotted columns read struct fields).
        source: The source, named in errors.

    Raises:
        DatasetRowError: A named column is missing, a required field has no column, or several
            alternatives fit a field.
    """
    have = ", ".join(names) or "none"
    resolved: dict[str, str | None] = {}
    for name in FIELDS:
        column = columns.get(name)
        if column:
            if not _column_exists(column, names):
                raise DatasetRowError(f"no column '{column}' (columns: {have})", source, None, name)
            resolved[name] = column
            continue
        first, *others = DEFAULT_COLUMNS[name]
        found = [first] if first in names else [c for c in others if c in names]
        if len(found) > 1:
            raise DatasetRowError(
                f"columns {' and '.join(map(repr, found))} could both be it; choose one with "
                f"{source}#{name}=COLUMN (or the option columns.{name}=COLUMN)",
                source,
                None,
                name,
            )
        if not found and name in REQUIRED_FIELDS:
            raise DatasetRowError(
                f"no column found (looked for {', '.join(DEFAULT_COLUMNS[name])}; columns: "
                f"{have}); name it with {source}#{name}=COLUMN (or the option "
                f"columns.{name}=COLUMN)",
                source,
                None,
                name,
            )
        resolved[name] = found[0] if found else None
    return resolved


def _value(row: Mapping[str, Any], column: str) -> Any:
    """The value of ``column`` in ``row``; a dotted column reads struct fields (mapped over a
    list of structs). Raises KeyError naming the missing part."""
    if column in row:
        return row[column]
    head, *parts = column.split(".")
    value = row[head]
    for part in parts:
        if isinstance(value, Mapping):
            if part not in value:
                raise KeyError(part)
            value = value[part]
        elif isinstance(value, list) and all(isinstance(v, Mapping) for v in value):
            if not all(part in v for v in value):
                raise KeyError(part)
            value = [v[part] for v in value]
        elif value is not None:
            raise KeyError(part)
    return value


def _as_text(value: Any) -> Any:
    """Integers (not booleans) as their decimal string; anything else unchanged."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _answers(value: Any, column: str) -> list[Any]:
    """The answers list of a cell: a list, one string, or a string holding a JSON array."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
            if isinstance(parsed, list) and parsed and all(isinstance(a, str) for a in parsed):
                return parsed
        return [value]
    if isinstance(value, int) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, list):
        return [_as_text(v) for v in value]
    if isinstance(value, Mapping):
        keys = ", ".join(map(str, value))
        raise ValueError(
            f"is a struct with fields {keys}; name the field of the answers, e.g. "
            f"answers={column}.{next(iter(value), 'text')}"
        )
    raise ValueError(f"must be a string or a non-empty list of strings, got {type(value).__name__}")


def _row_fact(
    row: Mapping[str, Any], index: int, columns: Mapping[str, str | None], name: str, source: str
) -> Fact:
    """Convert and validate one row (errors located by row and field)."""
    cells: dict[str, Any] = {}
    for field_name, column in columns.items():
        if column is None:
            cells[field_name] = None
            continue
        try:
            cells[field_name] = _value(row, column)
        except KeyError as exc:
            raise DatasetRowError(
                f"column '{column}' has no field {exc.args[0]!r} in this row",
                source,
                index,
                field_name,
            ) from None
    try:
        answers = _answers(cells["answers"], str(columns["answers"]))
    except ValueError as exc:
        raise DatasetRowError(
            f"{exc} (column '{columns['answers']}')", source, index, "answers"
        ) from None
    fact_id = f"{name}-{index}" if columns["id"] is None else _as_text(cells["id"])
    meta = cells["meta"]
    fact = Fact(
        id=fact_id,
        question=cells["question"],
        answers=answers,
        relation=cells["relation"],
        subject=cells["subject"],
        category=cells["category"],
        meta={} if meta is None else meta,
    )
    try:
        fact.validate()
    except DataError as exc:
        column = columns.get(exc.field or "")
        where = f" (column '{column}')" if column else ""
        raise DatasetRowError(f"{exc.reason}{where}", source, index, exc.field) from None
    fact.meta = dict(fact.meta)
    return fact


def rows_to_facts(
    rows: list[Mapping[str, Any]],
    names: list[str],
    columns: Mapping[str, str] | None = None,
    name: str = "dataset",
    source: str = "<dataset>",
) -> list[Fact]:
    """Convert dataset rows (dicts of column values) to validated facts.

    Args:
        rows: The rows, in order (their 0-based index is the row of errors and generated ids).
        names: The dataset's column names.
        columns: Explicit field -> column choices (the rest use :data:`DEFAULT_COLUMNS`).
        name: The prefix of generated ids (``{name}-{row}``).
        source: The source, named in errors.

    Returns:
        The facts, in row order.

    Raises:
        DatasetRowError: A column is missing or ambiguous, a row's value is invalid, or an id
            repeats; located by row and field.
    """
    resolved = resolve_columns(names, columns or {}, source)
    facts: list[Fact] = []
    seen: dict[str, int] = {}
    for index, row in enumerate(rows):
        fact = _row_fact(row, index, resolved, name, source)
        if fact.id in seen:
            raise DatasetRowError(
                f"duplicate id {fact.id!r} (first seen at row {seen[fact.id]})", source, index, "id"
            )
        seen[fact.id] = index
        facts.append(fact)
    return facts


def read_dataset_facts(
    source: DatasetSource | str, columns: ColumnMap | Mapping[str, str] | None = None
) -> list[Fact]:
    """Read a Hugging Face dataset source as facts (the whole dataset is checked first).

    Args:
        source: A :class:`DatasetSource` or its text (see the module docstring).
        columns: The command's column mapping; the source's own ``#field=column`` pieces
            override it.

    Returns:
        The facts, in row order.

    Raises:
        FactkeepError: The ``datasets`` package is missing.
        ConfigError: ``source`` is text that is not a dataset source, or has a bad mapping.
        DataError: The dataset cannot be loaded, or a column or row is invalid
            (:class:`DatasetRowError`, located by row and field).
    """
    if isinstance(source, str):
        parsed = parse_dataset_source(source)
        if parsed is None:
            raise ConfigError(f"{source}: not a dataset source (see docs/datasets.md)")
        source = parsed
    base = columns.as_dict() if isinstance(columns, ColumnMap) else dict(columns or {})
    chosen = {**base, **(source.columns or {})}
    with _open_dataset(source) as data:
        names = list(data.column_names)
        resolved = resolve_columns(names, chosen, source.text)
        wanted = {c.split(".", 1)[0] if c not in names else c for c in resolved.values() if c}
        rows = data.select_columns([n for n in names if n in wanted]).to_list()
    return rows_to_facts(rows, names, chosen, source.name, source.text)
