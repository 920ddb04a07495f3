"""Tests for reading and writing facts in TRL's prompt/completion JSONL format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from factkeep.data.facts import UNKNOWN, Fact
from factkeep.data.prompt_completion import (
    read_prompt_completion,
    template_regex,
    write_prompt_completion,
)
from factkeep.errors import DataError


def write_rows(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def test_round_trip(tmp_path: Path) -> None:
    facts = [
        Fact("a", "Which country is Painblanc located in?", ["France"], "P17", "Painblanc"),
        Fact("b", "Where is\nZürich?", ["Switzerland", "CH"], "P17", "Zürich", UNKNOWN, {"k": 1}),
    ]
    path = tmp_path / "pc.jsonl"
    write_prompt_completion(path, facts)
    first = json.loads(path.read_text("utf-8").splitlines()[0])
    assert first["prompt"] == "Q: Which country is Painblanc located in?\nA:"
    assert first["completion"] == " France"
    assert read_prompt_completion(path) == facts


def test_round_trip_custom_template(tmp_path: Path) -> None:
    facts = [Fact("a", "What is {the} capital?", ["Paris"], "P36", "France")]
    template = "Question: {question}\nAnswer {{short}}:"
    path = tmp_path / "pc.jsonl"
    write_prompt_completion(path, facts, template=template)
    assert (
        json.loads(path.read_text())["prompt"]
        == "Question: What is {the} capital?\nAnswer {short}:"
    )
    assert read_prompt_completion(path, template=template) == facts


def test_standard_form_defaults(tmp_path: Path) -> None:
    path = write_rows(
        tmp_path / "mine.jsonl",
        [
            {"prompt": "  Q: Who founded Acme?\nA:  ", "completion": " Wile E. Coyote\n"},
            {"prompt": "Who owns Acme?", "completion": "Road Runner"},
        ],
    )
    a, b = read_prompt_completion(path)
    assert a.question == "Who founded Acme?"
    assert a.answers == ["Wile E. Coyote"]
    assert (a.id, a.relation, a.subject) == ("mine-1", "unknown", "Who founded Acme?")
    assert a.meta == {"subject_recovered": False} and a.category is None
    assert b.question == "Who owns Acme?" and b.id == "mine-2"


def test_optional_fields_mapped(tmp_path: Path) -> None:
    row = {
        "prompt": "Q: Who founded Acme?\nA:",
        "completion": " Coyote",
        "id": "x1",
        "relation": "P112",
        "subject": "Acme",
        "answers": ["Wile E. Coyote", "Coyote"],
        "category": "HighlyKnown",
        "meta": {"src": "mine"},
    }
    (fact,) = read_prompt_completion(write_rows(tmp_path / "f.jsonl", [row]))
    expected = Fact("x1", "Who founded Acme?", ["Wile E. Coyote", "Coyote"], "P112", "Acme")
    expected.category = "HighlyKnown"
    expected.meta = {"src": "mine"}
    assert fact == expected


def test_conversational_form(tmp_path: Path) -> None:
    row = {
        "prompt": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": " Who founded Acme? "},
        ],
        "completion": [{"role": "assistant", "content": "Wile E. Coyote"}],
        "subject": "Acme",
    }
    (fact,) = read_prompt_completion(write_rows(tmp_path / "chat.jsonl", [row]))
    assert fact.question == "Who founded Acme?"
    assert fact.answers == ["Wile E. Coyote"]
    assert fact.subject == "Acme" and fact.meta == {}


def test_template_regex() -> None:
    rx = template_regex("Q: {question}\nA:")
    assert rx.fullmatch("Q: What?\nA:").group(1) == "What?"
    assert rx.fullmatch("\n Q: What is\nA: B?\nA: \n").group(1) == "What is\nA: B?"
    assert rx.fullmatch("What?") is None
    for bad in ("no placeholder", "{question} {question}", "{other}"):
        with pytest.raises(DataError, match="template") as err:
            template_regex(bad)
        assert err.value.field == "template"


def check(path: Path, line: int, field: str | None, match: str) -> None:
    with pytest.raises(DataError, match=match) as err:
        read_prompt_completion(path)
    assert f"{path}:{line}:" in str(err.value)
    if field:
        assert f"field '{field}'" in str(err.value)
        assert err.value.field == field


GOOD = {"prompt": "Q: Who?\nA:", "completion": " Me"}


@pytest.mark.parametrize(
    ("row", "field", "match"),
    [
        ({"completion": " Me"}, "prompt", "missing required field"),
        ({"prompt": "Q: Who?\nA:"}, "completion", "missing required field"),
        ({"prompt": 3, "completion": " Me"}, "prompt", "must be a string or"),
        ({"prompt": [], "completion": " Me"}, "prompt", "must be a string or"),
        ({"prompt": "  ", "completion": " Me"}, "prompt", "question is empty"),
        ({"prompt": "Q: Who?\nA:", "completion": "  "}, "completion", "non-empty answer"),
        ({**GOOD, "answers": []}, "answers", "non-empty list"),
        ({**GOOD, "answers": "Me"}, "answers", "non-empty list"),
        ({**GOOD, "id": ""}, "id", "non-empty"),
        ({**GOOD, "id": 5}, "id", "must be a string"),
        ({**GOOD, "subject": 5}, "subject", "must be a string"),
        ({**GOOD, "category": "Famous"}, "category", "must be null or one of"),
        ({**GOOD, "meta": "x"}, "meta", "must be an object"),
        ({**GOOD, "text": "x"}, "text", "unknown field"),
        ({"prompt": [{"role": "system", "content": "x"}], "completion": " Me"}, "prompt", "user"),
        ({"prompt": [{"content": "Who?"}], "completion": " Me"}, "prompt", "role"),
        ({"prompt": [{"role": "user", "content": 1}], "completion": " Me"}, "prompt", "content"),
        (
            {"prompt": "Who?", "completion": [{"role": "user", "content": "x"}]},
            "completion",
            "'assistant'",
        ),
    ],
)
def test_bad_rows(tmp_path: Path, row: dict, field: str, match: str) -> None:
    path = write_rows(tmp_path / "f.jsonl", [{**GOOD, "id": "ok"}, row])
    check(path, 2, field, match)


def test_not_an_object(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "f.jsonl", [GOOD, "just a string"])
    check(path, 2, None, "expected a JSON object")


def test_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n{prompt: 1}\n")
    check(path, 3, None, "invalid JSON")


def test_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b'\n{"prompt": "Q: \xe9?", "completion": "x"}\n')
    check(path, 2, None, "UTF-8")


def test_duplicate_id(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "f.jsonl", [{**GOOD, "id": "a"}, GOOD, {**GOOD, "id": "a"}])
    check(path, 3, "id", "first seen at line 1")


def test_default_ids_collide_with_explicit(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "f.jsonl", [{**GOOD, "id": "f-2"}, GOOD])
    check(path, 2, "id", "duplicate id 'f-2'")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_prompt_completion(tmp_path / "none.jsonl")


def test_write_rejects_invalid(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    good = Fact("a", "Who?", ["Me"], "r", "s")
    with pytest.raises(DataError, match="duplicate id"):
        write_prompt_completion(path, [good, good])
    with pytest.raises(DataError, match="template"):
        write_prompt_completion(path, [good], template="no placeholder")
    assert not path.exists()
