"""Fact sets as the commands name them: a split name of a splits folder, a file, or a dataset.

An entry is read as:

- a Hugging Face dataset source (:mod:`factkeep.data.hf_facts`: ``hub:owner/name[:split]``, a
  ``save_to_disk`` folder, a ``.parquet``/``.json``/``.csv`` file, ``hf:PATH``, any of them with a
  ``#field=column`` mapping), turned into facts with a column mapping;
- a JSONL path (ending in ``.jsonl``): a file whose first record has ``prompt`` and
  ``completion`` is read as TRL prompt/completion data (:mod:`factkeep.data.prompt_completion`),
  any other as facts (:mod:`factkeep.data.facts`);
- otherwise (by :func:`load_fact_set`), a split name: ``d_known`` means
  ``<splits folder>/d_known.jsonl``. A split name has no ``/``; write ``./NAME`` for a dataset
  folder in the working directory.

Example::

    facts = load_fact_set("d_held", "runs/split")
    facts = load_fact_set("hub:owner/trivia:validation#answers=answer.aliases", "")
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from factkeep.config import ConfigError
from factkeep.data.facts import Fact, read_facts, read_jsonl_objects
from factkeep.data.hf_facts import (
    ColumnMap,
    parse_dataset_source,
    read_dataset_facts,
    split_column_mapping,
)
from factkeep.data.prompt_completion import read_prompt_completion
from factkeep.errors import DataError

__all__ = [
    "fact_set_name",
    "fact_set_source",
    "is_split_name",
    "load_fact_set",
    "read_fact_source",
]

Columns = ColumnMap | Mapping[str, str] | None
_FOLDER_HINT = (
    "a folder not written by save_to_disk; to read the data files in it as a dataset, "
    "write hf:{entry}"
)


def is_split_name(entry: str) -> bool:
    """Whether ``entry`` names a split of a splits folder (no ``/``, no ``hub:``/``hf:`` prefix,
    no column mapping, and no ``.jsonl``/``.parquet``/``.json``/``.csv`` suffix)."""
    text, columns = split_column_mapping(entry)
    if columns or "/" in text or text.startswith(("hub:", "hf:")):
        return False
    return not text.lower().endswith((".jsonl", ".parquet", ".json", ".csv"))


def _split_path(entry: str, splits_dir: str) -> Path:
    if not splits_dir:
        raise ConfigError(f"'{entry}' is a split name but data.splits is not set")
    return Path(splits_dir) / f"{entry}.jsonl"


def fact_set_name(entry: str) -> str:
    """The name of a fact set: a split name itself, a dataset source's
    :attr:`~factkeep.data.hf_facts.DatasetSource.name`, or a file's stem."""
    if is_split_name(entry):
        return entry
    source = parse_dataset_source(entry)
    return source.name if source is not None else Path(entry).stem


def fact_set_source(entry: str, splits_dir: str) -> str:
    """Where a fact set is read from: the split's file, the dataset source (without its column
    mapping) or the path."""
    if is_split_name(entry):
        return str(Path(splits_dir) / f"{entry}.jsonl") if splits_dir else entry
    source = parse_dataset_source(entry)
    return source.text if source is not None else entry


def read_fact_source(entry: str, columns: Columns = None) -> list[Fact]:
    """Facts of a dataset source or a JSONL path (facts or TRL prompt/completion).

    Args:
        entry: A dataset source (:mod:`factkeep.data.hf_facts`) or a JSONL path.
        columns: The column mapping of dataset sources (unused for JSONL files).

    Raises:
        DataError: The file or dataset is missing or invalid (located by line or row, and field).
        ConfigError: A bad dataset source or column mapping.
        FactkeepError: A dataset source without the ``datasets`` package.
    """
    source = parse_dataset_source(entry)
    if source is not None:
        return read_dataset_facts(source, columns)
    if Path(entry).is_dir():
        raise DataError(_FOLDER_HINT.format(entry=entry), entry)
    rows = read_jsonl_objects(entry)
    if rows and "prompt" in rows[0][1] and "completion" in rows[0][1]:
        return read_prompt_completion(entry)
    try:
        return read_facts(entry)
    except DataError as exc:
        first = exc.line is not None and exc.line == rows[0][0]
        if first and exc.reason.startswith(("unknown field", "missing required field")):
            hint = f"; to read it as a dataset with its own columns, write hf:{entry}"
            raise DataError(exc.reason + hint, exc.path, exc.line, exc.field) from None
        raise


def load_fact_set(entry: str, splits_dir: str, columns: Columns = None) -> list[Fact]:
    """Facts of a split name (``d_known`` -> ``<splits_dir>/d_known.jsonl``), a JSONL path or a
    Hugging Face dataset source (see the module docstring).

    Args:
        entry: The fact set.
        splits_dir: The splits folder of split names.
        columns: The column mapping of dataset sources.

    Raises:
        ConfigError: A split name without ``splits_dir``, a missing JSONL file, or a bad dataset
            source.
        DataError: Invalid content (located by line or row, and field).
    """
    if is_split_name(entry):
        path = _split_path(entry, splits_dir)
    else:
        source = parse_dataset_source(entry)
        if source is not None:
            if source.kind != "hub" and not Path(source.location).exists():
                raise ConfigError(f"facts file not found: {source.location}")
            return read_dataset_facts(source, columns)
        path = Path(entry)
        if path.is_dir():
            raise ConfigError(f"{entry}: {_FOLDER_HINT.format(entry=entry)}")
    if not path.is_file():
        raise ConfigError(f"facts file not found: {path}")
    return read_fact_source(str(path), columns)
