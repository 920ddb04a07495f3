"""``factkeep eval`` on a tiny random model, and Gekhman et al.'s linear view of a run's metrics."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

import factkeep.probing.accuracy as accuracy_module
from factkeep.cli import main
from factkeep.data.facts import HIGHLY_KNOWN, UNKNOWN, Fact, read_facts, write_facts
from factkeep.data.world import WorldSpec, build_world
from factkeep.errors import DataError
from factkeep.eval.document import text_table
from factkeep.eval.evaluate import evaluate_sets
from factkeep.eval.gekhman import fitted_fractions, linear_fit
from factkeep.eval.gekhman import main as gekhman_main
from factkeep.models.tiny import TinyModelConfig, build_tiny_model
from factkeep.models.tokenizer import build_word_tokenizer
from factkeep.study.eval import format_relation_table, format_split_accuracy_table

SMALL = WorldSpec(
    n_first_names=20, n_last_names=30, values_per_relation=25, n_qa=12, n_bio=8, n_unseen=8
)
FAST = ["max_new_tokens=3", "batch_size=16", "progress=false"]
RESULT_KEYS = {"results", "model", "config", "files", "versions", "date", "n_facts", "seconds"}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    world = build_world(SMALL)
    tok = build_word_tokenizer(world.vocabulary_texts())
    shape = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    model = build_tiny_model(shape, tok, seed=0)
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    by_pop: dict[str, list[Fact]] = {}
    for fact in world.facts():
        by_pop.setdefault(fact.meta["population"], []).append(fact)
    splits = root / "splits"
    splits.mkdir()
    known = [dataclasses.replace(f, category=HIGHLY_KNOWN) for f in by_pop["qa"][:20]]
    known += [dataclasses.replace(f, category=UNKNOWN) for f in by_pop["qa"][20:24]]
    write_facts(splits / "d_known.jsonl", known)
    write_facts(splits / "d_held.jsonl", by_pop["bio"][:16])  # no category: "none"
    write_facts(root / "extra.jsonl", by_pop["unseen"][:10])
    return {"model": root / "model", "splits": splits, "extra": root / "extra.jsonl"}


def _eval(files: dict[str, Path], out: Path, facts: str, *extra: str) -> int:
    args = ["eval", f"model={files['model']}", f"facts={facts}", f"splits={files['splits']}"]
    return main([*args, f"out={out}", *FAST, *extra])


def _samples(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def test_eval_writes_results_and_samples(files, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert _eval(files, out, "[d_known,d_held]") == 0
    printed = capsys.readouterr().out
    assert "d_known" in printed and "accuracy" in printed and "relation" in printed
    results = json.loads((out / "results.json").read_text())
    assert set(results) == RESULT_KEYS
    assert list(results["results"]) == ["d_known", "d_held"]
    assert results["model"] == str(files["model"])
    assert results["config"]["facts"] == ["d_known", "d_held"]
    assert results["files"]["d_held"] == str(files["splits"] / "d_held.jsonl")
    assert "torch" in results["versions"] and results["date"].endswith("+00:00")
    assert results["n_facts"] == 24 + 16 and results["seconds"] >= 0
    samples = _samples(out)
    assert len(samples) == 40
    assert set(samples[0]) == {"split", "id", "prediction", "correct"}
    for split, n in (("d_known", 24), ("d_held", 16)):
        m = results["results"][split]
        assert set(m) == {"accuracy", "n", "per_relation", "per_category"}
        assert m["n"] == n
        assert sum(g["n"] for g in m["per_relation"].values()) == n
        assert sum(g["n"] for g in m["per_category"].values()) == n
        rows = [s for s in samples if s["split"] == split]
        ids = [f.id for f in read_facts(files["splits"] / f"{split}.jsonl")]
        assert [s["id"] for s in rows] == ids
        assert m["accuracy"] == pytest.approx(sum(s["correct"] for s in rows) / n)
    categories = results["results"]["d_known"]["per_category"]
    assert list(categories) == [HIGHLY_KNOWN, UNKNOWN]
    assert categories[HIGHLY_KNOWN]["n"] == 20
    assert list(results["results"]["d_held"]["per_category"]) == ["none"]
    assert (out / "config.yaml").is_file() and (out / "env.json").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text())["model"] == str(files["model"])


def test_forced_predictions_give_exact_accuracy(files, tmp_path, monkeypatch) -> None:
    facts = {f"Q: {f.question}\nA:": f for f in read_facts(files["splits"] / "d_known.jsonl")}
    facts.update({f"Q: {f.question}\nA:": f for f in read_facts(files["extra"])})
    relation = next(iter(facts.values())).relation

    def fake(model, tokenizer, prompts, **kwargs) -> list[str]:
        return [facts[p].answers[0] if facts[p].relation == relation else "wrong" for p in prompts]

    monkeypatch.setattr(accuracy_module, "greedy_answers", fake)
    out = tmp_path / "forced"
    assert _eval(files, out, f"[d_known,{files['extra']}]") == 0
    results = json.loads((out / "results.json").read_text())["results"]
    assert list(results) == ["d_known", "extra"]
    for split, path in (("d_known", files["splits"] / "d_known.jsonl"), ("extra", files["extra"])):
        split_facts = read_facts(path)
        hits = sum(f.relation == relation for f in split_facts)
        assert results[split]["accuracy"] == hits / len(split_facts)
        per_rel = results[split]["per_relation"]
        for rel, group in per_rel.items():
            assert group["accuracy"] == (1.0 if rel == relation else 0.0)
    samples = _samples(out)
    assert all(s["correct"] == (s["prediction"] != "wrong") for s in samples)

    direct, rows = evaluate_sets(None, None, {"x": read_facts(files["extra"])})
    assert direct["x"] == results["extra"]
    assert [r["id"] for r in rows] == [s["id"] for s in samples if s["split"] == "extra"]


def test_bad_facts_file_names_file_and_line(files, tmp_path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    good = (files["splits"] / "d_held.jsonl").read_text().splitlines()[0]
    bad.write_text(good + "\n" + '{"id": "x", "question": "Q?"}\n')
    out = tmp_path / "out"
    assert _eval(files, out, f"[d_held,{bad}]") != 0
    assert f"{bad}:2" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["facts=[d_held]"], "model= is required"),
        (["model=x"], "facts= is required"),
        (["model=x", "facts=[d_held]"], "splits= is not set"),
        (["model=x", "facts=[nope]", "splits=SPLITS"], "not found"),
        (["model=x", "facts=[d_held,SPLITS/d_held.jsonl]", "splits=SPLITS"], "two fact sets"),
        (["model=x", "facts=[d_held]", "splits=SPLITS", "batch_size=0"], "batch_size"),
    ],
)
def test_bad_options_exit_nonzero_and_write_nothing(files, tmp_path, capsys, args, message):
    out = tmp_path / "out"
    args = [a.replace("SPLITS", str(files["splits"])) for a in args]
    assert main(["eval", *args, f"out={out}"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def _write_metrics(run: Path, rows: list[dict[str, Any]]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _row(step: int, known: float, unknown: float, held: float) -> dict[str, Any]:
    return {
        "phase": "main",
        "step": step,
        "acc": {"d_known": known, "d_unknown": unknown, "d_held": held},
        "n": {"d_known": 4, "d_unknown": 6, "d_held": 5},
    }


def test_accuracy_tables_are_aligned() -> None:
    known, held = {"n": 24, "accuracy": 0.5}, {"n": 3, "accuracy": 1 / 3}
    metrics = {
        "d_known": {**known, "per_relation": {"born": known}},
        "d_held": {**held, "per_relation": {"a_long_relation": held}},
    }
    assert format_split_accuracy_table(metrics).splitlines() == [
        "split          n  accuracy",
        "--------------------------",
        "d_known       24    0.5000",
        "d_held         3    0.3333",
    ]
    assert format_relation_table(metrics).splitlines() == [
        "relation                 d_known           d_held",
        "-------------------------------------------------",
        "a_long_relation                        0.3333 (3)",
        "born                 0.5000 (24)                 ",
    ]


def test_text_table_widths_alignment_and_short_rows() -> None:
    rows = [["a", "1", "22"], ["bbbbb", "333", "4"], ["c", "a note past its column"], ["total"]]
    assert text_table(["name", "x", "y"], rows, min_widths=[0, 2]).splitlines() == [
        "name    x  y",
        "------------",
        "a       1 22",
        "bbbbb 333  4",
        "c     a note past its column",
        "total",
    ]
    assert text_table(["k", "v"], [["a", "b"]], align="rl") == "k v\n---\na b"
    with pytest.raises(ValueError, match="cells"):
        text_table(["k"], [["a", "b"]])
    with pytest.raises(ValueError, match="align"):
        text_table(["k", "v"], [], align="l")


def test_fitted_fractions_of_a_run(tmp_path) -> None:
    run = tmp_path / "run"
    only_held = {"phase": "format", "step": 0, "acc": {"d_held": 1.0}, "n": {"d_held": 5}}
    _write_metrics(run, [only_held, _row(10, 0.75, 0.5, 0.8), _row(20, 1.0, 1 / 6, 0.6)])
    points = fitted_fractions(run)
    assert [p["step"] for p in points] == [10, 20]
    assert points[0]["fitted_known"] == pytest.approx(3 / 10)
    assert points[0]["fitted_unknown"] == pytest.approx(3 / 10)
    assert points[0]["test_acc"] == 0.8
    assert points[1]["fitted_known"] == pytest.approx(4 / 10)
    assert points[1]["fitted_unknown"] == pytest.approx(1 / 10)
    assert (points[1]["n_known"], points[1]["n_unknown"], points[1]["n_test"]) == (4, 6, 5)
    assert fitted_fractions(run / "metrics.jsonl") == points
    with pytest.raises(DataError, match=r"no metrics\.jsonl"):
        fitted_fractions(tmp_path / "nothing")
    _write_metrics(tmp_path / "held_only", [only_held])
    with pytest.raises(DataError, match="d_unknown"):
        fitted_fractions(tmp_path / "held_only")


def test_linear_fit_recovers_exact_coefficients(tmp_path, capsys) -> None:
    beta0, beta_kn, beta_unk = 0.4, 0.073, -0.083
    grid = [(0.1, 0.0), (0.3, 0.1), (0.45, 0.3), (0.5, 0.05), (0.2, 0.4)]
    points = [
        {"fitted_known": k, "fitted_unknown": u, "test_acc": beta0 + beta_kn * k + beta_unk * u}
        for k, u in grid
    ]
    fit = linear_fit(points)
    assert fit["beta0"] == pytest.approx(beta0)
    assert fit["beta_kn"] == pytest.approx(beta_kn)
    assert fit["beta_unk"] == pytest.approx(beta_unk)
    assert fit["r2"] == pytest.approx(1.0)
    assert (fit["n_points"], fit["units"]) == (5, "fraction")
    pct = linear_fit(points, percent=True)
    assert pct["beta_kn"] == pytest.approx(7.3) and pct["beta_unk"] == pytest.approx(-8.3)
    assert pct["units"] == "percent"

    with pytest.raises(ValueError, match="at least 3 points"):
        linear_fit(points[:2])
    collinear = [
        {"fitted_known": x, "fitted_unknown": 2 * x, "test_acc": x} for x in (0.1, 0.2, 0.3)
    ]
    with pytest.raises(ValueError, match="singular"):
        linear_fit(collinear)

    run = tmp_path / "run"
    _write_metrics(run, [_row(i, 0.25 * (i % 4 + 1), i / 6, 0.5 + 0.01 * i) for i in range(6)])
    assert gekhman_main([str(run)]) == 0
    assert "R²" in capsys.readouterr().out
    assert gekhman_main([str(tmp_path / "missing")]) == 1
