"""The mechanism study's analysis: hidden states, drift, overlap measures, regression, commands."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from factkeep.analysis.overlap import (
    REGRESSION_COLUMNS,
    answer_confidence,
    design_matrix,
    forgotten_labels,
    overlap_features,
    pick_evaluation,
)
from factkeep.analysis.regression import logistic_regression
from factkeep.analysis.representations import (
    cosine_distance,
    hidden_states,
    key_texts,
    middle_layer,
    run_models,
)
from factkeep.analysis.summary import read_summary
from factkeep.cli import main
from factkeep.config import ConfigError, resolve_config
from factkeep.configs import resolve_config_path
from factkeep.data.facts import Fact, write_facts
from factkeep.data.world import WorldSpec, build_world
from factkeep.models.tiny import TinyModelConfig, build_tiny_model
from factkeep.models.tokenizer import build_word_tokenizer
from factkeep.training.config import TrainCommandConfig
from factkeep.training.run import train

SMALL = WorldSpec(
    n_first_names=20, n_last_names=30, values_per_relation=25, n_qa=12, n_bio=8, n_unseen=8
)
SHAPE = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


def _fact(i: str, subject: str, relation: str, answers: list[str], question: str = "") -> Fact:
    return Fact(i, question or f"What is the {relation} of {subject}?", answers, relation, subject)


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    """A random tiny Llama over a word vocabulary (left padding, to show it does not matter)."""
    tok = build_word_tokenizer(
        ["Q: A: what is the of ? Ada Lovelace Alan Turing Ada King Grace Hopper Bob",
         "city year capital London Paris 1815 1912 1999 Rome Italy"]
    )  # fmt: skip
    tok.padding_side = "left"
    return build_tiny_model(SHAPE, tok, seed=0).eval(), tok


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A self-distillation run of the real trainer (format phase, then main) on a tiny model.

    The random model knows no fact, so the D_held correctness of its evaluations is then set by
    hand: facts 0, 1, 2 of every 4 right until the last evaluation, where fact 2 of every 4
    turns wrong (forgotten) and fact 3 is wrong throughout (excluded).
    """
    root = tmp_path_factory.mktemp("analysis")
    world = build_world(SMALL)
    tok = build_word_tokenizer(world.vocabulary_texts())
    build_tiny_model(SHAPE, tok, seed=0).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    by_pop: dict[str, list[Fact]] = {}
    for fact in world.facts():
        by_pop.setdefault(fact.meta["population"], []).append(fact)
    splits = root / "splits"
    write_facts(splits / "d_known.jsonl", by_pop["qa"][:16])
    write_facts(splits / "d_unknown.jsonl", by_pop["unseen"][:16])
    write_facts(splits / "d_held.jsonl", by_pop["bio"][:24])
    overrides = [
        f"model={root / 'model'}", f"data.splits={splits}", f"out={root / 'run'}",
        "optim.epochs=2", "optim.batch_size=8", "eval.max_new_tokens=2", "progress=false",
        "threads=1", "save_total_limit=3", "keep_checkpoints=true",
    ]  # fmt: skip
    train(resolve_config(TrainCommandConfig, resolve_config_path("self_distill"), overrides))
    files = sorted((root / "run" / "samples").glob("step-*.jsonl"))
    for path in files:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        held = [r for r in rows if r["split"] == "d_held"]
        for i, r in enumerate(held):
            r["correct"] = i % 4 in ((0, 1) if path == files[-1] else (0, 1, 2))
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"root": root, "run": root / "run", "held": splits / "d_held.jsonl"}


# --- hidden states -----------------------------------------------------------------------------


@pytest.mark.parametrize("position", ["last", "mean"])
def test_hidden_states_do_not_depend_on_the_batch(tiny, position) -> None:
    model, tok = tiny
    texts = ["Ada", "Q: what is the city of Alan Turing ?\nA:", "Grace Hopper", "Bob King"]
    batched = hidden_states(model, tok, texts, position=position, batch_size=4)
    assert batched.shape == (4, SHAPE.hidden_size)
    assert batched.dtype == torch.float32 and batched.device.type == "cpu"
    for i, text in enumerate(texts):
        alone = hidden_states(model, tok, [text], position=position)
        assert torch.allclose(alone[0], batched[i], atol=1e-5), text
    small = hidden_states(model, tok, texts, position=position, batch_size=3)
    assert torch.allclose(small, batched, atol=1e-5)


def test_hidden_states_default_to_the_middle_layer(tiny) -> None:
    model, tok = tiny
    assert middle_layer(model) == SHAPE.num_layers // 2 == 1
    default = hidden_states(model, tok, ["Ada Lovelace"])
    assert torch.equal(default, hidden_states(model, tok, ["Ada Lovelace"], layer=1))
    with torch.no_grad():
        ids = torch.tensor([tok("Ada Lovelace")["input_ids"]])
        direct = model(input_ids=ids, output_hidden_states=True)
    assert torch.allclose(default[0], direct.hidden_states[1][0, -1], atol=1e-6)
    assert not torch.allclose(default, hidden_states(model, tok, ["Ada Lovelace"], layer=0))
    with pytest.raises(ValueError, match="layer"):
        hidden_states(model, tok, ["Ada"], layer=SHAPE.num_layers + 1)


def test_cosine_distance(tiny) -> None:
    model, tok = tiny
    states = hidden_states(model, tok, ["Ada", "Alan Turing", "Grace Hopper"])
    again = hidden_states(model, tok, ["Ada", "Alan Turing", "Grace Hopper"])
    assert torch.allclose(cosine_distance(states, again), torch.zeros(3), atol=1e-6)
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    b = torch.tensor([[0.0, 3.0], [2.0, 2.0], [-1.0, 0.0]])
    assert torch.allclose(cosine_distance(a, b), torch.tensor([1.0, 0.0, 2.0]), atol=1e-6)
    facts = [_fact("1", "Ada King", "city", ["London"])]
    assert key_texts(facts, "subject") == ["Ada King"]
    assert key_texts(facts, "prompt") == ["Q: What is the city of Ada King?\nA:"]


# --- regression ----------------------------------------------------------------------------------


def test_logistic_regression_recovers_known_coefficients() -> None:
    rng = np.random.default_rng(0)
    n = 4000
    X = np.column_stack([rng.normal(size=n), 3 + 5 * rng.normal(size=n), rng.uniform(size=n)])
    X = np.column_stack([X, np.full(n, 7.0), 2 * X[:, 0] - X[:, 2]])  # constant, collinear
    truth = {"(intercept)": -0.5, "a": 1.0, "b": -0.2, "c": 1.5}
    eta = truth["(intercept)"] + X[:, :3] @ np.array([truth["a"], truth["b"], truth["c"]])
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-eta))).astype(float)
    result = logistic_regression(X, y, ["a", "b", "c", "const", "combo"])
    assert result.converged and result.n == n and result.n_positive == int(y.sum())
    assert set(result.dropped) == {"const", "combo"}
    assert [c.name for c in result.coefficients] == ["(intercept)", "a", "b", "c"]
    for coef in result.coefficients:
        assert abs(coef.estimate - truth[coef.name]) < 3 * coef.std_error, coef
        assert coef.ci_low < coef.estimate < coef.ci_high
        assert coef.ci_high - coef.estimate == pytest.approx(1.959964 * coef.std_error)
        assert coef.p_value == pytest.approx(math.erfc(abs(coef.z) / math.sqrt(2)))
    assert result.coefficient("a").p_value < 1e-10
    assert result.coefficient("b").standardized == pytest.approx(
        result.coefficient("b").estimate * X[:, 1].std()
    )
    json.dumps(result.to_dict())
    table = result.format_table()
    assert "dropped const: constant column" in table and "converged" in table
    raw = logistic_regression(X[:, :3], y, ["a", "b", "c"], standardize=False)
    assert raw.coefficient("c").estimate == pytest.approx(result.coefficient("c").estimate, 1e-4)


def test_logistic_regression_survives_separation_and_rejects_bad_input() -> None:
    x = np.arange(20.0)[:, None]
    result = logistic_regression(x, (x[:, 0] > 9).astype(float), ["x"])
    assert all(
        math.isfinite(c.estimate) and math.isfinite(c.std_error) for c in result.coefficients
    )
    assert result.coefficient("x").estimate > 0
    with pytest.raises(ValueError, match="single class"):
        logistic_regression(x, np.zeros(20), ["x"])
    with pytest.raises(ValueError, match="0 and 1"):
        logistic_regression(x, np.full(20, 2.0), ["x"])


# --- overlap measures ----------------------------------------------------------------------------


def test_overlap_measures_on_hand_built_facts(tiny) -> None:
    model, tok = tiny
    train = [
        _fact("t1", "Ada King", "city", ["London"]),
        _fact("t2", "Ada King", "year", ["1815"]),
        _fact("t3", "Alan Turing", "city", ["Rome"]),
        _fact("t4", "Bob", "year", ["1912"]),
        _fact("t5", "Rome", "capital", ["Italy"]),
    ]
    held = [
        _fact("h1", "Ada Lovelace", "city", ["Paris", "London"]),
        _fact("h2", "Grace Hopper", "capital", ["1999"]),
        _fact("h3", "Alan Turing", "city", ["London"]),
        _fact("h4", "Bob King", "city", ["Rome"], question="Where is Bob King ?"),
    ]
    rows = {r["id"]: r for r in overlap_features(model, tok, held, train)}
    assert list(rows) == ["h1", "h2", "h3", "h4"]
    expected = {  # token_overlap, shared_tokens_count, same_relation_share, shared_answer, freq
        "h1": (1 / 3, 1, 0.4, 1, 1),  # {ada, lovelace} vs {ada, king}; its alias London is t1's
        "h2": (0.0, 0, 0.2, 0, 1),
        "h3": (1.0, 1, 0.4, 1, 2),  # t3's subject; "london": t1 and h3
        "h4": (0.5, 2, 0.4, 1, 2),  # {bob, king}: Bob 1/2, Ada King 1/3
    }
    for i, (overlap, sharing, share, answer, freq) in expected.items():
        row = rows[i]
        assert row["token_overlap"] == pytest.approx(overlap), i
        assert row["shared_tokens_count"] == sharing, i
        assert row["same_relation_share"] == pytest.approx(share), i
        assert row["shared_answer"] == answer, i
        assert row["answer_frequency"] == freq, i
    assert rows["h4"]["question_length"] == 5  # where is bob king ?
    assert rows["h3"]["max_key_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert rows["h2"]["max_key_cosine"] < 1.0
    assert -1.0 <= rows["h2"]["mean_key_cosine"] <= rows["h2"]["max_key_cosine"]
    assert all(0.0 < r["base_confidence"] <= 1.0 for r in rows.values())


def test_answer_confidence_matches_one_fact_at_a_time(tiny) -> None:
    model, tok = tiny
    facts = [_fact("a", "Ada", "city", ["London"]), _fact("b", "Grace Hopper", "year", ["1912"])]
    both = answer_confidence(model, tok, facts, batch_size=2)
    prompt = tok("Q: What is the city of Ada?\nA:")["input_ids"]
    answer = [*tok(" London", add_special_tokens=False)["input_ids"], tok.eos_token_id]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([prompt + answer])).logits[0], dim=-1)
    steps = [logp[len(prompt) - 1 + k, t] for k, t in enumerate(answer)]
    assert both[0] == pytest.approx(math.exp(float(torch.stack(steps).mean())), rel=1e-5)
    assert both[1] == pytest.approx(answer_confidence(model, tok, facts[1:])[0], rel=1e-5)


def test_forgotten_labels_design_matrix_and_evaluation_choice() -> None:
    before = {"a": True, "b": True, "c": False, "d": True}
    after = {"a": True, "b": False, "c": True, "e": False}
    assert forgotten_labels(before, after) == {"a": 0, "b": 1}
    base = dict.fromkeys(REGRESSION_COLUMNS, 0.5)
    rows = [{**base, "relation": r} for r in ("x", "y", "y", "z")]
    X, names = design_matrix(rows)
    assert names == [*REGRESSION_COLUMNS, "relation=x", "relation=z"]  # y is the baseline
    assert X.shape == (4, len(REGRESSION_COLUMNS) + 2)
    assert X[:, -2:].tolist() == [[1, 0], [0, 0], [0, 0], [0, 1]]
    evals = {0: {"a": True, "b": False}, 5: {"a": True, "b": True}, 9: {"a": False, "b": True}}
    assert [pick_evaluation(o, "x", evals) for o in ("start", "peak", "final", "9")] == [0, 5, 9, 9]
    with pytest.raises(ConfigError, match="no evaluation at step 4"):
        pick_evaluation("4", "before", evals)


# --- commands on a real training run --------------------------------------------------------------


def test_run_models_follow_the_training_order(run) -> None:
    models = run_models(run["run"])
    metric_steps = [
        json.loads(line)["step"] for line in (run["run"] / "metrics.jsonl").read_text().splitlines()
    ]
    assert [(m.phase, m.step) for m in models] == [
        ("format", 2), ("main", 6), ("main", 10),
    ]  # fmt: skip
    assert [m.step for m in models] == metric_steps[1:]  # evaluated at each epoch end
    assert models[0].model_dir == run["run"] / "phases" / "format" / "model"
    assert (
        models[1].model_dir.name == "checkpoint-4" and models[-1].model_dir == run["run"] / "model"
    )


def test_analyze_drift_end_to_end(run, tmp_path, capsys) -> None:
    out = tmp_path / "drift"
    args = [f"runs=[{run['run']}]", f"facts={run['held']}", f"out={out}", "threads=1"]
    assert main(["analyze", "drift", *args]) == 0
    assert {p.name for p in out.iterdir()} >= {
        "drift.json", "drift.png", "config.yaml", "analysis.json",
    }  # fmt: skip
    doc = json.loads((out / "drift.json").read_text())
    (result,) = doc["runs"]
    assert result["method"] == "self_distill"
    rows = result["rows"]
    assert [r["step"] for r in rows] == [0, 2, 6, 10]
    assert [r["phase"] for r in rows] == ["start", "format", "main", "main"]
    assert rows[0]["mean_distance"] == pytest.approx(0.0, abs=1e-6)
    assert all(r["n"] == 5 and r["mean_distance"] >= -1e-6 for r in rows)  # 24 facts, 5 people
    assert rows[-1]["mean_distance"] > rows[1]["mean_distance"]
    assert (out / "drift.png").read_bytes()[:4] == b"\x89PNG"
    summary = read_summary(out)  # the report's section
    assert summary.kind == "drift" and [f.file for f in summary.figures] == ["drift.png"]
    (table,) = summary.tables
    assert table.columns == ["method", "run", "distance after format phase", "final distance"]
    assert table.rows == [
        ["self_distill", str(run["run"]), pytest.approx(rows[1]["mean_distance"]),
         pytest.approx(rows[-1]["mean_distance"])],
    ]  # fmt: skip
    printed = capsys.readouterr().out
    assert "after format" in printed and "self_distill" in printed


def test_analyze_overlap_end_to_end(run, tmp_path, capsys) -> None:
    out = tmp_path / "overlap"
    assert main(["analyze", "overlap", f"run={run['run']}", f"out={out}", "threads=1"]) == 0
    rows = [json.loads(line) for line in (out / "features.jsonl").read_text().splitlines()]
    assert len(rows) == 18  # 24 held facts, 3 of every 4 right before
    assert sum(r["forgotten"] for r in rows) == 6
    assert {"max_key_cosine", "token_overlap", "base_confidence", "relation"} <= set(rows[0])
    doc = json.loads((out / "regression.json").read_text())
    assert (doc["before_step"], doc["after_step"]) == (0, 10)
    assert doc["train"] == ["d_known", "d_unknown"] and doc["n_train"] == 32
    assert doc["forgetting_rate"] == pytest.approx(6 / 18)
    assert doc["relations"] == sorted({r["relation"] for r in rows})
    names = [c["name"] for c in doc["regression"]["coefficients"]]
    assert names[0] == "(intercept)" and "max_key_cosine" in names
    assert sum(b["n"] for b in doc["bins"]) == 18
    assert (out / "overlap.png").read_bytes()[:4] == b"\x89PNG"
    summary = read_summary(out)  # the report's section
    assert summary.kind == "overlap" and [f.file for f in summary.figures] == ["overlap.png"]
    coefficients, rates = summary.tables
    assert coefficients.columns == ["term", "estimate", "95% CI", "p"]
    assert [r[0] for r in coefficients.rows] == names
    assert rates.columns == ["max key cosine", "facts", "forgotten (%)"]
    assert rates.rows[-1] == ["all", 18, pytest.approx(100 * 6 / 18, abs=0.05)]
    assert "Logistic regression" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("command", "extra", "message"),
    [
        ("drift", ["facts=missing.jsonl"], "facts file not found"),
        ("drift", ["position=middle"], "position"),
        ("drift", ["layer=-3"], "layer"),
        ("drift", ["layer=3"], "layer must be in [0, 2]"),
        ("overlap", ["held=missing.jsonl"], "facts file not found"),
        ("overlap", ["before=best"], "before must be"),
        ("overlap", ["before=final"], "must precede"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(run, tmp_path, capsys, command, extra, message):
    out = tmp_path / "out"
    target = f"runs=[{run['run']}]" if command == "drift" else f"run={run['run']}"
    args = [target, f"out={out}", *extra]
    if command == "drift" and not extra[0].startswith("facts="):
        args.append(f"facts={run['held']}")
    assert main(["analyze", command, *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_broken_samples_line_is_located(run, tmp_path, capsys) -> None:
    broken = tmp_path / "run"
    broken.mkdir()
    for name in ("config.yaml", "metrics.jsonl"):
        (broken / name).write_bytes((run["run"] / name).read_bytes())
    (broken / "samples").mkdir()
    (broken / "samples" / "step-000000.jsonl").write_text('{"split": "d_held", "id": "x"}\n')
    out = tmp_path / "out"
    assert main(["analyze", "overlap", f"run={broken}", f"out={out}"]) == 1
    assert "step-000000.jsonl:1: field 'correct'" in capsys.readouterr().err
    assert not out.exists()
