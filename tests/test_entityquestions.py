"""Tests for the EntityQuestions loader, on a small fake tree (plus one real-data check)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from factkeep.data.entityquestions import (
    ENV_VAR,
    default_eq_root,
    load_entityquestions,
    load_templates,
    subject_from_question,
)
from factkeep.errors import DataError

TEMPLATES = {
    "P17": "Which country is [X] located in?",
    "P36": "What is the capital of [X]?",
    "P40": "Who is [X]'s child?",
    "P19_similar": "What is the birthplace of [X]?",
}


def dump(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=4, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture
def eq_root(tmp_path: Path) -> Path:
    root = tmp_path / "eq"
    dump(root / "relation_query_templates.json", TEMPLATES)
    data = {
        "P17": [
            {"question": "Which country is Painblanc located in?", "answers": ["France"]},
            {"question": "Which country is Grímsstaðir located in?", "answers": ["Iceland"]},
        ],
        "P36": [{"question": "What is the capital of Bavaria?", "answers": ["Munich", "München"]}],
        "P40": [{"question": "Who is Thurgood Marshall's child?", "answers": ["John W. Marshall"]}],
    }
    for split in ("train", "dev", "test"):
        for rel, rows in data.items():
            dump(root / split / f"{rel}.{split}.json", rows)
    return root


@pytest.mark.parametrize(
    ("question", "template", "subject"),
    [
        ("Who is Thurgood Marshall's child?", "Who is [X]'s child?", "Thurgood Marshall"),
        ("Who is Jesus's child's child?", "Who is [X]'s child?", "Jesus's child"),
        ("What is the capital of Bavaria?", "What is the capital of [X]?", "Bavaria"),
        (
            "Which country is St. Mary (a.k.a. [1]) located in?",
            "Which country is [X] located in?",
            "St. Mary (a.k.a. [1])",
        ),
        ("Painblanc is where?", "[X] is where?", "Painblanc"),
        ("Born in: Zürich", "Born in: [X]", "Zürich"),
        ("Where was Luka Elsner born?", "Who founded [X]?", None),
        ("What is the capital of ?", "What is the capital of [X]?", None),
        ("what is the capital of Bavaria?", "What is the capital of [X]?", None),
    ],
)
def test_subject_from_question(question: str, template: str, subject: str | None) -> None:
    assert subject_from_question(question, template) == subject


def test_default_eq_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert default_eq_root() == tmp_path.resolve()
    monkeypatch.delenv(ENV_VAR)
    monkeypatch.setenv("FACTKEEP_CACHE", str(tmp_path / "empty-cache"))  # no cached download
    monkeypatch.chdir(tmp_path)
    assert default_eq_root() == (tmp_path.parent / "shared" / "data" / "entityquestions").resolve()


def test_load_templates(eq_root: Path) -> None:
    assert load_templates(eq_root) == TEMPLATES


def test_load_fake_tree(eq_root: Path) -> None:
    facts = load_entityquestions(eq_root)
    assert len(facts) == 12
    assert [f.id for f in facts[:4]] == ["P17.train.0", "P17.train.1", "P36.train.0", "P40.train.0"]
    first = facts[0]
    assert first.relation == "P17" and first.subject == "Painblanc"
    assert first.answers == ["France"] and first.category is None
    assert first.meta == {"split": "train", "source": "entityquestions"}
    assert facts[1].subject == "Grímsstaðir"
    assert facts[3].subject == "Thurgood Marshall"
    assert [f.meta["split"] for f in facts] == ["train"] * 4 + ["dev"] * 4 + ["test"] * 4
    assert len({f.id for f in facts}) == 12
    for fact in facts:
        fact.validate()


def test_root_from_env(eq_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(eq_root))
    assert len(load_entityquestions(splits=["dev"])) == 4


def test_filters(eq_root: Path) -> None:
    facts = load_entityquestions(eq_root, splits=("test",), relations=["P40", "P36"])
    assert [f.id for f in facts] == ["P36.test.0", "P40.test.0"]


def test_unknown_relation_lists_available(eq_root: Path) -> None:
    with pytest.raises(DataError, match="P999") as err:
        load_entityquestions(eq_root, relations=["P17", "P999"])
    assert "available: P17, P36, P40" in str(err.value)


def test_unknown_split(eq_root: Path) -> None:
    with pytest.raises(DataError, match="unknown split 'validation'"):
        load_entityquestions(eq_root, splits=["validation"])


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found") as err:
        load_entityquestions(tmp_path / "nowhere")
    assert "nowhere" in str(err.value)


def test_relation_without_template(eq_root: Path) -> None:
    dump(
        eq_root / "dev" / "P50.dev.json",
        [{"question": "Who is the author of X?", "answers": ["Y"]}],
    )
    with pytest.raises(DataError, match="no template for relation 'P50'") as err:
        load_entityquestions(eq_root, splits=["dev"])
    assert "P50.dev.json" in str(err.value)


def test_invalid_json_located(eq_root: Path) -> None:
    path = eq_root / "train" / "P36.train.json"
    path.write_text(
        '[\n    {"question": "What is the capital of A?",\n     "answers": ["B"]\n  ,\n]'
    )
    with pytest.raises(DataError, match="invalid JSON") as err:
        load_entityquestions(eq_root, splits=["train"])
    assert f"{path}:5:" in str(err.value)


def test_non_utf8_located(eq_root: Path) -> None:
    path = eq_root / "dev" / "P17.dev.json"
    data = path.read_bytes().replace(b"Painblanc", b"Pain\xffblanc")
    path.write_bytes(data)
    line = data[: data.index(b"\xff")].count(b"\n") + 1
    with pytest.raises(DataError, match="UTF-8") as err:
        load_entityquestions(eq_root, splits=["dev"])
    assert f"{path}:{line}:" in str(err.value)


@pytest.mark.parametrize(
    ("element", "field", "reason"),
    [
        ({"question": "Which country is Z located in?"}, "answers", "element 2"),
        ({"question": "", "answers": ["A"]}, "question", "element 2"),
        ({"question": "Which country is Z located in?", "answers": [""]}, "answers", "element 2"),
        ({"question": 5, "answers": ["A"]}, "question", "element 2"),
        (["not", "an", "object"], None, "element 2: expected a JSON object"),
    ],
)
def test_bad_element_located(
    eq_root: Path, element: object, field: str | None, reason: str
) -> None:
    rows = [
        {"question": "Which country is A located in?", "answers": ["X"]},
        {"question": "Which country is B located in?", "answers": ["Y", "Z"]},
        element,
    ]
    path = dump(eq_root / "train" / "P17.train.json", rows)
    text = path.read_text()
    # With indent=4 the third element starts after 2 + 6 + 7 lines of the earlier ones.
    expected_line = 1 + 6 + 7 + 1
    assert text.splitlines()[expected_line - 1].strip() in ("{", "[")
    with pytest.raises(DataError, match=reason) as err:
        load_entityquestions(eq_root, splits=["train"], relations=["P17"])
    assert f"{path}:{expected_line}:" in str(err.value)
    if field:
        assert f"field '{field}'" in str(err.value)


def test_top_level_not_array(eq_root: Path) -> None:
    path = dump(eq_root / "train" / "P17.train.json", {"question": "q"})
    with pytest.raises(DataError, match="expected a JSON array") as err:
        load_entityquestions(eq_root, splits=["train"])
    assert f"{path}:1:" in str(err.value)


def test_subject_fallback(eq_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [
        {"question": "which country is  Painblanc  located in?", "answers": ["France"]},
        {"question": "Where is Painblanc?", "answers": ["France"]},
    ]
    dump(eq_root / "dev" / "P17.dev.json", rows)
    facts = load_entityquestions(eq_root, splits=["dev"], relations=["P17"])
    assert facts[0].subject == "Painblanc"
    assert "subject_recovered" not in facts[0].meta
    assert facts[1].subject == "Where is Painblanc?"
    assert facts[1].meta["subject_recovered"] is False
    assert "1 of 2 subjects not recovered" in caplog.text


def test_real_data() -> None:
    root = default_eq_root()
    if not root.is_dir():
        pytest.skip(f"EntityQuestions not found at {root}")
    facts = load_entityquestions(root)
    assert 200_000 <= len(facts) <= 240_000
    assert all(f.relation and f.subject for f in facts)
    assert not any("subject_recovered" in f.meta for f in facts)
    assert len({f.id for f in facts}) == len(facts)
