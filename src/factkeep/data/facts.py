"""The fact data model: one closed-book QA fact, its validation and its JSONL file format.

A :class:`Fact` is a question with its gold answer aliases, the relation it instantiates and the
subject it is about, plus an optional knowledge category (SliCK: HighlyKnown ... Unknown) and free
metadata. Facts files are JSONL, one object per line with every field present::

    {"id": "P17.train.0", "question": "Which country is Painblanc located in?",
     "answers": ["France"], "relation": "P17", "subject": "Painblanc",
     "category": null, "meta": {"split": "train"}}

Readers validate the whole file before returning and raise :class:`~factkeep.errors.DataError`
located by file, line and field, so callers can check their input before writing anything.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factkeep.errors import DataError
from factkeep.rundir import atomic_write_jsonl

HIGHLY_KNOWN = "HighlyKnown"
MAYBE_KNOWN = "MaybeKnown"
WEAKLY_KNOWN = "WeaklyKnown"
UNKNOWN = "Unknown"
CATEGORIES: tuple[str, ...] = (HIGHLY_KNOWN, MAYBE_KNOWN, WEAKLY_KNOWN, UNKNOWN)
"""The knowledge categories, from best to least known."""

_STR_FIELDS = ("id", "question", "relation", "subject")
_REQUIRED = ("id", "question", "answers", "relation", "subject")
_FIELDS = (*_REQUIRED, "category", "meta")


@dataclass
class Fact:
    """One closed-book QA fact.

    Attributes:
        id: Unique identifier within a facts file.
        question: The question text.
        answers: Gold answer aliases, non-empty; the first is the canonical answer.
        relation: The relation identifier, e.g. a Wikidata property such as ``"P17"``.
        subject: The entity the question is about.
        category: Knowledge category (one of :data:`CATEGORIES`) or None if not yet probed.
        meta: Free-form JSON-serialisable metadata (split, source, ...).
    """

    id: str
    question: str
    answers: list[str]
    relation: str
    subject: str
    category: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def validate(self, path: str | Path | None = None, line: int | None = None) -> None:
        """Check every field's type and value.

        Args:
            path: File to name in the error, if any.
            line: Line to name in the error, if any.

        Raises:
            DataError: A field is mistyped, empty or out of range.
        """
        for name in _STR_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, str):
                raise DataError(f"must be a string, got {type(value).__name__}", path, line, name)
            if not value.strip():
                raise DataError("must be a non-empty string", path, line, name)
        answers = self.answers
        if not isinstance(answers, list) or not answers:
            raise DataError("must be a non-empty list of strings", path, line, "answers")
        for i, alias in enumerate(answers):
            if not isinstance(alias, str) or not alias.strip():
                raise DataError(
                    f"element {i} must be a non-empty string, got {alias!r}", path, line, "answers"
                )
        if self.category is not None and self.category not in CATEGORIES:
            raise DataError(
                f"must be null or one of {', '.join(CATEGORIES)}, got {self.category!r}",
                path,
                line,
                "category",
            )
        if not isinstance(self.meta, dict):
            raise DataError(
                f"must be an object, got {type(self.meta).__name__}", path, line, "meta"
            )

    def to_dict(self) -> dict[str, Any]:
        """The fact as a JSON-ready dict with every field, in a stable key order."""
        return {
            "id": self.id,
            "question": self.question,
            "answers": list(self.answers),
            "relation": self.relation,
            "subject": self.subject,
            "category": self.category,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, d: Any, path: str | Path | None = None, line: int | None = None) -> Fact:
        """Build and validate a fact from a parsed JSON object.

        Args:
            d: The parsed object; ``category`` and ``meta`` may be absent.
            path: File to name in errors.
            line: Line to name in errors.

        Returns:
            The validated fact (``answers`` and ``meta`` are copied).

        Raises:
            DataError: ``d`` is not an object, has an unknown or missing key, or a bad value.
        """
        if not isinstance(d, Mapping):
            raise DataError(f"expected a JSON object, got {type(d).__name__}", path, line)
        for key in d:
            if key not in _FIELDS:
                raise DataError(
                    f"unknown field (allowed: {', '.join(_FIELDS)})", path, line, str(key)
                )
        for key in _REQUIRED:
            if key not in d:
                raise DataError("missing required field", path, line, key)
        meta = d.get("meta")
        fact = cls(
            id=d["id"],
            question=d["question"],
            answers=d["answers"],
            relation=d["relation"],
            subject=d["subject"],
            category=d.get("category"),
            meta={} if meta is None else meta,
        )
        fact.validate(path, line)
        fact.answers = list(fact.answers)
        fact.meta = dict(fact.meta)
        return fact


def read_jsonl_objects(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """Read a JSONL file of objects, checking encoding and syntax line by line.

    Blank lines are skipped; a UTF-8 byte-order mark at the start is tolerated.

    Args:
        path: The file to read.

    Returns:
        ``(line_number, object)`` pairs, line numbers starting at 1.

    Raises:
        DataError: The file is missing or unreadable, a line is not UTF-8, not valid JSON or
            not a JSON object.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except OSError as exc:
        raise DataError(f"cannot read file: {exc.strerror or exc}", path) from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    rows: list[tuple[int, dict[str, Any]]] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(
                f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})",
                path,
                number,
            ) from None
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON: {exc.msg} (column {exc.colno})", path, number) from None
        if not isinstance(obj, dict):
            raise DataError(f"expected a JSON object, got {type(obj).__name__}", path, number)
        rows.append((number, obj))
    return rows


def check_unique_ids(
    facts: Iterable[tuple[int | None, Fact]], path: str | Path | None = None
) -> None:
    """Raise if two facts share an ``id``.

    Args:
        facts: ``(line, fact)`` pairs; ``line`` may be None when there is no file yet.
        path: File to name in the error.

    Raises:
        DataError: On the second occurrence of an id, naming the line of the first.
    """
    seen: dict[str, int | None] = {}
    for line, fact in facts:
        if fact.id in seen:
            first = seen[fact.id]
            where = f"line {first}" if first is not None else "an earlier fact"
            raise DataError(f"duplicate id {fact.id!r} (first seen at {where})", path, line, "id")
        seen[fact.id] = line


def validate_facts(facts: Iterable[Fact], path: str | Path | None = None) -> list[Fact]:
    """Validate every fact and the uniqueness of their ids, e.g. before writing them.

    Args:
        facts: The facts to check.
        path: File to name in errors; lines are the 1-based positions the facts would have.

    Returns:
        The facts as a list.

    Raises:
        DataError: A fact is invalid or an id repeats.
    """
    items = list(facts)
    for number, fact in enumerate(items, start=1):
        if not isinstance(fact, Fact):
            raise DataError(f"expected a Fact, got {type(fact).__name__}", path, number)
        fact.validate(path, number)
    check_unique_ids(enumerate(items, start=1), path)
    return items


def read_facts(path: str | Path) -> list[Fact]:
    """Read and validate a facts JSONL file.

    The whole file is read and checked before anything is returned.

    Args:
        path: The JSONL file.

    Returns:
        The facts, in file order.

    Raises:
        DataError: Missing file, non-UTF-8 bytes, invalid JSON, a line that is not an object, a
            missing, empty, mistyped or unknown field, or a duplicate id; located by line/field.
    """
    rows = [(n, Fact.from_dict(obj, path, n)) for n, obj in read_jsonl_objects(path)]
    check_unique_ids(rows, path)
    return [fact for _, fact in rows]


def write_facts(path: str | Path, facts: Iterable[Fact]) -> None:
    """Validate facts and write them atomically as JSONL, every field on every line.

    Args:
        path: Destination file (parent folders are created).
        facts: The facts to write.

    Raises:
        DataError: A fact is invalid or an id repeats; nothing is written then.
    """
    items = validate_facts(facts, path)
    atomic_write_jsonl(path, (fact.to_dict() for fact in items))


def iter_relations(facts: Iterable[Fact]) -> dict[str, list[Fact]]:
    """Group facts by relation.

    Args:
        facts: The facts to group.

    Returns:
        A dict from relation to its facts (in input order), keys sorted.
    """
    groups: dict[str, list[Fact]] = {}
    for fact in facts:
        groups.setdefault(fact.relation, []).append(fact)
    return {rel: groups[rel] for rel in sorted(groups)}
