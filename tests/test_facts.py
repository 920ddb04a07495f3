"""Tests for the fact data model and the facts JSONL reader/writer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from factkeep.data.facts import (
    CATEGORIES,
    HIGHLY_KNOWN,
    MAYBE_KNOWN,
    UNKNOWN,
    WEAKLY_KNOWN,
    Fact,
    iter_relations,
    read_facts,
    write_facts,
)
from factkeep.errors import DataError


def make_fact(i: int = 0, relation: str = "P17", **kw: object) -> Fact:
    base: dict = {
        "id": f"{relation}.{i}",
        "question": f"Which country is Town {i} located in?",
        "answers": ["France", "French Republic"],
        "relation": relation,
        "subject": f"Town {i}",
    }
    base.update(kw)
    return Fact(**base)


def good_row(i: int = 0) -> dict:
    return make_fact(i).to_dict()


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_categories_order() -> None:
    assert CATEGORIES == (HIGHLY_KNOWN, MAYBE_KNOWN, WEAKLY_KNOWN, UNKNOWN)
    assert CATEGORIES == ("HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown")


def test_round_trip(tmp_path: Path) -> None:
    facts = [
        make_fact(0),
        make_fact(1, category=UNKNOWN, meta={"split": "train", "n": [1, 2]}),
        make_fact(2, relation="P36", question="Où est Zürich ?", subject="Zürich"),
    ]
    path = tmp_path / "sub" / "facts.jsonl"
    write_facts(path, facts)
    assert read_facts(path) == facts
    text = path.read_text(encoding="utf-8")
    assert "Zürich" in text  # not \u-escaped
    lines = text.splitlines()
    assert len(lines) == 3
    first = json.loads(lines[0])
    assert list(first) == ["id", "question", "answers", "relation", "subject", "category", "meta"]
    assert first["category"] is None and first["meta"] == {}


def test_from_dict_defaults_and_copies() -> None:
    row = good_row()
    del row["category"], row["meta"]
    fact = Fact.from_dict(row)
    assert fact.category is None and fact.meta == {}
    fact.answers.append("x")
    assert row["answers"] == ["France", "French Republic"]


def test_blank_lines_and_bom_skipped(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    body = "\n\n" + json.dumps(good_row(0)) + "\n   \n" + json.dumps(good_row(1)) + "\n\n"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    assert [f.id for f in read_facts(path)] == ["P17.0", "P17.1"]


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    assert read_facts(path) == []


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError) as err:
        read_facts(path)
    assert str(path) in str(err.value)
    assert "not found" in str(err.value)


def test_invalid_json(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "f.jsonl", [json.dumps(good_row(0)), '{"id": "x",'])
    with pytest.raises(DataError) as err:
        read_facts(path)
    assert f"{path}:2:" in str(err.value)
    assert "invalid JSON" in str(err.value)
    assert err.value.line == 2


def test_not_an_object(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "f.jsonl", [json.dumps(good_row(0)), "[1, 2]"])
    with pytest.raises(DataError, match="expected a JSON object") as err:
        read_facts(path)
    assert f"{path}:2:" in str(err.value)


def test_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    good = json.dumps(good_row(0)).encode()
    bad = json.dumps(good_row(1)).encode().replace(b"Town", b"T\xffwn")
    path.write_bytes(good + b"\n\n" + bad + b"\n")
    with pytest.raises(DataError, match="UTF-8") as err:
        read_facts(path)
    assert f"{path}:3:" in str(err.value)
    assert err.value.line == 3


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("question", None, "must be a string"),
        ("question", 3, "must be a string"),
        ("question", "   ", "non-empty"),
        ("id", "", "non-empty"),
        ("relation", ["P17"], "must be a string"),
        ("subject", "", "non-empty"),
        ("answers", [], "non-empty list"),
        ("answers", "France", "non-empty list"),
        ("answers", ["France", ""], "element 1"),
        ("answers", ["France", 7], "element 1"),
        ("category", "Known", "must be null or one of"),
        ("meta", [1], "must be an object"),
    ],
)
def test_bad_field(tmp_path: Path, field: str, value: object, reason: str) -> None:
    row = good_row(1)
    row[field] = value
    path = write_lines(tmp_path / "f.jsonl", [json.dumps(good_row(0)), json.dumps(row)])
    with pytest.raises(DataError, match=reason) as err:
        read_facts(path)
    assert f"{path}:2:" in str(err.value)
    assert f"field '{field}'" in str(err.value)
    assert err.value.field == field


@pytest.mark.parametrize("field", ["id", "question", "answers", "relation", "subject"])
def test_missing_field(tmp_path: Path, field: str) -> None:
    row = good_row(0)
    del row[field]
    path = write_lines(tmp_path / "f.jsonl", [json.dumps(row)])
    with pytest.raises(DataError, match="missing required field") as err:
        read_facts(path)
    assert f"{path}:1: field '{field}'" in str(err.value)


def test_unknown_key(tmp_path: Path) -> None:
    row = good_row(0)
    row["answer"] = "France"
    path = write_lines(tmp_path / "f.jsonl", [json.dumps(row)])
    with pytest.raises(DataError, match="unknown field") as err:
        read_facts(path)
    assert f"{path}:1: field 'answer'" in str(err.value)


def test_duplicate_id(tmp_path: Path) -> None:
    rows = [good_row(0), good_row(1), good_row(0)]
    path = write_lines(tmp_path / "f.jsonl", [json.dumps(r) for r in rows])
    with pytest.raises(DataError, match=r"duplicate id 'P17\.0'") as err:
        read_facts(path)
    assert f"{path}:3: field 'id'" in str(err.value)
    assert "line 1" in str(err.value)


def test_write_rejects_invalid_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with pytest.raises(DataError, match="duplicate id"):
        write_facts(path, [make_fact(0), make_fact(0)])
    with pytest.raises(DataError) as err:
        write_facts(path, [make_fact(0), make_fact(1, answers=[])])
    assert err.value.field == "answers" and err.value.line == 2
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_iter_relations() -> None:
    facts = [make_fact(0, "P36"), make_fact(1, "P17"), make_fact(2, "P36")]
    groups = iter_relations(facts)
    assert list(groups) == ["P17", "P36"]
    assert [f.id for f in groups["P36"]] == ["P36.0", "P36.2"]
