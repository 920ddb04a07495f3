"""Scoring and ranking of known facts by their exposure to a proposed training set.

The pieces of ``factkeep audit`` that need no probing: the category shares of the training facts,
each known fact's nearest training key (the training subject whose hidden state is the most
similar to its own, the one :func:`~factkeep.analysis.overlap.overlap_features` reports as
``max_key_cosine``), the exposure score (``max_key_cosine``, or the probability of being forgotten
under a logistic regression written by ``factkeep analyze overlap``), the ranking, and the
training keys that are the nearest key of the most exposed known facts ("risky training
examples"), and the Markdown report (:func:`format_summary`) with its one-line advice.

Example::

    rows = overlap_features(model, tok, known, unknown_train)
    nearest = nearest_keys(model, tok, known, unknown_train)
    coefficients = load_regression("runs/an/overlap/regression.json")   # optional
    scores = regression_probabilities(rows, coefficients)               # or max_key_cosine
    ranked = rank_by_score(rows, scores)
    risky = risky_training_keys(ranked[:20], unknown_train)
    print(format_summary(audit_document))                  # the dict audit.json holds
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from factkeep.analysis.forecast import REPLAY_VALIDATED, VALIDATED, is_strong
from factkeep.analysis.overlap import FEATURE_NAMES
from factkeep.analysis.regression import INTERCEPT
from factkeep.analysis.representations import hidden_states
from factkeep.config import ConfigError
from factkeep.data.facts import CATEGORIES, UNKNOWN, Fact

__all__ = [
    "DEFAULT_SCORE",
    "category_shares",
    "forecast_strength",
    "format_summary",
    "load_regression",
    "nearest_keys",
    "rank_by_score",
    "recommendation",
    "regression_probabilities",
    "regression_relations",
    "risky_training_keys",
    "unfitted_relations",
]

DEFAULT_SCORE = "max_key_cosine"
"""The exposure score without a regression: the largest key cosine to a training subject."""

_CATEGORICAL = "relation="


def category_shares(facts: Sequence[Fact]) -> tuple[dict[str, int], dict[str, float]]:
    """Counts and shares of each SLiCK category (CATEGORIES order) among probed facts.

    Raises:
        ValueError: no facts, or a fact without a category.
    """
    if not facts:
        raise ValueError("no facts")
    counts = dict.fromkeys(CATEGORIES, 0)
    for fact in facts:
        if fact.category is None:
            raise ValueError(f"fact {fact.id!r} has no category")
        counts[fact.category] += 1
    return counts, {c: n / len(facts) for c, n in counts.items()}


def nearest_keys(
    model: Any,
    tokenizer: Any,
    known: Sequence[Fact],
    train: Sequence[Fact],
    layer: int | None = None,
    batch_size: int = 64,
) -> list[tuple[str, float]]:
    """Each known fact's nearest training subject and their key cosine similarity.

    The keys are the subjects' hidden states at ``layer`` (last token), as in
    :func:`~factkeep.analysis.overlap.overlap_features`, so the cosine equals its
    ``max_key_cosine``. Ties go to the training subject seen first.

    Returns:
        ``(training subject, cosine)`` per known fact, in order.
    """
    subjects = list(dict.fromkeys(f.subject for f in train))
    held = list(dict.fromkeys(f.subject for f in known))
    h = torch.nn.functional.normalize(
        hidden_states(model, tokenizer, held, layer, "last", batch_size), dim=-1, eps=1e-12
    )  # (N, D)
    t = torch.nn.functional.normalize(
        hidden_states(model, tokenizer, subjects, layer, "last", batch_size), dim=-1, eps=1e-12
    )  # (M, D)
    best, index = (h @ t.T).max(dim=1)  # (N,), (N,)
    by_subject = {s: (subjects[int(index[i])], float(best[i])) for i, s in enumerate(held)}
    return [by_subject[f.subject] for f in known]


def load_regression(path: str | Path) -> dict[str, float]:
    """The coefficients (name -> log-odds estimate) of a ``regression.json`` of ``analyze overlap``.

    Every coefficient must be a column the audit measures: a name of
    :data:`~factkeep.analysis.overlap.FEATURE_NAMES` or a relation indicator ``relation=<value>``.

    Raises:
        ConfigError: the file is missing, unreadable, holds no fitted regression, or uses a
            column the audit does not measure.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"regression: file not found: {path}")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"regression: {path} is not readable JSON ({exc})") from None
    fit = document.get("regression") if isinstance(document, dict) else None
    if not isinstance(fit, dict) or not isinstance(fit.get("coefficients"), list):
        why = document.get("skipped") if isinstance(document, dict) else None
        raise ConfigError(
            f"regression: {path} holds no fitted regression"
            + (
                f" ({why})"
                if why
                else " (expected the regression.json of factkeep analyze overlap)"
            )
        )
    coefficients: dict[str, float] = {}
    for i, coef in enumerate(fit["coefficients"]):
        name = coef.get("name") if isinstance(coef, dict) else None
        value = coef.get("estimate") if isinstance(coef, dict) else None
        if (
            not isinstance(name, str)
            or isinstance(value, bool)
            or not isinstance(value, int | float)
        ):
            raise ConfigError(f"regression: {path}: coefficient {i} needs a name and an estimate")
        if not math.isfinite(value):
            raise ConfigError(f"regression: {path}: coefficient {name!r} is not finite")
        if name != INTERCEPT and name not in FEATURE_NAMES and not name.startswith(_CATEGORICAL):
            raise ConfigError(
                f"regression: {path} uses column {name!r}, which the audit does not measure "
                f"(it measures {', '.join(FEATURE_NAMES)} and relation=<value> indicators)"
            )
        coefficients[name] = float(value)
    return coefficients


def regression_relations(path: str | Path) -> list[str] | None:
    """The relations of the facts a ``regression.json`` was fitted on (None if not recorded,
    as in files of older versions). Call after :func:`load_regression` has checked the file."""
    relations = json.loads(Path(path).read_text(encoding="utf-8")).get("relations")
    return [str(r) for r in relations] if isinstance(relations, list) else None


def unfitted_relations(rows: Sequence[Mapping[str, Any]], fitted: Sequence[str]) -> list[str]:
    """The relations of ``rows`` that the regression never saw: their facts are scored as its
    baseline relation, which says nothing about them."""
    return sorted({str(row["relation"]) for row in rows} - set(fitted))


def regression_probabilities(
    rows: Sequence[Mapping[str, Any]], coefficients: Mapping[str, float]
) -> list[float]:
    """``sigmoid(intercept + sum(estimate * column))`` of each row: its fitted P(forgotten).

    A ``relation=<value>`` column is 1 for rows of that relation, else 0 (a relation with no
    column is the regression's baseline).

    Raises:
        ConfigError: a row lacks a column of the regression.
    """
    out = []
    for row in rows:
        eta = coefficients.get(INTERCEPT, 0.0)
        for name, estimate in coefficients.items():
            if name == INTERCEPT:
                continue
            if name.startswith(_CATEGORICAL):
                value = float(str(row["relation"]) == name[len(_CATEGORICAL) :])
            elif name in row:
                value = float(row[name])
            else:
                raise ConfigError(f"the regression's column {name!r} is not among the measures")
            eta += estimate * value
        out.append(0.5 * (1.0 + math.tanh(0.5 * eta)))  # sigmoid without overflow
    return out


def rank_by_score(rows: Sequence[Mapping[str, Any]], scores: Sequence[float]) -> list[dict]:
    """Copies of ``rows`` with ``score`` and ``rank`` (1 = most exposed), sorted by rank.

    Higher scores rank first; ties keep the input order.
    """
    if len(rows) != len(scores):
        raise ValueError(f"{len(rows)} rows but {len(scores)} scores")
    order = sorted(range(len(rows)), key=lambda i: -scores[i])
    return [{**rows[i], "score": float(scores[i]), "rank": r} for r, i in enumerate(order, 1)]


def risky_training_keys(
    top: Sequence[Mapping[str, Any]], train: Sequence[Fact]
) -> list[dict[str, Any]]:
    """The training keys that are the nearest key of the given (most exposed) known facts.

    A key is a training subject; every training fact about it shares it, so the count is per key
    and the counts sum to ``len(top)``. Rows read ``nearest_subject`` of each known fact.

    Returns:
        One dict per key that is the nearest of at least one known fact: ``subject``,
        ``nearest_for`` (how many), ``known_ids``, ``best_cosine`` (the highest
        ``max_key_cosine`` among them) and ``train_ids`` (the training facts with that subject),
        sorted by ``nearest_for`` then ``best_cosine``, both descending.
    """
    by_subject: dict[str, list[str]] = {}
    for fact in train:
        by_subject.setdefault(fact.subject, []).append(fact.id)
    keys: dict[str, dict[str, Any]] = {}
    for row in top:
        subject = str(row["nearest_subject"])
        entry = keys.setdefault(
            subject,
            {
                "subject": subject,
                "nearest_for": 0,
                "known_ids": [],
                "best_cosine": -1.0,
                "train_ids": by_subject.get(subject, []),
            },
        )
        entry["nearest_for"] += 1
        entry["known_ids"].append(row["id"])
        entry["best_cosine"] = max(entry["best_cosine"], float(row["max_key_cosine"]))
    return sorted(keys.values(), key=lambda e: (-e["nearest_for"], -e["best_cosine"]))


def _table(head: list[str], align: str, rows: list[list[Any]]) -> list[str]:
    """Markdown table lines; ``align`` has one ``l``/``r`` per column."""

    def cell(value: Any) -> str:
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    rule = "|".join("---:" if a == "r" else "---" for a in align)
    return [f"| {' | '.join(head)} |", f"|{rule}|"] + [
        f"| {' | '.join(cell(v) for v in row)} |" for row in rows
    ]


def forecast_strength(score: str, checked: Mapping[str, Any] | None) -> dict[str, Any]:
    """How far the audit's ranking can be trusted, and why.

    ``level`` is ``strong`` (it forecast the run of ``validate=`` with AUC >=
    :data:`~factkeep.analysis.forecast.STRONG_AUC` and a top-decile lift >=
    :data:`~factkeep.analysis.forecast.STRONG_LIFT`), ``validated`` (no run to check against, but
    it reached both in every setting of :data:`~factkeep.analysis.forecast.VALIDATED`) or
    ``weak`` (it fell short on the run, or in a validated setting).
    """
    quoted = VALIDATED.get(score, [])
    if checked is not None and checked.get("auc") is not None:
        auc, lift = checked["auc"], checked["top_decile_lift"]
        good = is_strong(auc, lift)
        return {
            "level": "strong" if good else "weak",
            "basis": "validate",
            "reason": (
                f"on {checked['run']} it ranked the forgotten facts with AUC {auc:.2f} and "
                f"{lift:.1f}x the base rate in its top decile"
            ),
            "quoted": quoted,
        }
    good = bool(quoted) and all(is_strong(q["auc"], q["top_decile_lift"]) for q in quoted)
    where = "; ".join(
        f"{q['setting']}: AUC {q['auc']:.2f}, top decile {q['top_decile_lift']:.1f}x"
        for q in quoted
    )
    return {
        "level": "validated" if good else "weak",
        "basis": "bench",
        "reason": f"in validation ({where or 'none'})",
        "quoted": quoted,
    }


def recommendation(
    n_unknown: int,
    strength: Mapping[str, Any],
    n_at_risk: int,
    known: str = "KNOWN",
    out: str = "AUDIT_FOLDER",
) -> str:
    """The audit's advice, from the Unknown count and how far its forecast can be trusted
    (``known`` and ``out``: the audit's ``known=`` and ``out=``, for the replay command)."""
    if n_unknown == 0:
        return (
            "no training fact is Unknown to the model, so plain SFT (`--config sft`) teaches it "
            "nothing new and should forget little."
        )
    advice = (
        f"{n_unknown} training fact(s) are Unknown to the model, so SFT will make it forget some "
        "known facts: fine-tune with `factkeep train --config self_distill`"
    )
    if strength["level"] == "weak":
        return (
            f"{advice}. This ranking is a weak forecast of which facts ({strength['reason']}), so "
            "the audit names none; `score=trial` is the validated forecast."
        )
    evidence = "; ".join(
        f"{r['setting']}: {100 * r['forecast']:.1f}% of the facts to keep right after "
        f"fine-tuning, against {100 * r['random']:.1f}% with random replay and "
        f"{100 * r['sft']:.1f}% with none"
        for r in REPLAY_VALIDATED
    )
    return (
        f"{advice}. To protect these facts in particular, replay the {n_at_risk} most at risk "
        f"(at_risk.jsonl) while fine-tuning: `--config forecast_replay replay.pool=[{known}] "
        f"replay.forecast={out}` with the planned run's data and options ({evidence}); it "
        "protects the facts it replays, the others no better than random replay does."
    )


_KEY_COLUMNS = ("rank", "id", "subject", "relation", "score", "max_key_cosine", "token_overlap")
_LOG_PROB_COLUMNS = ("rank", "id", "subject", "relation", "category")
_NUMERIC = ("rank", "score", "max_key_cosine", "token_overlap", "log_prob_after", "log_prob_before")


def _scoring_lines(doc: Mapping[str, Any]) -> list[str]:
    """What the ranking measures, in words."""
    scoring = doc["scoring"]
    if scoring["score"] == "trial":
        share = scoring["trial_share"]
        return [
            f"Score: the answer's log-probability after a trial fine-tune of "
            f"{scoring['trial_steps']} of the planned {scoring['planned_steps']} steps"
            + (f" ({100 * share:.0f}%)" if share else "")
            + f" at lr {scoring['trial_lr']:g}, lowest first ({scoring['trial_seconds']:.1f} s)."
        ]
    if scoring["score"] == "confidence":
        return ["Score: the answer's log-probability before training, lowest first."]
    return [
        f"Score: {scoring.get('measure', 'max_key_cosine')}, against the "
        f"{scoring['n_against']} {scoring['against_label']}."
    ]


def _validation_lines(doc: Mapping[str, Any]) -> list[str]:
    """How well the score forecast forgetting: in validation, and on ``validate=``'s run."""
    strength = doc["strength"]
    lines = ["## How far this forecast can be trusted", ""]
    if strength["quoted"]:
        lines += [
            *_table(
                ["validation setting", "AUC", "top decile / base rate", "cost / fine-tune"],
                "lrrr",
                [
                    [q["setting"], q["auc"], f"{q['top_decile_lift']:.1f}x",
                     f"{100 * q['cost_share']:.0f}%" if q.get("cost_share") else "-"]
                    for q in strength["quoted"]
                ],
            ),
            "",
        ]  # fmt: skip
    checked = doc.get("validation")
    if checked is not None:
        n, k = checked["n"], checked["n_forgotten"]
        text = f"Against `{checked['run']}`: {k} of {n} known facts were forgotten"
        if checked["auc"] is not None:
            text += (
                f"; AUC {checked['auc']:.3f}, top decile forgotten at "
                f"{100 * checked['top_decile_rate']:.1f}% against a base rate of "
                f"{100 * checked['base_rate']:.1f}% ({checked['top_decile_lift']:.1f}x)"
            )
        if checked.get("cost_share"):
            text += f"; the forecast cost {100 * checked['cost_share']:.1f}% of that run's time"
        lines += [text + ".", ""]
    verdict = {
        "strong": "Strong",
        "validated": "Validated elsewhere, unverified on this model and data",
        "weak": "Weak",
    }[strength["level"]]
    lines += [f"**{verdict}:** {strength['reason']}.", ""]
    if strength["level"] == "validated":
        lines += [
            "Check it on your setting after a first fine-tune: `validate=RUN_FOLDER`.",
            "",
        ]
    return lines


def _top_lines(doc: Mapping[str, Any]) -> list[str]:
    """The most exposed facts, and for ``score=keys`` their nearest training keys."""
    top = doc["top_exposed"]
    if not top:
        return ["No known fact could be ranked.", ""]
    keys = doc["scoring"]["score"] == "keys"
    # trial / confidence: the answer's log-probability the ranking sorts by, lowest first
    measured = "log_prob_after" if doc["scoring"]["score"] == "trial" else "log_prob_before"
    columns = _KEY_COLUMNS if keys else (*_LOG_PROB_COLUMNS, measured)
    head = [*columns, "nearest training key"] if keys else list(columns)
    lines = [
        f"## The {len(top)} known facts ranked most at risk",
        "",
        *_scoring_lines(doc),
        "",
        *_table(
            head,
            "".join("r" if k in _NUMERIC else "l" for k in head),
            [[r.get(k) for k in head if k != "nearest training key"]
             + ([r["nearest_subject"]] if keys else []) for r in top],
        ),
        "",
    ]  # fmt: skip
    return lines


def format_summary(doc: Mapping[str, Any]) -> str:
    """The Markdown report of an ``audit.json`` document: the Unknown share and category table,
    the scoring's validation, the facts ranked most at risk, the recommendation."""
    n, unknown, counts = doc["n_train"], doc["category_counts"][UNKNOWN], doc["category_counts"]
    lines = [
        "# Fine-tuning risk audit",
        "",
        f"Model `{doc['model']}`; {n} training facts; {doc['n_known']} known facts to keep.",
        "",
        f"**Training on Unknown facts is what makes models forget: "
        f"{100 * doc['unknown_share']:.1f}% of this set ({unknown} of {n} facts) is Unknown.**",
        "",
        *_table(
            ["category", "facts", "share"],
            "lrr",
            [[c, counts[c], f"{100 * doc['category_shares'][c]:.1f}%"] for c in CATEGORIES],
        ),
        "",
    ]
    if doc["strength"]["level"] == "weak":
        lines += _validation_lines(doc)
        score = doc["scoring"]["score"]
        lines += [f"The ranking ({score}) is in exposed.jsonl; it is not listed here.", ""]
    else:
        lines += _top_lines(doc) + _validation_lines(doc)
    lines.append(f"**Recommendation:** {doc['recommendation']}")
    return "\n".join(lines) + "\n"
