"""Evaluate a model on named fact sets: accuracy per split, relation and category.

The measurement is the one used along training (:mod:`factkeep.probing.accuracy`): zero-shot prompt
from the template, one greedy answer per fact (answer only, up to a newline or EOS), scored by
exact match against any gold alias. This module is the Python API behind ``factkeep eval``
(:mod:`factkeep.study.eval`); it writes nothing itself.

Metrics of one split (:func:`evaluate_sets`)::

    {"accuracy": float,                       # fraction of facts answered correctly, in [0, 1]
     "n": int,                                # facts in the split
     "per_relation": {relation: {"accuracy": float, "n": int}},    # relations sorted
     "per_category": {category: {"accuracy": float, "n": int}}}    # SLiCK order, then "none"

(``category`` is the fact's knowledge category, ``"none"`` for facts without one.)

``results.json`` (:func:`results_document`)::

    {"results": {split: <metrics of the split>},   # splits in the order they were given
     "model": str,                                  # the model folder or hub id
     "config": {option: value},                     # the resolved options of the evaluation
     "files": {split: str},                         # the facts file each split was read from
     "versions": {package: str | null},             # as in env.json (factkeep, torch, ...)
     "date": str,                                   # ISO-8601 UTC, e.g. 2025-01-31T12:00:00+00:00
     "n_facts": int,                                # facts over all splits
     "seconds": float}                              # wall time of answering (model load excluded)

``samples.jsonl``: one line per fact, in split order then file order, with the schema of training's
``samples/step-N.jsonl``, so an evaluation compares fact by fact with any training evaluation::

    {"split": "d_held", "id": "p00012.employer", "prediction": "Drihiol", "correct": true}

Example::

    metrics, samples = evaluate_sets(model, tokenizer, {"d_held": held_facts})
    metrics["d_held"]["accuracy"], metrics["d_held"]["per_relation"]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from factkeep.data.facts import CATEGORIES, Fact
from factkeep.data.prompts import DEFAULT_TEMPLATE
from factkeep.probing.accuracy import Sample, accuracy, answer_facts
from factkeep.rundir import environment_info

__all__ = ["NO_CATEGORY", "evaluate_sets", "results_document", "split_metrics"]

NO_CATEGORY = "none"
"""The ``per_category`` key of facts that have no knowledge category."""

_CATEGORY_ORDER = {name: i for i, name in enumerate((*CATEGORIES, NO_CATEGORY))}


def _category(fact: Fact) -> str:
    return fact.category if fact.category is not None else NO_CATEGORY


def _grouped(
    samples: Sequence[Sample], facts: Sequence[Fact], key: Callable[[Fact], str]
) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[Sample]] = {}
    for sample, fact in zip(samples, facts, strict=True):
        groups.setdefault(key(fact), []).append(sample)
    return {name: {"accuracy": accuracy(rows), "n": len(rows)} for name, rows in groups.items()}


def split_metrics(samples: Sequence[Sample], facts: Sequence[Fact]) -> dict[str, Any]:
    """The metrics of one split from its samples (see the module docstring for the schema).

    Args:
        samples: one scored answer per fact, in the order of ``facts``.
        facts: the facts of the split.

    Returns:
        ``{"accuracy", "n", "per_relation", "per_category"}``.
    """
    by_relation = _grouped(samples, facts, lambda f: f.relation)
    by_category = _grouped(samples, facts, _category)
    return {
        "accuracy": accuracy(samples),
        "n": len(samples),
        "per_relation": {k: by_relation[k] for k in sorted(by_relation)},
        "per_category": {
            k: by_category[k]
            for k in sorted(by_category, key=lambda c: (_CATEGORY_ORDER.get(c, len(CATEGORIES)), c))
        },
    }


def evaluate_sets(
    model: Any,
    tokenizer: Any,
    sets: Mapping[str, Sequence[Fact]],
    template: str = DEFAULT_TEMPLATE,
    batch_size: int = 256,
    max_new_tokens: int = 16,
    progress: bool = False,
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Answer every fact of every set greedily and score the answers by exact match.

    Args:
        model: a Hugging Face causal LM (in eval mode, on its device).
        tokenizer: its tokenizer (with a pad token).
        sets: split name -> facts, evaluated in this order.
        template: the prompt template; ``{question}`` is replaced by the question.
        batch_size: prompts per ``generate`` call.
        max_new_tokens: the most tokens generated per answer.
        progress: show a progress bar per split.

    Returns:
        ``(metrics, samples)``: ``metrics[split]`` as in :func:`split_metrics`, and one
        ``{"split", "id", "prediction", "correct"}`` row per fact (split order, then fact order).
    """
    metrics: dict[str, dict[str, Any]] = {}
    samples: list[dict[str, Any]] = []
    for name, facts in sets.items():
        answers = answer_facts(
            model,
            tokenizer,
            facts,
            template=template,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            progress=progress,
        )
        metrics[name] = split_metrics(answers, facts)
        samples.extend({"split": name, **s.to_dict()} for s in answers)
    return metrics, samples


def results_document(
    metrics: Mapping[str, Mapping[str, Any]],
    model: str,
    config: Mapping[str, Any],
    seconds: float,
    files: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``results.json`` object of an evaluation (schema in the module docstring).

    Args:
        metrics: split -> metrics, as returned by :func:`evaluate_sets`.
        model: the model folder or hub id.
        config: the resolved options of the evaluation.
        seconds: wall time of answering.
        files: split -> the facts file it was read from.

    Returns:
        A JSON-ready dict.
    """
    return {
        "results": {name: dict(m) for name, m in metrics.items()},
        "model": model,
        "config": dict(config),
        "files": dict(files or {}),
        "versions": environment_info()["versions"],
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n_facts": sum(int(m["n"]) for m in metrics.values()),
        "seconds": round(float(seconds), 3),
    }
