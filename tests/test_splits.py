"""The experimental splits (factkeep.data.splits) and the ``factkeep split`` command."""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter

import pytest

from factkeep.cli import main
from factkeep.config import ConfigError
from factkeep.data.facts import Fact, read_facts, write_facts
from factkeep.data.splits import SplitSpec, allocate, build_splits
from factkeep.errors import DataError

CATS = ["HighlyKnown", "Unknown", "HighlyKnown", "Unknown", "MaybeKnown", "WeaklyKnown"]


def _facts() -> list[Fact]:
    """Three relations of 240 / 240 / 120 facts; people (subjects) have facts in every relation;
    answers repeat (20 values per relation); every 10th fact has two gold answers; 1/3 of the
    facts are HighlyKnown, 1/3 Unknown. Relation 'rare' is 10% HighlyKnown, the rest Unknown."""
    facts = []
    for offset, (rel, n) in enumerate((("born", 240), ("city", 240), ("job", 120))):
        for i in range(n):
            person = f"Person{i}"
            answers = [f"{rel}Value{i % 20}"] + ([f"{rel}Other{i}"] if i % 10 == 9 else [])
            category = CATS[(i + offset) % len(CATS)]
            facts.append(Fact(f"{rel}.{i}", f"{rel} of {person}?", answers, rel, person, category))
    for i in range(40):
        category = "HighlyKnown" if i < 4 else "Unknown"
        facts.append(Fact(f"rare.{i}", f"rare {i}?", [f"r{i}"], "rare", f"Rare{i}", category))
    return facts


SPEC = SplitSpec(n_held=40, n_dev=20, held_disjoint_answers=False)


def _norm(text: str) -> str:
    return re.sub(r"\W+", "", text.casefold())


def test_allocate_is_proportional_capped_and_exact() -> None:
    assert allocate(10, {"a": 2, "b": 1, "c": 1}, {"a": 100, "b": 100, "c": 100}) == {
        "a": 5, "b": 3, "c": 2
    }  # fmt: skip
    # 'a' is capped at 2: the rest goes to b and c in proportion.
    assert allocate(10, {"a": 10, "b": 1, "c": 1}, {"a": 2, "b": 100, "c": 100}) == {
        "a": 2, "b": 4, "c": 4
    }  # fmt: skip
    assert allocate(0, {"a": 1}, {"a": 0}) == {"a": 0}
    with pytest.raises(ValueError):
        allocate(5, {"a": 1}, {"a": 4})


def test_splits_are_disjoint_and_clean() -> None:
    splits = build_splits(_facts(), SPEC)
    named = splits.as_dict()
    ids = [f.id for items in named.values() for f in items]
    assert len(ids) == len(set(ids))  # no fact in two splits
    assert {f.category for f in splits.d_known} == {"HighlyKnown"}
    assert {f.category for f in splits.d_unknown} == {"Unknown"}
    assert {f.category for f in splits.d_held} == {"HighlyKnown"}
    assert {f.category for f in splits.dev} == {"HighlyKnown", "Unknown"}
    held_out = splits.d_held + splits.dev
    train = splits.d_known + splits.d_unknown
    assert not {f.subject for f in held_out} & {f.subject for f in train}
    assert all(len(f.answers) == 1 for items in named.values() for f in items)
    assert len(splits.d_held) == 40 and len(splits.dev) == 20
    assert Counter(f.category for f in splits.dev) == {"HighlyKnown": 10, "Unknown": 10}
    assert "rare" in splits.report["dropped_relations"]  # 10% Known < 30%
    assert splits.report["dropped_multi_answer"] == 24 + 24 + 12
    assert splits.report["removed_for_disjointness"]["born"]["subject"] > 0


def test_answer_disjointness_is_an_option() -> None:
    with_answers = build_splits(_facts(), dataclasses.replace(SPEC, held_disjoint_answers=True))
    held_answers = {_norm(a) for f in with_answers.d_held + with_answers.dev for a in f.answers}
    train = with_answers.d_known + with_answers.d_unknown
    assert train and not held_answers & {_norm(a) for f in train for a in f.answers}
    removed = with_answers.report["removed_for_disjointness"]
    assert sum(r["answer"] for r in removed.values()) > 0
    without = build_splits(_facts(), SPEC)
    assert len(without.d_known) > len(with_answers.d_known)
    assert sum(r["answer"] for r in without.report["removed_for_disjointness"].values()) == 0


def test_stratified_by_relation_with_the_unknown_fraction() -> None:
    spec = dataclasses.replace(SPEC, n_train=60, n_held=30, n_dev=0, unknown_fraction=0.25)
    splits = build_splits(_facts(), spec)
    held = Counter(f.relation for f in splits.d_held)
    assert held == {"born": 12, "city": 12, "job": 6}  # relation sizes 216 : 216 : 108
    known = Counter(f.relation for f in splits.d_known)
    unknown = Counter(f.relation for f in splits.d_unknown)
    assert sum(known.values()) + sum(unknown.values()) == 60
    for rel in ("born", "city", "job"):
        total = known[rel] + unknown[rel]
        assert unknown[rel] == int(0.25 * total + 0.5)
    assert known["born"] + unknown["born"] == 24 and known["job"] + unknown["job"] == 12
    assert splits.dev == []


def test_max_train_uses_every_candidate_it_can() -> None:
    splits = build_splits(_facts(), SPEC)
    for rel in ("born", "city", "job"):
        n_known = sum(f.relation == rel for f in splits.d_known)
        n_unknown = sum(f.relation == rel for f in splits.d_unknown)
        assert abs(n_known - n_unknown) <= 1  # unknown_fraction 0.5, as large as possible


def test_relation_filter_and_known_definition() -> None:
    facts = _facts()
    assert build_splits(facts, SPEC).report["kept_relations"] == ["born", "city", "job"]
    loose = build_splits(facts, dataclasses.replace(SPEC, min_known_fraction=0.05))
    assert "rare" in loose.report["kept_relations"]
    # Known = HighlyKnown + MaybeKnown (~50%) passes 0.4; HighlyKnown alone (~33%) does not.
    assert build_splits(facts, dataclasses.replace(SPEC, min_known_fraction=0.4)).d_held
    strict = dataclasses.replace(SPEC, known_categories=["HighlyKnown"], min_known_fraction=0.4)
    with pytest.raises(DataError, match=r"Known = HighlyKnown; born: 0\.3"):
        build_splits(facts, strict)
    only = build_splits(facts, dataclasses.replace(SPEC, relations=["job"], n_held=5, n_dev=2))
    assert {f.relation for f in only.d_held + only.d_known} == {"job"}
    with pytest.raises(DataError, match="no relation has a Known fraction >= "):
        build_splits(facts, dataclasses.replace(SPEC, min_known_fraction=1.0))
    with pytest.raises(DataError, match="unknown relation"):
        build_splits(facts, dataclasses.replace(SPEC, relations=["nope"]))


def test_multi_answer_facts_kept_when_asked() -> None:
    splits = build_splits(_facts(), dataclasses.replace(SPEC, drop_multi_answer=False))
    assert splits.report["dropped_multi_answer"] == 0
    assert any(len(f.answers) > 1 for items in splits.as_dict().values() for f in items)


def test_deterministic_under_seed() -> None:
    ids = lambda s: {k: [f.id for f in v] for k, v in s.as_dict().items()}  # noqa: E731
    a, b = build_splits(_facts(), SPEC), build_splits(_facts(), SPEC)
    assert ids(a) == ids(b)
    assert ids(build_splits(_facts(), dataclasses.replace(SPEC, seed=1))) != ids(a)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n_held": 10_000}, r"n_held=10000 is impossible: there are only \d+ \(born: \d+"),
        ({"n_dev": 10_000}, r"n_dev=10000 is impossible: there are only \d+"),
        ({"n_train": 10_000}, r"n_train=10000 is impossible: .* at most \d+ training facts"),
    ],
)
def test_impossible_requests_say_how_many_facts_there_are(change, message) -> None:
    with pytest.raises(DataError, match=message):
        build_splits(_facts(), dataclasses.replace(SPEC, **change))


def test_bad_options_and_missing_categories() -> None:
    with pytest.raises(ConfigError, match="unknown_fraction"):
        build_splits(_facts(), dataclasses.replace(SPEC, unknown_fraction=1.5))
    with pytest.raises(ConfigError, match="known_categories"):
        build_splits(_facts(), dataclasses.replace(SPEC, known_categories=["Known"]))
    facts = _facts()
    facts[3].category = None
    with pytest.raises(DataError, match=r"'born\.3' .* has no category"):
        build_splits(facts, SPEC)


def test_split_command_end_to_end(tmp_path, capsys) -> None:
    categories = tmp_path / "categories.jsonl"
    write_facts(categories, _facts())
    out = tmp_path / "split"
    args = ["split", f"categories={categories}", f"out={out}", "n_held=40", "n_dev=20"]
    assert main([*args, "n_train=50", "held_disjoint_answers=false"]) == 0
    names = ("d_known", "d_unknown", "d_held", "dev")
    splits = {name: read_facts(out / f"{name}.jsonl") for name in names}
    assert len(splits["d_known"]) + len(splits["d_unknown"]) == 50
    assert len(splits["d_held"]) == 40
    summary = json.loads((out / "summary.json").read_text())
    assert summary["totals"] == {name: len(splits[name]) for name in names}
    assert summary["sizes"]["d_held"]["born"] == {"HighlyKnown": 16}
    assert (out / "config.yaml").is_file() and (out / "env.json").is_file()
    printed = capsys.readouterr().out
    assert "d_unknown" in printed and "dropped" in printed and "rare" in printed


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["n_held=100000"], 1, "n_held=100000 is impossible: there are only"),
        (["categories=/nonexistent.jsonl"], 1, "file not found"),
        (["unknown_fraction=2"], 2, "unknown_fraction must be in [0, 1]"),
        (["categories="], 2, "categories"),
    ],
)
def test_split_command_errors_write_nothing(tmp_path, capsys, extra, code, message) -> None:
    categories = tmp_path / "categories.jsonl"
    write_facts(categories, _facts())
    out = tmp_path / "split"
    assert main(["split", f"categories={categories}", f"out={out}", *extra]) == code
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_uncategorised_input_is_refused(tmp_path, capsys) -> None:
    facts = tmp_path / "facts.jsonl"
    write_facts(facts, [dataclasses.replace(f, category=None) for f in _facts()])
    assert main(["split", f"categories={facts}", f"out={tmp_path / 'o'}"]) == 1
    assert "run 'factkeep probe' first" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_overall_unknown_fraction_uses_relations_short_of_known_facts() -> None:
    """'rare' has 4 HighlyKnown facts: per relation it caps its share of the training set at what
    a 50% Unknown share allows; overall, the fraction holds for the whole set and the relations
    short of known facts give more Unknown ones."""
    spec = dataclasses.replace(SPEC, min_known_fraction=0.0, n_held=20, n_dev=0)
    per_relation = build_splits(_facts(), spec)
    overall = build_splits(_facts(), dataclasses.replace(spec, unknown_fraction_scope="overall"))
    for splits in (per_relation, overall):
        n_unknown, n_known = len(splits.d_unknown), len(splits.d_known)
        assert abs(n_unknown - n_known) <= 1  # 50% Unknown overall in both
    assert len(overall.d_known) + len(overall.d_unknown) > len(per_relation.d_known) + len(
        per_relation.d_unknown
    )
    rare = Counter(f.category for f in overall.d_known + overall.d_unknown if f.relation == "rare")
    assert rare["Unknown"] > rare["HighlyKnown"]  # this relation's own share is not 50%
    with pytest.raises(DataError, match="unknown_fraction_scope=overall allows"):
        build_splits(_facts(), dataclasses.replace(spec, n_train=len(overall.d_known) * 2))
    sizes = overall.report["sizes"]
    assert sizes["d_unknown"]["rare"]["Unknown"] == rare["Unknown"]  # per-relation shares reported


def test_held_spread_by_known_facts_leaves_every_relation_some_for_d_known() -> None:
    """Spread by facts, D_held takes all 4 HighlyKnown facts of 'rare' (its 40 facts are 1/16
    of the input, and 64/16 = 4), so D_known has none of it; spread by HighlyKnown facts, 'rare'
    gives D_held 1 and keeps 3 for training."""
    spec = dataclasses.replace(
        SPEC, min_known_fraction=0.0, n_held=64, n_dev=0, unknown_fraction_scope="overall"
    )
    by_facts = build_splits(_facts(), spec)
    by_known = build_splits(_facts(), dataclasses.replace(spec, held_spread="known"))
    for splits in (by_facts, by_known):
        assert len(splits.d_held) == 64
    rare_held = [sum(f.relation == "rare" for f in s.d_held) for s in (by_facts, by_known)]
    rare_known = [sum(f.relation == "rare" for f in s.d_known) for s in (by_facts, by_known)]
    assert rare_held == [4, 1] and rare_known[0] == 0 and rare_known[1] >= 1
