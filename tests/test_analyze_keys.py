"""The key-type experiment: synthetic keys and values, and ``factkeep analyze keys`` end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from factkeep.analysis.keys import name_like_keys, new_facts, question_template, uuid_keys
from factkeep.cli import main
from factkeep.data.facts import Fact, read_facts, write_facts
from factkeep.models.tokenizer import build_word_tokenizer


@pytest.fixture(scope="module")
def world_files(tiny_study) -> dict[str, Path]:
    files = tiny_study("keys")
    facts = read_facts(files["world"])
    held = files["root"] / "held.jsonl"
    write_facts(held, [f for f in facts if f.meta["population"] == "bio"])
    return {**files, "held": held}


def test_name_like_keys_recombine_known_pieces_and_are_new() -> None:
    subjects = ["Ada Lovelace", "Alan Turing", "Grace Hopper"]
    keys = name_like_keys(subjects, 5, random.Random(0))
    assert len(set(keys)) == 5
    for key in keys:
        first, last = key.split()
        assert first in {"Ada", "Alan", "Grace"} and last in {"Lovelace", "Turing", "Hopper"}
        assert key not in subjects
    with pytest.raises(ValueError, match="at most 6 new names"):
        name_like_keys(subjects, 7, random.Random(0))


def test_uuids_are_spelled_apart_only_for_a_tokenizer_that_needs_it() -> None:
    world_tok = build_word_tokenizer(["q a 0 1 2 3 4 5 6 7 8 9 a b c d e f"])
    keys = uuid_keys(3, random.Random(0), world_tok)
    assert all(len(k.split()) == 8 and all(len(c) == 1 for c in k.split()) for k in keys)
    assert world_tok.unk_token_id not in world_tok(keys[0])["input_ids"]
    knows_it = build_word_tokenizer(["3f9a2c7b"])
    assert all(" " not in k and len(k) == 8 for k in uuid_keys(3, random.Random(0), knows_it))


def test_new_facts_use_the_relation_question_and_values() -> None:
    known = [
        Fact("1", "Where was Ada Lovelace born?", ["London"], "birth_city", "Ada Lovelace"),
        Fact("2", "Where was Alan Turing born?", ["Paris"], "birth_city", "Alan Turing"),
        Fact("3", "When was Alan Turing born?", ["1912"], "birth_year", "Alan Turing"),
    ]
    assert question_template(known, "birth_city") == "Where was {key} born?"
    tok = build_word_tokenizer(["where was born ? london paris 0 1 2 3 4 5 6 7 8 9 a b c d e f"])
    facts = new_facts("uuid", "relation", 4, known, "birth_city", tok, random.Random(1))
    assert len({f.subject for f in facts}) == 4
    for f in facts:
        assert f.question == f"Where was {f.subject} born?"
        assert f.answers[0] in {"London", "Paris"} and f.relation == "birth_city"
    rand = new_facts("name_like", "random", 2, known, "birth_city", tok, random.Random(1))
    assert all(f.answers[0] not in {"London", "Paris"} for f in rand)
    assert all(f.subject not in {"Ada Lovelace", "Alan Turing"} for f in rand)


def test_analyze_keys_end_to_end(world_files, tmp_path, capsys) -> None:
    out = tmp_path / "keys"
    args = [
        "analyze",
        "keys",
        f"model={world_files['model']}",
        f"held={world_files['held']}",
        f"pieces_from=[{world_files['world']}]",
        "scales=[6]",
        "min_steps=2",
        "epochs=1",
        "train=[eval.max_new_tokens=3]",
        f"out={out}",
    ]
    assert main(args) == 0
    rows = json.loads((out / "keys.json").read_text())["rows"]
    assert [(r["key_type"], r["scale"]) for r in rows] == [("name_like", 6), ("uuid", 6)]
    for r in rows:
        assert 0.0 <= r["forgetting"] <= 1.0 and 0.0 <= r["new_learned"] <= 1.0
        run = out / "runs" / r["run"]
        assert (run / "results.json").is_file() or (run / "metrics.jsonl").is_file()
        assert len((out / "sets" / r["run"] / "new.jsonl").read_text().splitlines()) == 6
    assert (out / "keys.png").read_bytes()[:4] == b"\x89PNG"
    assert "| name_like | relation | 6 |" in (out / "keys.md").read_text()
    assert "Key-type experiment" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["key_types=[guid]"], "key_types"),
        (["relation=no_such"], "no_such"),
        (["scales=[100000]"], "cannot make 100000 name_like facts"),
        (["scales=[6]", "train=[optim.no_such=1]"], "no_such"),
    ],
)
def test_bad_options_exit_2_and_write_nothing(
    world_files, tmp_path, capsys, extra, message
) -> None:
    out = tmp_path / "bad"
    args = ["analyze", "keys", f"model={world_files['model']}", f"held={world_files['held']}"]
    assert main([*args, f"out={out}", *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
