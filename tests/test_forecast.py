"""Forgetting forecasts (scores, validation, the trial fine-tune) and forecast-guided replay."""

from __future__ import annotations

import itertools
import json
import logging
import random
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from factkeep.analysis import forecast as forecast_module
from factkeep.analysis.forecast import (
    STRONG_AUC,
    STRONG_LIFT,
    forgotten_in_run,
    is_strong,
    roc_auc,
    top_lift,
    trial_forecast,
    validation,
)
from factkeep.analysis.overlap import answer_log_probs
from factkeep.cli import main
from factkeep.config import ConfigError, resolve_config
from factkeep.data.facts import Fact, read_facts
from factkeep.errors import DataError
from factkeep.training.config import TrainCommandConfig
from factkeep.training.examples import QADataset, ReplayMix, at_risk_pool
from factkeep.training.trial import TrialRecipe, planned_steps, trial_fine_tune

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "factkeep" / "configs"
FAST = ["optim.epochs=1", "optim.batch_size=8", "eval.max_new_tokens=3", "progress=false"]


# -- shared data -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def study(tiny_study) -> dict[str, Any]:
    """The shared tiny world (24 known, 24 unknown, 16 held facts) and its random tiny Llama."""
    built = tiny_study("forecast")
    splits = built["splits"]
    built["known"] = read_facts(splits / "d_known.jsonl")
    built["unknown"] = read_facts(splits / "d_unknown.jsonl")
    built["tok"] = AutoTokenizer.from_pretrained(built["model"])
    return built


@pytest.fixture
def load_model(study) -> Callable[[], torch.nn.Module]:
    """A fresh copy of the tiny model, in eval mode, each call."""

    def load() -> torch.nn.Module:
        return AutoModelForCausalLM.from_pretrained(study["model"]).eval()

    return load


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _fact(i: int) -> Fact:
    return Fact(id=f"k{i}", question=f"Question {i}?", answers=[f"a{i}"], relation="r", subject="s")


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any] | str]) -> Path:
    """Write ``rows`` one a line (dicts as JSON, strings as they are)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _write_audit(folder: Path, ids: Sequence[str], seed: int = 0) -> dict[str, int]:
    """An audit folder whose ``exposed.jsonl`` ranks ``ids`` in a seeded random order (plus one
    fact outside any pool); returns the rank of each id."""
    order = list(ids)
    random.Random(seed).shuffle(order)
    rank = {fact_id: r for r, fact_id in enumerate(order, start=1)}
    rows = [
        {"id": i, "score": -float(r), "rank": r}
        for i, r in sorted(rank.items(), key=lambda x: x[1])
    ]
    rows.insert(1, {"id": "not-in-the-pool", "score": 0.0, "rank": 0})
    _write_jsonl(folder / "exposed.jsonl", rows)
    return rank


# -- roc_auc, top_lift, validation, is_strong ------------------------------------------------------


def _pairwise_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """The AUC by definition: over all (forgotten, kept) pairs, 1 if ordered right, 1/2 if tied."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_roc_auc_hand_computed_values() -> None:
    # Positives 0.35, 0.8 vs negatives 0.1, 0.4: 3 of 4 pairs ordered right.
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # Positives 0.5, 0.9 vs negatives 0.5, 0.2: one tie (1/2) and three wins -> 3.5 / 4.
    assert roc_auc([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1]) == pytest.approx(0.875)
    assert roc_auc([1.0, 1.0, 1.0], [1, 0, 0]) == pytest.approx(0.5)  # all tied
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0


def test_roc_auc_matches_the_pairwise_definition_with_ties() -> None:
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(2, 30)
        scores = [float(rng.randint(0, 5)) for _ in range(n)]  # many ties
        labels = [0, 1] + [rng.randint(0, 1) for _ in range(n - 2)]
        rng.shuffle(labels)
        assert roc_auc(scores, labels) == pytest.approx(_pairwise_auc(scores, labels))


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        ([0.1, 0.2], [1, 1], "both"),
        ([0.1, 0.2], [0, 0], "both"),
        ([0.1, 0.2, 0.3], [0, 1], "3 scores but 2 labels"),
    ],
)
def test_roc_auc_rejects_one_class_and_length_mismatch(scores, labels, message) -> None:
    with pytest.raises(ValueError, match=message):
        roc_auc(scores, labels)


def test_top_lift_hand_computed_values() -> None:
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]
    labels = [1, 0, 1, 0, 0, 0, 0, 0, 0, 0]  # base rate 0.2
    assert top_lift(scores, labels) == pytest.approx(5.0)  # top 1: forgotten -> 1 / 0.2
    assert top_lift(scores, labels, 0.2) == pytest.approx(2.5)  # top 2: 1 of 2 -> 0.5 / 0.2
    assert top_lift(scores, labels, 0.3) == pytest.approx(10 / 3)  # top 3: 2 of 3
    assert top_lift(scores, labels, 1.0) == pytest.approx(1.0)  # everything: the base rate
    assert top_lift(scores, labels[::-1], 0.5) == 0.0  # the forgotten ones score lowest
    # A fraction too small for one fact still takes the top one.
    assert top_lift(scores, labels, 0.01) == pytest.approx(5.0)


def test_top_lift_ties_keep_the_input_order() -> None:
    assert top_lift([1.0] * 4, [1, 0, 0, 0], 0.25) == pytest.approx(4.0)
    assert top_lift([1.0] * 4, [0, 0, 0, 1], 0.25) == 0.0


@pytest.mark.parametrize(
    ("labels", "fraction", "message"),
    [
        ([0, 1, 0], 0.0, "fraction"),
        ([0, 1, 0], -0.1, "fraction"),
        ([0, 1, 0], 1.5, "fraction"),
        ([0, 0, 0], 0.5, "at least one forgotten"),
        ([0, 1], 0.5, "3 scores but 2 labels"),
    ],
)
def test_top_lift_rejects_bad_input(labels, fraction, message) -> None:
    with pytest.raises(ValueError, match=message):
        top_lift([0.3, 0.2, 0.1], labels, fraction)


def test_validation_skips_unlabelled_ids_and_counts() -> None:
    ids = ["a", "b", "c", "d", "e", "f"]
    scores = [0.9, 0.1, 0.8, 0.2, 0.7, 5.0]
    labels = {"a": 1, "b": 0, "c": 0, "d": 0, "e": 1}  # "f" (the top score) was not known
    v = validation(ids, scores, labels)
    assert v["n"] == 5 and v["n_forgotten"] == 2
    assert v["base_rate"] == pytest.approx(0.4)
    # Forgotten a (0.9), e (0.7) vs kept c (0.8), d (0.2), b (0.1): 5 of 6 pairs right.
    assert v["auc"] == pytest.approx(5 / 6)
    assert v["top_decile_lift"] == pytest.approx(1 / 0.4)  # the top one (a) is forgotten
    assert v["top_decile_rate"] == pytest.approx(1.0)


def test_validation_with_one_class_has_no_auc() -> None:
    kept = validation(["a", "b"], [0.2, 0.1], {"a": 0, "b": 0})
    assert kept["auc"] is None and kept["top_decile_lift"] is None
    assert kept["top_decile_rate"] is None and kept["base_rate"] == 0.0
    forgotten = validation(["a", "b"], [0.2, 0.1], {"a": 1, "b": 1})
    assert forgotten["auc"] is None and forgotten["base_rate"] == 1.0
    assert forgotten["top_decile_lift"] == pytest.approx(1.0)
    nothing = validation(["a"], [0.2], {})
    assert nothing["n"] == 0 and nothing["auc"] is None and nothing["base_rate"] == 0.0
    with pytest.raises(ValueError):
        validation(["a", "b"], [0.2], {"a": 1})  # one score short


def test_is_strong_needs_both_thresholds() -> None:
    assert is_strong(STRONG_AUC, STRONG_LIFT)
    assert is_strong(0.9, 3.0)
    assert not is_strong(STRONG_AUC - 0.01, 3.0)
    assert not is_strong(0.9, STRONG_LIFT - 0.01)
    assert not is_strong(None, 3.0)
    assert not is_strong(0.9, None)


# -- forgotten_in_run ------------------------------------------------------------------------------


def _sample(fact_id: str, correct: bool, split: str = "d_held") -> dict[str, Any]:
    return {"split": split, "id": fact_id, "prediction": "x", "correct": correct}


def _fake_run(root: Path, evaluations: dict[int, dict[str, bool]]) -> Path:
    """A run folder: ``config.yaml`` and a samples file per step (``{step: {id: correct}}``)."""
    root.mkdir(parents=True)
    (root / "config.yaml").write_text("method: sft\n")
    for step, answers in evaluations.items():
        rows = [_sample(i, ok) for i, ok in answers.items()]
        _write_jsonl(root / "samples" / f"step-{step:06d}.jsonl", rows)
    return root


FIRST = {"a": True, "b": True, "c": False, "d": True}
LAST = {"a": True, "b": False, "c": True, "d": False}


def test_forgotten_in_run_compares_the_first_and_last_evaluations(tmp_path) -> None:
    middle = dict.fromkeys(FIRST, False)  # ignored: only the first and last evaluations count
    run = _fake_run(tmp_path / "run", {0: FIRST, 5: middle, 10: LAST})
    ids = ["a", "b", "c", "d"]
    assert forgotten_in_run(run, ids) == {"a": 0, "b": 1, "d": 1}  # c was not known at the start
    assert forgotten_in_run(run, ids, "all") == {"a": 0, "b": 1, "c": 0, "d": 1}
    assert forgotten_in_run(str(run), ["d", "a"]) == {"d": 1, "a": 0}  # only the asked ids


def test_forgotten_in_run_names_the_samples_file_without_an_answer(tmp_path) -> None:
    run = _fake_run(tmp_path / "run", {0: FIRST, 10: {k: v for k, v in LAST.items() if k != "d"}})
    with pytest.raises(DataError, match=r"step-000010\.jsonl.*first: 'd'") as err:
        forgotten_in_run(run, ["a", "b", "c", "d"])
    assert err.value.path == str(run / "samples" / "step-000010.jsonl")
    run = _fake_run(tmp_path / "run2", {0: {k: v for k, v in FIRST.items() if k != "b"}, 10: LAST})
    with pytest.raises(DataError, match=r"step-000000\.jsonl.*first: 'b'"):
        forgotten_in_run(run, ["a", "b", "c", "d"])
    # reference="all" reads the last evaluation only.
    assert forgotten_in_run(run, ["a", "b"], "all") == {"a": 0, "b": 1}


def test_forgotten_in_run_needs_enough_evaluations(tmp_path) -> None:
    run = _fake_run(tmp_path / "run", {10: LAST})
    with pytest.raises(DataError, match="two evaluations") as err:
        forgotten_in_run(run, ["a"])
    assert err.value.path == str(run / "samples")
    assert forgotten_in_run(run, ["a", "b"], "all") == {"a": 0, "b": 1}
    empty = _fake_run(tmp_path / "empty", {})
    with pytest.raises(DataError, match="an evaluation"):
        forgotten_in_run(empty, ["a"], "all")


# -- the trial fine-tune ---------------------------------------------------------------------------


def test_planned_steps_counts_like_the_trainer() -> None:
    assert planned_steps(500, 8, 32) == 128  # 16 batches an epoch
    assert planned_steps(500, 8, 16, grad_accum=2) == 128  # 32 batches, 2 a step
    assert planned_steps(500, 0.5, 32) == 8
    assert planned_steps(500, 1.3, 32) == 21  # ceil(1.3 * 16)
    assert planned_steps(10, 3, 32) == 3  # one (short) batch an epoch
    assert planned_steps(10, 2, 32, grad_accum=4) == 2  # at least one step an epoch
    assert planned_steps(0, 8, 32) == 0
    assert planned_steps(500, 0, 32) == 0


def test_planned_steps_matches_a_real_run(study, tmp_path) -> None:
    """``sft`` with d_known + d_unknown (48 facts), batch 8: 6 batches an epoch."""
    out = tmp_path / "sft"
    args = ["train", f"model={study['model']}", f"data.splits={study['splits']}", f"out={out}"]
    args += ["--config", "sft", *FAST, "optim.epochs=2", "eval.at_start=false"]
    args += ["eval.each_epoch=false", "eval.max_facts=1"]
    assert main(args) == 0
    steps = json.loads((out / "results.json").read_text())["steps"]
    assert steps == planned_steps(48, 2, 8) == 12


def test_planned_steps_with_a_partial_accumulation_matches_a_real_run(study, tmp_path) -> None:
    """6 batches an epoch, 4 per step: the Trainer makes 2 steps an epoch (4 + 2 batches)."""
    out = tmp_path / "sft_accum"
    args = ["train", f"model={study['model']}", f"data.splits={study['splits']}", f"out={out}"]
    args += ["--config", "sft", *FAST, "optim.grad_accum=4", "eval.at_start=false"]
    args += ["eval.each_epoch=false", "eval.max_facts=1"]
    assert main(args) == 0
    steps = json.loads((out / "results.json").read_text())["steps"]
    assert steps == 2
    assert planned_steps(48, 1, 8, grad_accum=4) == steps


@pytest.mark.parametrize(
    "bad",
    [
        {"steps": 0},
        {"steps": -1},
        {"lr": 0.0},
        {"batch_size": 0},
        {"grad_accum": 0},
    ],
)
def test_trial_recipe_rejects_bad_values(bad) -> None:
    with pytest.raises(ValueError):
        TrialRecipe(**{"steps": 1, "lr": 1e-3, "batch_size": 4, **bad})


def test_trial_fine_tune_learns_its_facts_and_changes_the_weights(study, load_model) -> None:
    model, tok = load_model(), study["tok"]
    facts = study["unknown"][:8]
    start = _state(model)
    before = answer_log_probs(model, tok, facts)
    losses = trial_fine_tune(model, tok, facts, TrialRecipe(steps=20, lr=3e-3, batch_size=8))
    after = answer_log_probs(model, tok, facts)
    assert len(losses) == 20 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0]
    assert sum(after) / len(after) > sum(before) / len(before) + 0.5  # mean answer NLL down
    assert not _same_weights(start, _state(model))
    assert not model.training
    with pytest.raises(ValueError, match="training facts"):
        trial_fine_tune(model, tok, [], TrialRecipe(steps=1, lr=1e-3, batch_size=4))


def test_trial_fine_tune_grad_accum_takes_that_many_batches_a_step(study, load_model) -> None:
    model, tok = load_model(), study["tok"]
    facts = study["unknown"][:12]
    seen: list[tuple[int, ...]] = []

    def record(_module: Any, _args: Any, kwargs: dict[str, Any], _out: Any) -> None:
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        seen.extend(tuple(row[m.bool()].tolist()) for row, m in zip(ids, mask, strict=True))

    calls = Counter[str]()
    model.register_forward_pre_hook(lambda *_: calls.update(["forward"]))
    model.register_forward_hook(record, with_kwargs=True)
    recipe = TrialRecipe(steps=3, lr=1e-3, batch_size=4, grad_accum=2)
    losses = trial_fine_tune(model, tok, facts, recipe)
    assert len(losses) == 3
    assert calls["forward"] == 6  # 3 steps x 2 batches
    assert len(seen) == 24  # 6 batches of 4: two epochs of 12 facts
    encoded = {tuple(e["input_ids"]) for e in QADataset.from_facts(tok, facts).examples}
    assert set(seen[:12]) == encoded and set(seen[12:]) == encoded  # each epoch: every fact once
    assert seen[:12] != seen[12:]  # reshuffled


def test_trial_forecast_measures_after_the_trial_and_restores_the_weights(
    study, load_model
) -> None:
    model, tok = load_model(), study["tok"]
    known, train = study["known"][:8], study["unknown"][:8]
    start = _state(model)
    untouched = answer_log_probs(model, tok, known)
    recipe = TrialRecipe(steps=3, lr=1e-2, batch_size=4, seed=1)
    result = trial_forecast(model, tok, known, train, recipe, batch_size=3)
    assert result.before is None
    assert len(result.after) == len(known) and result.steps == 3 and len(result.losses) == 3
    assert result.risk == [-x for x in result.after]
    assert result.after != pytest.approx(untouched, abs=1e-4)  # the trial moved them
    assert result.seconds > 0
    assert _same_weights(start, _state(model))
    assert answer_log_probs(model, tok, known) == untouched
    again = trial_forecast(model, tok, known, train, recipe, measure_before=True)
    assert again.before == pytest.approx(untouched, abs=1e-6)
    assert again.after == pytest.approx(result.after, abs=1e-6)  # same start, same seed
    assert again.losses == pytest.approx(result.losses, abs=1e-6)
    assert _same_weights(start, _state(model))


def test_trial_forecast_restores_the_weights_when_measuring_fails(
    study, load_model, monkeypatch
) -> None:
    model, tok = load_model(), study["tok"]
    start = _state(model)

    def broken(*_args: Any, **_kwargs: Any) -> list[float]:
        raise RuntimeError("measuring failed")

    monkeypatch.setattr(forecast_module, "answer_log_probs", broken)
    recipe = TrialRecipe(steps=2, lr=1e-2, batch_size=4)
    with pytest.raises(RuntimeError, match="measuring failed"):
        trial_forecast(model, tok, study["known"][:4], study["unknown"][:8], recipe)
    assert _same_weights(start, _state(model))


# -- forecast-guided replay ------------------------------------------------------------------------


def test_at_risk_pool_takes_the_top_share_most_at_risk_first(tmp_path) -> None:
    pool = [_fact(i) for i in range(20)]
    rank = _write_audit(tmp_path, [f.id for f in pool])
    by_rank = sorted(pool, key=lambda f: rank[f.id])
    assert at_risk_pool(pool, tmp_path, 0.25) == by_rank[:5]
    assert at_risk_pool(pool, str(tmp_path), 1.0) == by_rank
    assert at_risk_pool(pool, tmp_path, 0.01) == by_rank[:1]  # at least one fact
    assert at_risk_pool(pool[::-1], tmp_path, 0.25) == by_rank[:5]  # the pool's order is ignored


def test_at_risk_pool_without_exposed_jsonl(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"exposed\.jsonl not found") as err:
        at_risk_pool([_fact(0)], tmp_path / "no-audit", 0.5)
    assert str(tmp_path / "no-audit" / "exposed.jsonl") in str(err.value)


def test_at_risk_pool_names_the_first_unranked_pool_fact(tmp_path) -> None:
    pool = [_fact(i) for i in range(6)]
    _write_audit(tmp_path, ["k0", "k1", "k3", "k5"])
    with pytest.raises(ConfigError, match=r"2 of the 6 replay-pool facts.*first: 'k2'") as err:
        at_risk_pool(pool, tmp_path, 0.5)
    assert str(tmp_path / "exposed.jsonl") in str(err.value)


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"id": "k1", "score": 1.0}, "rank"),
        ({"id": "k1", "rank": "2"}, "rank"),
        ({"id": "k1", "rank": 2.0}, "rank"),
        ({"id": "k1", "rank": True}, "rank"),
        ({"id": "k1", "rank": None}, "rank"),
        ({"rank": 2}, "id"),
    ],
)
def test_at_risk_pool_rejects_a_bad_line(tmp_path, row, field) -> None:
    path = _write_jsonl(tmp_path / "exposed.jsonl", [{"id": "k0", "rank": 1}, "", row])
    with pytest.raises(DataError) as err:
        at_risk_pool([_fact(0), _fact(1)], tmp_path, 0.5)
    assert (err.value.path, err.value.line, err.value.field) == (str(path), 3, field)
    assert str(err.value).startswith(f"{path}:3: field '{field}':")


def test_replay_mix_replays_only_the_at_risk_facts(study, tmp_path) -> None:
    tok, known, unknown = study["tok"], study["known"], study["unknown"]
    _write_audit(tmp_path, [f.id for f in known])
    at_risk = at_risk_pool(known, tmp_path, 0.25)
    assert len(at_risk) == 6
    main_data = QADataset.from_facts(tok, unknown)
    replay = QADataset.from_facts(tok, at_risk)
    risky = {tuple(e["input_ids"]) for e in replay.examples}
    safe = {tuple(e["input_ids"]) for e in QADataset.from_facts(tok, known).examples} - risky
    assert len(safe) == 18
    for fraction in (0.5, 0.3, 0.1):
        mix = ReplayMix(main_data, replay, fraction=fraction, seed=0)
        n_extra = round(len(main_data) * fraction / (1 - fraction))
        assert len(mix) == len(main_data) + n_extra
        assert [mix[i] for i in range(len(main_data))] == main_data.examples
        replayed = [tuple(mix[i]["input_ids"]) for i in range(len(main_data), len(mix))]
        assert set(replayed) <= risky and not set(replayed) & safe
        assert set(mix.replayed_ids) <= {f.id for f in at_risk}
        assert len(mix.replayed_ids) == min(n_extra, len(at_risk))
    half = ReplayMix(main_data, replay, fraction=0.5, seed=0)
    assert len(half) == 48  # 24 main + 24 replays: half of the examples
    counts = Counter(tuple(half[i]["input_ids"]) for i in range(24, 48))
    assert set(counts) == risky and set(counts.values()) == {4}  # the pool, cycled evenly
    assert half.replayed_ids == [f.id for f in at_risk]


# -- the train command -----------------------------------------------------------------------------


def test_forecast_replay_needs_an_audit_folder() -> None:
    cfg = resolve_config(TrainCommandConfig, CONFIGS / "forecast_replay.yaml", ["model=x"])
    with pytest.raises(ConfigError, match=r"replay\.forecast"):
        cfg.validate()
    cfg.replay.forecast = "runs/audit"
    cfg.validate()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["replay.forecast=runs/audit", "replay.fraction=0"], r"replay\.fraction > 0"),
        (["replay.forecast=runs/audit", "replay.fraction=0.2", "replay.forecast_share=0"], "share"),
        (["replay.forecast_share=-0.5"], r"forecast_share must be in \(0, 1\]"),
        (
            ["replay.forecast=runs/audit", "replay.fraction=0.2", "replay.forecast_share=1.5"],
            "share",
        ),
    ],
)
def test_bad_forecast_replay_options_are_refused(overrides, message) -> None:
    cfg = resolve_config(TrainCommandConfig, None, ["model=x", *overrides])
    with pytest.raises(ConfigError, match=message):
        cfg.validate()


def test_forecast_share_of_one_is_accepted() -> None:
    overrides = ["model=x", "replay.forecast=a", "replay.fraction=0.2", "replay.forecast_share=1"]
    resolve_config(TrainCommandConfig, None, overrides).validate()


def _train_args(study: dict[str, Any], out: Path, audit: Path, *extra: str) -> list[str]:
    args = ["train", f"model={study['model']}", f"data.splits={study['splits']}", f"out={out}"]
    args += ["--config", "forecast_replay", f"replay.forecast={audit}", "data.train=[d_unknown]"]
    args += ["replay.pool=[d_known]", "replay.fraction=0.2", "replay.forecast_share=0.25"]
    return [*args, *FAST, *extra]


def test_forecast_replay_trains_on_the_most_at_risk_pool_facts(study, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="factkeep")
    audit, out = tmp_path / "audit", tmp_path / "run"
    rank = _write_audit(audit, [f.id for f in study["known"]])
    assert main(_train_args(study, out, audit)) == 0
    assert "replaying the 6 pool facts most at risk" in caplog.text
    top = sorted(rank, key=rank.__getitem__)[:6]  # 24 known facts x 0.25
    replayed = json.loads((out / "replayed.json").read_text())["ids"]
    assert sorted(replayed) == sorted(top)  # 24 * 0.2 / 0.8 = 6 replays: each once
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "forecast_replay"
    assert results["steps"] == planned_steps(24 + 6, 1, 8) == 4


@pytest.mark.parametrize(
    ("broken", "code", "message"),
    [
        ("missing", 2, "have no forecast in"),
        ("bad_rank", 1, "field 'rank': must be an integer"),
    ],
)
def test_forecast_replay_with_a_bad_audit_writes_nothing(
    study, tmp_path, capsys, broken, code, message
) -> None:
    audit, out = tmp_path / "audit", tmp_path / "run"
    ids = [f.id for f in study["known"]]
    _write_audit(audit, ids[1:] if broken == "missing" else ids)
    if broken == "bad_rank":
        rows = (audit / "exposed.jsonl").read_text().splitlines()
        rows[3] = json.dumps({"id": ids[0], "rank": "first"})
        (audit / "exposed.jsonl").write_text("\n".join(rows) + "\n")
    assert main(_train_args(study, out, audit)) == code
    err = capsys.readouterr().err
    assert message in err and "exposed.jsonl" in err
    if broken == "missing":
        assert repr(ids[0]) in err
    assert not (out / "results.json").exists()
    assert not out.exists()


def test_forecast_replay_without_an_audit_exits_2(study, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    args = ["train", f"model={study['model']}", f"data.splits={study['splits']}", f"out={out}"]
    assert main([*args, "--config", "forecast_replay", *FAST]) == 2
    assert "replay.forecast" in capsys.readouterr().err
    assert not out.exists()
