"""The ``factkeep audit`` command end to end on a tiny random model and a tiny synthetic world."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from factkeep.analysis.audit import rank_by_score, regression_probabilities, risky_training_keys
from factkeep.analysis.forecast import roc_auc
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
OUTPUTS = ["at_risk.jsonl", "audit.json", "config.yaml", "env.json", "exposed.jsonl"]
OUTPUTS += ["summary.md"]
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


def test_audit_keys_end_to_end(files, tmp_path, capsys) -> None:
    out = tmp_path / "audit"
    assert _audit(files, out, "score=keys") == 0
    assert sorted(p.name for p in out.iterdir()) == OUTPUTS
    doc = json.loads((out / "audit.json").read_text())
    n_known = len(read_facts(files["known"]))
    assert doc["n_train"] == 40 and doc["n_known"] == n_known == 41
    assert sum(doc["category_counts"].values()) == 40
    assert math.isclose(sum(doc["category_shares"].values()), 1.0)
    assert doc["unknown_share"] == doc["category_shares"]["Unknown"] > 0.5
    scoring = doc["scoring"]
    assert scoring["n_against"] == doc["category_counts"]["Unknown"]
    assert scoring["score"] == "keys" and scoring["measure"] == "max_key_cosine"
    assert scoring["layer"] == "middle"
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
    risky = doc["nearest_training_keys"]
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
    # The key ranking failed validation (it points the wrong way on the laptop world): the
    # report says so and names no fact.
    assert doc["strength"]["level"] == "weak" and "AUC 0.45" in doc["strength"]["reason"]
    assert "| 1 | planted |" not in summary and "names none" in doc["recommendation"]
    assert "self_distill" in summary
    assert summary in capsys.readouterr().out


def _fake_run(folder: Path, forgotten: set[str], known: list[str]) -> Path:
    """A finished run folder whose evaluations say which known facts it forgot."""
    (folder / "samples").mkdir(parents=True)
    (folder / "config.yaml").write_text("method: sft\n")
    (folder / "results.json").write_text(json.dumps({"cost_seconds": {"steps": 50.0}}))
    for step, wrong in ((0, set()), (40, forgotten)):
        lines = [
            json.dumps({"split": "d_held", "id": i, "prediction": "x", "correct": i not in wrong})
            for i in known
        ]
        (folder / "samples" / f"step-{step:06d}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_audit_trial_forecast_and_its_validation(files, tmp_path, capsys) -> None:
    plan = ["reuse_categories=true", "optim.epochs=4", "optim.lr=1e-3", "optim.batch_size=8"]
    out = tmp_path / "trial"
    assert _audit(files, out, *plan, train="train_unknown") == 0
    assert sorted(p.name for p in out.iterdir()) == OUTPUTS
    doc = json.loads((out / "audit.json").read_text())
    scoring = doc["scoring"]
    # 40 facts, batch 8, 4 epochs: 20 planned steps; the trial runs 10% of them at 2x the lr.
    assert scoring["score"] == "trial" and scoring["planned_steps"] == 20
    assert scoring["trial_steps"] == 2 == len(scoring["trial_losses"])
    assert scoring["trial_lr"] == pytest.approx(2e-3)
    rows = _rows(out)
    assert [r["score"] for r in rows] == sorted((-r["log_prob_after"] for r in rows), reverse=True)
    assert all(r["log_prob_after"] < 0 and "log_prob_before" not in r for r in rows)
    at_risk = read_facts(out / "at_risk.jsonl")  # 10% of 41 known facts, most at risk first
    assert [f.id for f in at_risk] == [r["id"] for r in rows[:4]] and doc["n_at_risk"] == 4
    # No run to check against: the quoted validation decides, and the report names facts.
    assert doc["validation"] is None and doc["strength"]["level"] == "validated"
    summary = (out / "summary.md").read_text()
    assert f"| 1 | {rows[0]['id']} |" in summary and "validate=RUN_FOLDER" in summary
    assert "forecast_replay" in doc["recommendation"]

    # Checked against a run that forgot exactly the 5 facts ranked most at risk: strong.
    ids = [r["id"] for r in rows]
    run = _fake_run(tmp_path / "run-top", set(ids[:5]), ids)
    assert _audit(files, tmp_path / "v1", *plan, f"validate={run}", train="train_unknown") == 0
    doc = json.loads((tmp_path / "v1" / "audit.json").read_text())
    checked = doc["validation"]
    assert checked["n"] == 41 and checked["n_forgotten"] == 5 and checked["auc"] == 1.0
    assert checked["top_decile_lift"] == pytest.approx(41 / 5)
    assert checked["cost_share"] == pytest.approx(doc["seconds"]["forecast"] / 50.0)
    assert doc["strength"]["level"] == "strong"

    # ... and against a run that forgot the 5 ranked least at risk: weak, no fact is named.
    run = _fake_run(tmp_path / "run-bottom", set(ids[-5:]), ids)
    assert _audit(files, tmp_path / "v2", *plan, f"validate={run}", train="train_unknown") == 0
    doc = json.loads((tmp_path / "v2" / "audit.json").read_text())
    labels = [int(i in ids[-5:]) for i in ids]
    assert doc["validation"]["auc"] == roc_auc([r["score"] for r in rows], labels) == 0.0
    assert doc["strength"]["level"] == "weak" and "names none" in doc["recommendation"]
    summary = (tmp_path / "v2" / "summary.md").read_text()
    assert f"| 1 | {ids[0]} |" not in summary and "**Weak:**" in summary
    capsys.readouterr()


def test_plan_reads_the_planned_runs_options(files, tmp_path, capsys) -> None:
    plan = tmp_path / "plan.yaml"  # the options of the test above, as a train config
    plan.write_text("method: sft\noptim: {epochs: 4, lr: 0.001, batch_size: 8}\n")
    out = tmp_path / "plan"
    assert _audit(files, out, "reuse_categories=true", f"plan={plan}", train="train_unknown") == 0
    scoring = json.loads((out / "audit.json").read_text())["scoring"]
    assert scoring["planned_steps"] == 20 and scoring["trial_lr"] == pytest.approx(2e-3)
    # a run folder: its config.yaml (here the defaults: 20 epochs of 2 batches, lr 1e-4)
    run = _fake_run(tmp_path / "run", set(), ["x"])
    out = tmp_path / "plan-run"
    assert _audit(files, out, "reuse_categories=true", f"plan={run}", train="train_unknown") == 0
    scoring = json.loads((out / "audit.json").read_text())["scoring"]
    assert scoring["planned_steps"] == 40 and scoring["trial_lr"] == pytest.approx(2e-4)
    capsys.readouterr()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["plan=sft", "optim.lr=0.1"], "give them in one place"),
        (["plan=no_such_plan"], "neither a run folder"),
        (["plan=."], "not a run folder"),
    ],
)
def test_bad_plan_exits_2_and_writes_nothing(files, tmp_path, capsys, extra, message) -> None:
    out = tmp_path / "bad-plan"
    assert _audit(files, out, "reuse_categories=true", *extra) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_audit_confidence_score(files, tmp_path) -> None:
    out = tmp_path / "conf"
    assert _audit(files, out, "score=confidence", "reuse_categories=true", train="plain") == 0
    rows = _rows(out)
    assert [r["score"] for r in rows] == [-r["log_prob_before"] for r in rows]
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)
    doc = json.loads((out / "audit.json").read_text())
    assert doc["scoring"]["score"] == "confidence" and doc["strength"]["level"] == "weak"


def test_split_names_prompt_completion_and_known_categories(files, tmp_path) -> None:
    out = tmp_path / "pc"
    args = [
        f"model={files['model']}", "train=d_unknown", "known=d_held", f"splits={files['splits']}",
        "known_categories=HighlyKnown,MaybeKnown", "against=all", "top_n=5", "exemplars=known",
        "score=keys",
        f"out={out}", *FAST,
    ]  # fmt: skip
    assert main(["audit", *args]) == 0
    doc = json.loads((out / "audit.json").read_text())
    assert doc["n_train"] == 40 and doc["scoring"]["n_against"] == 40  # against=all
    assert doc["n_known"] == 20 and doc["n_known_file"] == 40
    assert doc["probe"]["exemplars"].startswith("known=")
    rows = _rows(out)
    assert {r["category"] for r in rows} == {"HighlyKnown", "MaybeKnown"}
    assert sum(r["nearest_for"] for r in doc["nearest_training_keys"]) == 5
    assert len(doc["top_exposed"]) == 5


def test_regression_scoring_gives_the_fitted_order(files, tmp_path) -> None:
    coefficients = {"(intercept)": -1.0, "relation=birth_year": 3.0, "question_length": 0.25}
    regression = tmp_path / "regression.json"
    fit = {"coefficients": [{"name": k, "estimate": v} for k, v in coefficients.items()]}
    regression.write_text(json.dumps({"regression": fit, "layer": "middle"}))
    out = tmp_path / "reg"
    args = ("reuse_categories=true", f"regression={regression}", "score=keys")
    assert _audit(files, out, *args, train="train_unknown") == 0
    doc = json.loads((out / "audit.json").read_text())
    assert doc["probe"] is None and doc["scoring"]["measure"] == "p_forgotten"
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
    assert _audit(files, out, "reuse_categories=true", "score=keys", train="plain") == 0
    doc = json.loads((out / "audit.json").read_text())
    assert doc["unknown_share"] == 0.0 and doc["scoring"]["n_against"] == 0
    assert doc["top_exposed"] == [] and doc["nearest_training_keys"] == []
    assert (out / "exposed.jsonl").read_text() == ""
    assert (out / "at_risk.jsonl").read_text() == ""
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
        (["regression=/nonexistent/regression.json", "score=keys"], 2, "file not found"),
        (["regression={reg_column}", "score=keys"], 2, "'activation_overlap'"),
        (["regression={reg_skipped}", "score=keys"], 2, "no fitted regression (single class)"),
        (["regression={reg_column}"], 2, "set score=keys"),
        (["score=magic"], 2, "score"),
        (["trial.fraction=0"], 2, "trial.fraction must be in (0, 1]"),
        (["trial.steps=-1"], 2, "trial.steps must be >= 0"),
        (["trial.lr_scale=0"], 2, "trial.lr_scale must be > 0"),
        (["optim.batch_size=0"], 2, "optim.batch_size"),
        (["optim.lr=0"], 2, "optim.lr and optim.epochs must be > 0"),
        (["at_risk=0"], 2, "at_risk must be in (0, 1]"),
        (["validate=/nonexistent/run"], 2, "is not a run folder"),
        (["validate={model}"], 2, "is not a run folder"),
        (["validate={empty_run}"], 1, "needs two evaluations"),
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
    names["empty_run"] = str(tmp_path / "empty_run")
    (tmp_path / "empty_run").mkdir()
    (tmp_path / "empty_run" / "config.yaml").write_text("method: sft\n")
    out = tmp_path / "never"
    assert _audit(files, out, *(e.format(**names) for e in extra)) == code
    assert message in capsys.readouterr().err
    assert not out.exists()
