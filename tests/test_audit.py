"""The ``factkeep audit`` command end to end on a tiny random model and a tiny synthetic world."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from factkeep.analysis.audit import rank_by_score, regression_probabilities, risky_training_keys
from factkeep.cli import main
from factkeep.data.facts import CATEGORIES, Fact, read_facts, write_facts
from factkeep.data.prompt_completion import write_prompt_completion
from factkeep.data.world import WorldSpec, build_world
from factkeep.models.tiny import TinyModelConfig, build_tiny_model
from factkeep.models.tokenizer import build_word_tokenizer

SMALL = WorldSpec(
    n_first_names=20, n_last_names=30, values_per_relation=25, n_qa=6, n_bio=8, n_unseen=8
)
SHAPE = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
# A quick probe for a random model (it never stops early), one thread, no bar.
FAST = ["probe.n_prompts=2", "probe.num_samples=2", "probe.max_new_tokens=2"]
FAST += ["probe.progress=false", "threads=1"]
OUTPUTS = ["audit.json", "config.yaml", "env.json", "exposed.jsonl", "summary.md"]
OUTPUTS = sorted([*OUTPUTS, "train_categories.jsonl"])


def _with(fact: Fact, **changes: object) -> Fact:
    return Fact(**{**fact.to_dict(), **changes})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Model; train = the never-seen people's facts (Unknown to a random model); known = the
    bio people's facts plus ``planted``, a known fact about a training fact's subject."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("audit")
    world = build_world(SMALL)
    tok = build_word_tokenizer(world.vocabulary_texts())
    build_tiny_model(SHAPE, tok, seed=0).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    pops: dict[str, list[Fact]] = {}
    for fact in world.facts():
        pops.setdefault(fact.meta["population"], []).append(fact)
    train, bio = pops["unseen"], pops["bio"]
    target = train[7].subject  # the 2nd unseen person (facts 5..9)
    planted = _with(
        bio[0],
        id="planted",
        subject=target,
        question=bio[0].question.replace(bio[0].subject, target),
    )
    paths = {name: root / f"{name}.jsonl" for name in ("train", "known", "train_unknown", "plain")}
    paths["model"], paths["splits"] = root / "model", root / "splits"
    write_facts(paths["train"], train)
    write_facts(paths["known"], [*bio, planted])
    write_facts(paths["train_unknown"], [_with(f, category="Unknown") for f in train])
    write_facts(paths["plain"], [_with(f, category="HighlyKnown") for f in train])
    write_prompt_completion(paths["splits"] / "d_unknown.jsonl", train)
    cats = [_with(f, category=CATEGORIES[i % 4]) for i, f in enumerate(bio)]
    write_facts(paths["splits"] / "d_held.jsonl", cats)
    return paths


def _audit(files: dict[str, Path], out: Path, *extra: str, train: str = "train") -> int:
    args = [f"model={files['model']}", f"train={files[train]}", f"known={files['known']}"]
    return main(["audit", *args, f"out={out}", *FAST, *extra])


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "exposed.jsonl").read_text().splitlines()]


def test_audit_end_to_end(files, tmp_path, capsys) -> None:
    out = tmp_path / "audit"
    assert _audit(files, out) == 0
    assert sorted(p.name for p in out.iterdir()) == OUTPUTS
    doc = json.loads((out / "audit.json").read_text())
    n_known = len(read_facts(files["known"]))
    assert doc["n_train"] == 40 and doc["n_known"] == n_known == 41
    assert sum(doc["category_counts"].values()) == 40
    assert math.isclose(sum(doc["category_shares"].values()), 1.0)
    assert doc["unknown_share"] == doc["category_shares"]["Unknown"] > 0.5
    assert doc["n_against"] == doc["category_counts"]["Unknown"]
    assert doc["scoring"] == {"score": "max_key_cosine"} and doc["layer"] == "middle"
    assert doc["probe"]["preset"] == "cheap" and doc["probe"]["protocol"]["n_prompts"] == 2

    rows = _rows(out)
    assert [r["rank"] for r in rows] == list(range(1, n_known + 1))  # sorted, a permutation
    assert sorted(r["id"] for r in rows) == sorted(f.id for f in read_facts(files["known"]))
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert all(r["score"] == r["max_key_cosine"] for r in rows)
    # The known fact about a training subject has its key: cosine 1, first by far.
    assert rows[0]["id"] == "planted" and rows[0]["max_key_cosine"] > 0.9999
    assert rows[1]["max_key_cosine"] < 0.999
    assert rows[0]["nearest_subject"] == rows[0]["subject"]

    top = doc["top_exposed"]
    assert [r["id"] for r in top] == [r["id"] for r in rows[:20]]
    risky = doc["risky_training"]
    assert sum(r["nearest_for"] for r in risky) == 20 == doc["top_n"]
    assert sorted(i for r in risky for i in r["known_ids"]) == sorted(r["id"] for r in top)
    planted_key = next(r for r in risky if "planted" in r["known_ids"])
    assert planted_key["subject"] == rows[0]["subject"] and len(planted_key["train_ids"]) >= 1

    probed = read_facts(out / "train_categories.jsonl")
    assert len(probed) == 40 and all(f.category in CATEGORIES for f in probed)
    assert all(len(f.meta["probe"]["greedy_answers"]) == 2 for f in probed)
    assert yaml.safe_load((out / "config.yaml").read_text())["probe"]["preset"] == "cheap"
    summary = (out / "summary.md").read_text()
    assert f"{100 * doc['unknown_share']:.1f}% of this set" in summary
    assert "| 1 | planted |" in summary and "self_distill" in summary
    assert summary in capsys.readouterr().out


def test_split_names_prompt_completion_and_known_categories(files, tmp_path) -> None:
    out = tmp_path / "pc"
    args = [
        f"model={files['model']}", "train=d_unknown", "known=d_held", f"splits={files['splits']}",
        "known_categories=HighlyKnown,MaybeKnown", "against=all", "top_n=5", "exemplars=known",
        f"out={out}", *FAST,
    ]  # fmt: skip
    assert main(["audit", *args]) == 0
    doc = json.loads((out / "audit.json").read_text())
    assert doc["n_train"] == 40 and doc["n_against"] == 40  # against=all
    assert doc["n_known"] == 20 and doc["n_known_file"] == 40
    assert doc["probe"]["exemplars"].startswith("known=")
    rows = _rows(out)
    assert {r["category"] for r in rows} == {"HighlyKnown", "MaybeKnown"}
    assert sum(r["nearest_for"] for r in doc["risky_training"]) == 5 == len(doc["top_exposed"])


def test_regression_scoring_gives_the_fitted_order(files, tmp_path) -> None:
    coefficients = {"(intercept)": -1.0, "relation=birth_year": 3.0, "question_length": 0.25}
    regression = tmp_path / "regression.json"
    fit = {"coefficients": [{"name": k, "estimate": v} for k, v in coefficients.items()]}
    regression.write_text(json.dumps({"regression": fit, "layer": "middle"}))
    out = tmp_path / "reg"
    args = ("reuse_categories=true", f"regression={regression}")
    assert _audit(files, out, *args, train="train_unknown") == 0
    doc = json.loads((out / "audit.json").read_text())
    assert doc["probe"] is None and doc["scoring"]["score"] == "p_forgotten"
    rows = _rows(out)
    known_order = [f.id for f in read_facts(files["known"])]

    def expected(row: dict) -> float:
        eta = -1.0 + 3.0 * (row["relation"] == "birth_year") + 0.25 * row["question_length"]
        return 1 / (1 + math.exp(-eta))

    for row in rows:
        assert row["score"] == pytest.approx(expected(row), rel=1e-9)
    by_id = {r["id"]: r for r in rows}
    order = sorted(known_order, key=lambda i: -expected(by_id[i]))  # ties: file order
    assert [r["id"] for r in rows] == order
    assert rows[0]["relation"] == "birth_year"
    assert doc["warnings"] == []  # the file records no relations (older versions): no check

    # A fit that saw only birth_year: the other relations are scored as its baseline, and said so.
    regression.write_text(json.dumps({"regression": fit, "relations": ["birth_year"]}))
    assert _audit(files, tmp_path / "reg2", *args, train="train_unknown") == 0
    doc = json.loads((tmp_path / "reg2" / "audit.json").read_text())
    others = sorted({r["relation"] for r in rows} - {"birth_year"})
    assert others and doc["warnings"] == [
        f"relation(s) {', '.join(others)} of the known facts were not in the regression's fit: "
        "their facts are scored as its baseline relation"
    ]
    assert doc["scoring"]["fitted_relations"] == ["birth_year"]


def test_no_unknown_training_fact(files, tmp_path) -> None:
    out = tmp_path / "none"
    assert _audit(files, out, "reuse_categories=true", train="plain") == 0
    doc = json.loads((out / "audit.json").read_text())
    assert doc["unknown_share"] == 0.0 and doc["n_against"] == 0
    assert doc["top_exposed"] == [] and doc["risky_training"] == []
    assert (out / "exposed.jsonl").read_text() == ""
    assert "--config sft" in (out / "summary.md").read_text()


def test_probe_options_are_a_section(capsys) -> None:
    assert main(["audit", "--help"]) == 0
    text = capsys.readouterr().out
    assert "probe.preset (original|cheap|fast, default: 'cheap')" in text
    assert "probe.batch_size" in text and "\n  batch_size" not in text


def test_scoring_helpers() -> None:
    rows = [{"id": "a", "relation": "r1", "x": 1.0}, {"id": "b", "relation": "r2", "x": 1.0}]
    ranked = rank_by_score([*rows, {"id": "c"}], [0.5, 0.5, 0.9])
    assert [(r["id"], r["rank"]) for r in ranked] == [("c", 1), ("a", 2), ("b", 3)]
    p = regression_probabilities(rows, {"(intercept)": 0.0, "relation=r2": 2.0, "x": -2.0})
    assert p == pytest.approx([1 / (1 + math.e**2), 0.5])
    top = [
        {"id": "k1", "nearest_subject": "S", "max_key_cosine": 0.4},
        {"id": "k2", "nearest_subject": "T", "max_key_cosine": 0.9},
        {"id": "k3", "nearest_subject": "S", "max_key_cosine": 0.7},
    ]
    train = [Fact("t1", "q1?", ["a"], "r", "S"), Fact("t2", "q2?", ["a"], "r", "S")]
    risky = risky_training_keys(top, train)
    assert [(r["subject"], r["nearest_for"], r["best_cosine"]) for r in risky] == [
        ("S", 2, 0.7),
        ("T", 1, 0.9),
    ]
    assert risky[0]["train_ids"] == ["t1", "t2"] and risky[1]["train_ids"] == []


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["train=/nonexistent/train.jsonl"], 2, "facts file not found"),
        (["known={bad}"], 1, "bad.jsonl:2: invalid JSON"),
        (["train={train},{train}"], 1, "duplicate id"),
        (["known=d_held"], 2, "set splits="),
        (["against=some"], 2, "against"),
        (["probe.preset=huge"], 2, "probe.preset"),
        (["probe.n_prompts=0"], 2, "n_prompts must be >= 1"),
        (["probe.batch_size=0"], 2, "probe.batch_size must be >= 1"),
        (["batch_size=8"], 2, "did you mean 'probe.batch_size'"),
        (["top_n=0"], 2, "top_n must be >= 1"),
        (["layer=3"], 2, "layer must be in [0, 2] for this model"),
        (["known_categories=Known"], 2, "known_categories"),
        (["known_categories=HighlyKnown"], 2, "needs probed known facts"),
        (["reuse_categories=true"], 2, "have no category"),
        (["exemplars={splits}/d_held.jsonl", "probe.k_exemplars=9"], 1, "exemplar(s) in"),
        (["regression=/nonexistent/regression.json"], 2, "regression: file not found"),
        (["regression={reg_column}"], 2, "'activation_overlap'"),
        (["regression={reg_skipped}"], 2, "holds no fitted regression (single class)"),
        (["model=/nonexistent/model"], 1, "cannot load model"),
    ],
)
def test_bad_input_exits_nonzero_and_writes_nothing(
    files, tmp_path, capsys, extra, code, message
) -> None:
    names = {k: str(v) for k, v in files.items()}
    names["bad"] = str(tmp_path / "bad.jsonl")
    (tmp_path / "bad.jsonl").write_text(Path(files["known"]).read_text().splitlines()[0] + "\n{\n")
    fit = {"coefficients": [{"name": "activation_overlap", "estimate": 1.0}]}
    names["reg_column"] = str(tmp_path / "column.json")
    (tmp_path / "column.json").write_text(json.dumps({"regression": fit}))
    names["reg_skipped"] = str(tmp_path / "skipped.json")
    (tmp_path / "skipped.json").write_text(
        json.dumps({"regression": None, "skipped": "single class"})
    )
    out = tmp_path / "never"
    assert _audit(files, out, *(e.format(**names) for e in extra)) == code
    assert message in capsys.readouterr().err
    assert not out.exists()
