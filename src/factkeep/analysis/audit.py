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

from factkeep.analysis.overlap import FEATURE_NAMES
from factkeep.analysis.regression import INTERCEPT
from factkeep.analysis.representations import hidden_states
from factkeep.config import ConfigError
from factkeep.data.facts import CATEGORIES, UNKNOWN, Fact

__all__ = [
    "DEFAULT_SCORE",
    "category_shares",
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


_TOP_COLUMNS = ("rank", "id", "subject", "relation", "score", "max_key_cosine", "token_overlap")


def format_summary(doc: Mapping[str, Any], risky_rows: int = 10) -> str:
    """The Markdown report of an ``audit.json`` document: the Unknown share and category table,
    the most exposed known facts, the ``risky_rows`` riskiest training keys, the recommendation."""
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
    top, risky = doc["top_exposed"], doc["risky_training"][:risky_rows]
    if top:
        lines += [
            f"## The {len(top)} most exposed known facts",
            "",
            f"Score: {doc['scoring']['score']}, against the {doc['n_against']} "
            f"{doc['against_label']}.",
            "",
            *_table(
                [*_TOP_COLUMNS, "nearest training key"],
                "rlllrrrl",
                [[r[k] for k in (*_TOP_COLUMNS, "nearest_subject")] for r in top],
            ),
            "",
            f"## The {len(risky)} riskiest training examples",
            "",
            *_table(
                ["training key (subject)", f"nearest key of (top {len(top)})", "training facts"],
                "lrl",
                [[r["subject"], r["nearest_for"], ", ".join(r["train_ids"])] for r in risky],
            ),
            "",
        ]
    else:
        lines += [f"No {doc['against_label']}: no known fact is exposed to them.", ""]
    lines.append(f"**Recommendation:** {doc['recommendation']}")
    return "\n".join(lines) + "\n"


def recommendation(n_unknown: int, n_risky: int) -> str:
    """The one-line advice of the audit, from the Unknown count and the risky keys shown."""
    if n_unknown == 0:
        return (
            "no training fact is Unknown to the model, so plain SFT (`--config sft`) teaches it "
            "nothing new and should forget little."
        )
    return (
        f"{n_unknown} training fact(s) are Unknown to the model: fine-tune with "
        "`factkeep train --config self_distill`, or drop or rewrite the facts of the "
        f"{n_risky} riskiest training key(s) above before fine-tuning."
    )
