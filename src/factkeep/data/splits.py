"""The experimental splits (docs/method.md section 3): D_known, D_unknown, D_held and a dev set.

From facts with SLiCK categories (the output of ``factkeep probe``):

1. Facts with more than one gold answer are dropped (``drop_multi_answer``; in EntityQuestions the
   ``answers`` list holds *different* correct answers, not aliases).
2. Relations are kept if at least ``min_known_fraction`` of their facts are Known, where Known
   means a category in ``known_categories`` (default HighlyKnown + MaybeKnown: the model answers
   greedily right at least once).
3. Per kept relation, HighlyKnown and Unknown facts are shuffled (seeded per relation).
   MaybeKnown and WeaklyKnown facts are never used (the clean ends, as in the follow-up paper).
4. **D_held** first: ``n_held`` HighlyKnown facts, never trained on.
5. **dev** next: ``n_dev`` facts never trained on, ``dev_unknown_fraction`` of them Unknown and the
   rest HighlyKnown. For early stopping and model selection without looking at D_held: its
   HighlyKnown part tracks forgetting, its Unknown part whether unseen facts start being "answered"
   (it should stay near chance). It is held out exactly like D_held.
6. **Disjointness**: every training candidate that shares a subject with a D_held or dev fact is
   removed (always); with ``held_disjoint_answers`` (default on, as in docs/method.md), also every
   candidate one of whose answers is an answer of a D_held or dev fact. Subjects are compared
   ignoring case and spacing; answers ignoring case, spacing and punctuation. What this removed is
   reported per relation. Answer-disjointness is costly where answers repeat (countries, years;
   the synthetic world has ~120 values per relation): a warning names relations that lose more than
   half their candidates; ``held_disjoint_answers=false`` keeps subject-disjointness only.
7. **D_known / D_unknown**: ``n_train`` training facts (0 = as many as the candidates allow), a
   fraction ``unknown_fraction`` of them Unknown: the same fraction in every relation, or, with
   ``unknown_fraction_scope=overall``, over the whole training set, each relation giving the
   HighlyKnown and Unknown facts it has (a real model often knows few facts of some relations,
   and a per-relation fraction then limits the whole study to its scarcest relation).

Stratification: every size (held, dev, train) is split over the kept relations in proportion to
their number of facts (largest remainder), capped by what a relation has; what a capped relation
cannot take goes to the others. A request larger than the data allows is refused with the counts.

Deterministic in ``seed`` (and the input). Output facts keep their input order and fields.

Example::

    splits = build_splits(read_facts("runs/probe/categories.jsonl"), SplitSpec(n_held=300))
    splits.d_known, splits.d_unknown, splits.d_held, splits.dev, splits.report
"""

from __future__ import annotations

import logging
import math
import random
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from factkeep.config import ConfigError, help_field
from factkeep.data.facts import CATEGORIES, HIGHLY_KNOWN, MAYBE_KNOWN, UNKNOWN, Fact
from factkeep.errors import DataError

__all__ = ["SPLIT_NAMES", "SplitSpec", "Splits", "allocate", "build_splits"]

log = logging.getLogger(__name__)

SPLIT_NAMES: tuple[str, ...] = ("d_known", "d_unknown", "d_held", "dev")
"""The splits, in the order they are written and reported."""


@dataclass
class SplitSpec:
    """How the splits are drawn (sizes, fractions, filters, disjointness, seed)."""

    seed: int = help_field(0, "Seed: same seed and input, same splits.")
    n_train: int = help_field(
        0, "Training facts, D_known + D_unknown (0 = as many as the candidates allow)."
    )
    unknown_fraction: float = help_field(
        0.5, "Fraction of the training facts that are Unknown (see unknown_fraction_scope)."
    )
    unknown_fraction_scope: Literal["relation", "overall"] = help_field(
        "relation",
        "relation: the same Unknown fraction in every relation; overall: the fraction holds for "
        "the whole training set and each relation gives what its candidates allow (the "
        "per-relation shares are reported), for models that know few facts of some relations.",
    )
    n_held: int = help_field(500, "D_held size: HighlyKnown facts never trained on.")
    held_spread: Literal["facts", "known"] = help_field(
        "facts",
        "How D_held and the dev set's HighlyKnown part are spread over relations: in proportion "
        "to each relation's facts, or to its HighlyKnown facts (known: a relation the model "
        "knows little of keeps some for D_known, so that D_known covers every relation).",
    )
    n_dev: int = help_field(200, "Dev set size (held out like D_held; for early stopping).")
    dev_unknown_fraction: float = help_field(
        0.5, "Fraction of the dev set that is Unknown; the rest is HighlyKnown."
    )
    min_known_fraction: float = help_field(
        0.3, "Keep relations where at least this fraction of facts is Known."
    )
    known_categories: list[str] = help_field(
        [HIGHLY_KNOWN, MAYBE_KNOWN], "Categories that count as Known for min_known_fraction."
    )
    drop_multi_answer: bool = help_field(True, "Drop facts with more than one gold answer.")
    held_disjoint_answers: bool = help_field(
        True,
        "Also remove training facts that share an answer with D_held/dev (subjects are always "
        "disjoint). Costly where answers repeat (countries, years, the synthetic world).",
    )
    relations: list[str] = help_field([], "Use only these relations (default: all).")

    def validate(self) -> None:
        """Raise :class:`~factkeep.config.ConfigError` on an out-of-range option."""
        for name in ("n_train", "n_held", "n_dev"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("unknown_fraction", "dev_unknown_fraction", "min_known_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        bad = [c for c in self.known_categories if c not in CATEGORIES]
        if bad or not self.known_categories:
            raise ConfigError(
                f"known_categories must be a non-empty subset of {', '.join(CATEGORIES)}, "
                f"got {self.known_categories}"
            )


@dataclass
class Splits:
    """The four splits (facts in input order) and a report of how they were drawn."""

    d_known: list[Fact]
    d_unknown: list[Fact]
    d_held: list[Fact]
    dev: list[Fact]
    report: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, list[Fact]]:
        """The splits by name (:data:`SPLIT_NAMES`)."""
        return {name: getattr(self, name) for name in SPLIT_NAMES}


def _subject_key(text: str) -> str:
    """A subject compared ignoring case and spacing."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _answer_key(text: str) -> str:
    """An answer compared ignoring case, spacing and punctuation."""
    return re.sub(r"[\W_]+", "", unicodedata.normalize("NFKC", text).casefold())


def _train_parts(total: int, fraction: float) -> tuple[int, int]:
    """(unknown, known) counts of ``total`` training facts with an Unknown ``fraction``."""
    unknown = math.floor(fraction * total + 0.5)
    return unknown, total - unknown


def _train_capacity(n_known: int, n_unknown: int, fraction: float) -> int:
    """The most training facts a relation with these candidates gives at ``fraction``."""
    if fraction <= 0.0:
        bound = n_known
    elif fraction >= 1.0:
        bound = n_unknown
    else:
        bound = math.floor(min(n_known / (1 - fraction), n_unknown / fraction) + 1e-9)
    while bound > 0:
        unknown, known = _train_parts(bound, fraction)
        if unknown <= n_unknown and known <= n_known:
            break
        bound -= 1
    return bound


def allocate(total: int, weights: Mapping[str, float], caps: Mapping[str, int]) -> dict[str, int]:
    """Split ``total`` over keys in proportion to ``weights``, never above ``caps``.

    Largest-remainder rounding (ties broken by key); what a capped key cannot take is spread over
    the others in proportion to their weights.

    Raises:
        ValueError: ``total`` exceeds the sum of the caps.
    """
    if total > sum(caps.values()):
        raise ValueError(f"cannot place {total} in capacity {sum(caps.values())}")
    alloc = dict.fromkeys(caps, 0)
    active = sorted(k for k in caps if caps[k] > 0)
    remaining = total
    while remaining > 0 and active:
        wsum = sum(max(weights.get(k, 0.0), 0.0) for k in active)
        if wsum <= 0:
            shares = {k: remaining / len(active) for k in active}
        else:
            shares = {k: remaining * max(weights.get(k, 0.0), 0.0) / wsum for k in active}
        base = {k: math.floor(shares[k]) for k in active}
        leftover = remaining - sum(base.values())
        by_remainder = sorted(active, key=lambda k: (-(shares[k] - base[k]), k))
        for k in by_remainder[:leftover]:
            base[k] += 1
        for k in active:
            alloc[k] += min(base[k], caps[k] - alloc[k])
        remaining = total - sum(alloc.values())
        active = [k for k in active if alloc[k] < caps[k]]
    return alloc


def _check_categories(facts: Sequence[Fact], source: str | None) -> None:
    """Raise :class:`~factkeep.errors.DataError` at the first fact without a category."""
    for position, fact in enumerate(facts, start=1):
        if fact.category is None:
            raise DataError(
                f"fact {fact.id!r} (fact {position}) has no category; run 'factkeep probe' "
                "first and split its categories.jsonl",
                source,
                field="category",
            )


def _shuffled(items: list[Fact], seed: int, *parts: str) -> list[Fact]:
    """A copy of ``items`` shuffled with a seed made of ``seed`` and ``parts``."""
    out = list(items)
    random.Random("-".join(["split", str(seed), *parts])).shuffle(out)
    return out


def _too_few(
    what: str, wanted: int, per_relation: Mapping[str, int], hint: str, source: str | None
) -> DataError:
    """The error of a size request larger than the facts ``per_relation`` allow."""
    detail = ", ".join(f"{rel}: {n}" for rel, n in per_relation.items())
    return DataError(
        f"{what}={wanted} is impossible: there are only {sum(per_relation.values())} "
        f"({detail}){hint}",
        source,
    )


def _draw_training(
    known_cand: dict[str, list[Fact]],
    unknown_cand: dict[str, list[Fact]],
    weights: Mapping[str, float],
    spec: SplitSpec,
    source: str | None,
) -> tuple[list[Fact], list[Fact]]:
    """Stage 7: D_known and D_unknown from each relation's (shuffled) candidates.

    ``unknown_fraction_scope="relation"``: ``n_train`` split over the relations in proportion to
    ``weights``, each relation's share ``unknown_fraction`` Unknown. ``"overall"``: the Unknown and
    HighlyKnown parts of ``n_train`` are each split over the relations in proportion to
    ``weights``, capped by each relation's candidates of that category.
    """
    f = spec.unknown_fraction
    kept = list(known_cand)
    n_known = {rel: len(known_cand[rel]) for rel in kept}
    n_unknown = {rel: len(unknown_cand[rel]) for rel in kept}
    if spec.unknown_fraction_scope == "overall":
        capacity = _train_capacity(sum(n_known.values()), sum(n_unknown.values()), f)
    else:
        caps = {rel: _train_capacity(n_known[rel], n_unknown[rel], f) for rel in kept}
        capacity = sum(caps.values())
    n_train = spec.n_train or capacity
    if n_train > capacity or n_train == 0:
        detail = ", ".join(
            f"{rel}: {n_known[rel]} HighlyKnown + {n_unknown[rel]} Unknown" for rel in kept
        )
        hint = ""
        if spec.unknown_fraction_scope == "relation":
            overall = _train_capacity(sum(n_known.values()), sum(n_unknown.values()), f)
            if overall > capacity:
                hint = f"; unknown_fraction_scope=overall allows {overall}"
        raise DataError(
            f"n_train={spec.n_train or 'max'} is impossible: with unknown_fraction={f} "
            f"(per {spec.unknown_fraction_scope}) at most {capacity} training facts can be drawn "
            f"from the candidates left after D_held/dev and disjointness ({detail}){hint}",
            source,
        )
    if spec.unknown_fraction_scope == "overall":
        total_unknown, total_known = _train_parts(n_train, f)
        take_unknown = allocate(total_unknown, weights, n_unknown)
        take_known = allocate(total_known, weights, n_known)
    else:
        train_n = allocate(n_train, weights, caps)
        parts = {rel: _train_parts(train_n[rel], f) for rel in kept}
        take_unknown = {rel: parts[rel][0] for rel in kept}
        take_known = {rel: parts[rel][1] for rel in kept}
    d_known = [fact for rel in kept for fact in known_cand[rel][: take_known[rel]]]
    d_unknown = [fact for rel in kept for fact in unknown_cand[rel][: take_unknown[rel]]]
    return d_known, d_unknown


def _select_relations(
    facts: Sequence[Fact], relations: Sequence[str], source: str | None
) -> Sequence[Fact]:
    """The facts of the requested ``relations`` (all facts when none are requested).

    Raises:
        DataError: a requested relation is not in the input.
    """
    if not relations:
        return facts
    available = sorted({f.relation for f in facts})
    unknown = [r for r in relations if r not in available]
    if unknown:
        raise DataError(
            f"unknown relation(s) {', '.join(map(repr, unknown))} in relations=; the input "
            f"has: {', '.join(available)}",
            source,
        )
    return [f for f in facts if f.relation in set(relations)]


def _group_by_relation(
    facts: Sequence[Fact], drop_multi_answer: bool
) -> tuple[dict[str, dict[str, Any]], dict[str, list[Fact]]]:
    """Stage 1: the usable facts per relation, without multi-answer facts if asked.

    Returns:
        ``(relations, groups)``: per relation its report entry (``facts``, ``multi_answer``
        counts; in input order) and its usable facts (in input order).
    """
    relations: dict[str, dict[str, Any]] = {}
    groups: dict[str, list[Fact]] = {}
    for fact in facts:
        info = relations.setdefault(fact.relation, {"facts": 0, "multi_answer": 0})
        info["facts"] += 1
        if drop_multi_answer and len(fact.answers) > 1:
            info["multi_answer"] += 1
            continue
        groups.setdefault(fact.relation, []).append(fact)
    return relations, groups


def _keep_relations(
    relations: dict[str, dict[str, Any]],
    groups: Mapping[str, list[Fact]],
    spec: SplitSpec,
    source: str | None,
) -> list[str]:
    """Stage 2: the (sorted) relations whose Known fraction reaches ``min_known_fraction``.

    Adds each relation's category counts, ``known_fraction`` and ``kept`` to its report entry.

    Raises:
        DataError: no relation is kept.
    """
    known_set = set(spec.known_categories)
    kept: list[str] = []
    for rel in sorted(relations):
        members = groups.get(rel, [])
        info = relations[rel]
        for cat in CATEGORIES:
            info[cat] = sum(f.category == cat for f in members)
        info["known_fraction"] = (
            round(sum(f.category in known_set for f in members) / len(members), 4)
            if members
            else 0.0
        )
        info["kept"] = bool(members) and info["known_fraction"] >= spec.min_known_fraction
        if info["kept"]:
            kept.append(rel)
    if not kept:
        fractions = ", ".join(f"{r}: {relations[r]['known_fraction']:.2f}" for r in relations)
        raise DataError(
            f"no relation has a Known fraction >= min_known_fraction={spec.min_known_fraction} "
            f"(Known = {'+'.join(spec.known_categories)}; {fractions})",
            source,
        )
    return kept


def _shuffled_pools(
    groups: Mapping[str, list[Fact]], kept: Sequence[str], seed: int
) -> tuple[dict[str, list[Fact]], dict[str, list[Fact]]]:
    """Stage 3: each kept relation's HighlyKnown and Unknown facts, shuffled per relation."""
    highly = {
        rel: _shuffled([f for f in groups[rel] if f.category == HIGHLY_KNOWN], seed, rel, "HK")
        for rel in kept
    }
    unknown = {
        rel: _shuffled([f for f in groups[rel] if f.category == UNKNOWN], seed, rel, "U")
        for rel in kept
    }
    return highly, unknown


def _held_sizes(
    highly: Mapping[str, list[Fact]],
    weights: Mapping[str, float],
    spec: SplitSpec,
    source: str | None,
) -> dict[str, int]:
    """Stage 4: how many HighlyKnown facts each relation gives D_held.

    Raises:
        DataError: fewer HighlyKnown facts than ``n_held``.
    """
    hk_counts = {rel: len(facts) for rel, facts in highly.items()}
    if spec.n_held > sum(hk_counts.values()):
        hint = " HighlyKnown facts in the kept relations"
        raise _too_few("n_held", spec.n_held, hk_counts, hint, source)
    return allocate(spec.n_held, weights, hk_counts)


def _dev_sizes(
    highly: Mapping[str, list[Fact]],
    unknown: Mapping[str, list[Fact]],
    held_n: Mapping[str, int],
    weights: Mapping[str, float],
    spec: SplitSpec,
    source: str | None,
) -> tuple[dict[str, int], dict[str, int]]:
    """Stage 5: how many HighlyKnown and Unknown facts each relation gives the dev set.

    Raises:
        DataError: too few HighlyKnown facts left after D_held, or too few Unknown facts.
    """
    dev_unknown_total, dev_known_total = _train_parts(spec.n_dev, spec.dev_unknown_fraction)
    hk_left = {rel: len(highly[rel]) - held_n[rel] for rel in highly}
    if dev_known_total > sum(hk_left.values()):
        raise _too_few(
            "n_dev",
            spec.n_dev,
            hk_left,
            f" HighlyKnown facts left after D_held for the dev set's {dev_known_total} "
            "HighlyKnown ones",
            source,
        )
    u_counts = {rel: len(unknown[rel]) for rel in highly}
    if dev_unknown_total > sum(u_counts.values()):
        raise _too_few(
            "n_dev",
            spec.n_dev,
            u_counts,
            f" Unknown facts for the dev set's {dev_unknown_total} Unknown ones",
            source,
        )
    return allocate(dev_known_total, weights, hk_left), allocate(
        dev_unknown_total, weights, u_counts
    )


def _set_aside(
    highly: Mapping[str, list[Fact]],
    unknown: Mapping[str, list[Fact]],
    held_n: Mapping[str, int],
    dev_known_n: Mapping[str, int],
    dev_unknown_n: Mapping[str, int],
) -> tuple[list[Fact], list[Fact], dict[str, list[Fact]], dict[str, list[Fact]]]:
    """Stages 4 and 5: D_held, then dev, from the front of each relation's shuffled pools.

    Returns:
        ``(held, dev, known_rest, unknown_rest)``: the rests are each relation's HighlyKnown and
        Unknown facts left for training.
    """
    held: list[Fact] = []
    dev: list[Fact] = []
    known_rest: dict[str, list[Fact]] = {}
    unknown_rest: dict[str, list[Fact]] = {}
    for rel in highly:
        h, d = held_n[rel], dev_known_n[rel]
        held += highly[rel][:h]
        dev += highly[rel][h : h + d] + unknown[rel][: dev_unknown_n[rel]]
        known_rest[rel] = highly[rel][h + d :]
        unknown_rest[rel] = unknown[rel][dev_unknown_n[rel] :]
    return held, dev, known_rest, unknown_rest


def _disjoint_candidates(
    held_out: Sequence[Fact],
    known_rest: Mapping[str, list[Fact]],
    unknown_rest: Mapping[str, list[Fact]],
    disjoint_answers: bool,
) -> tuple[dict[str, list[Fact]], dict[str, list[Fact]], dict[str, dict[str, int]]]:
    """Stage 6: the training candidates that share no subject (nor, with ``disjoint_answers``,
    an answer) with the held-out facts.

    Returns:
        ``(known_cand, unknown_cand, removed)``: the HighlyKnown and Unknown candidates per
        relation, and per relation the candidates before the filter and what each rule removed.
    """
    taken_subjects = {_subject_key(f.subject) for f in held_out}
    taken_answers = {_answer_key(a) for f in held_out for a in f.answers}
    removed: dict[str, dict[str, int]] = {}
    known_cand: dict[str, list[Fact]] = {}
    unknown_cand: dict[str, list[Fact]] = {}
    for rel in known_rest:
        n_candidates = len(known_rest[rel]) + len(unknown_rest[rel])
        stats = {"candidates": n_candidates, "subject": 0, "answer": 0}
        for rest, cand in ((known_rest, known_cand), (unknown_rest, unknown_cand)):
            keep = []
            for fact in rest[rel]:
                if _subject_key(fact.subject) in taken_subjects:
                    stats["subject"] += 1
                elif disjoint_answers and any(
                    _answer_key(a) in taken_answers for a in fact.answers
                ):
                    stats["answer"] += 1
                else:
                    keep.append(fact)
            cand[rel] = keep
        removed[rel] = stats
        if stats["candidates"] and stats["answer"] > stats["candidates"] / 2:
            log.warning(
                "relation %s: answer-disjointness from D_held/dev removed %d of %d training "
                "candidates; held_disjoint_answers=false keeps subject-disjointness only",
                rel,
                stats["answer"],
                stats["candidates"],
            )
    return known_cand, unknown_cand, removed


def _report(
    splits: Splits,
    relations: Mapping[str, dict[str, Any]],
    kept: list[str],
    removed: dict[str, dict[str, int]],
) -> dict[str, Any]:
    """The JSON-ready report of how ``splits`` were drawn (see :func:`build_splits`)."""
    sizes: dict[str, dict[str, dict[str, int]]] = {}
    for name, items in splits.as_dict().items():
        per: dict[str, dict[str, int]] = {}
        for fact in items:
            row = per.setdefault(fact.relation, {})
            row[str(fact.category)] = row.get(str(fact.category), 0) + 1
        sizes[name] = {rel: per[rel] for rel in sorted(per)}
    return {
        "relations": {rel: relations[rel] for rel in sorted(relations)},
        "kept_relations": kept,
        "dropped_relations": [r for r in sorted(relations) if r not in kept],
        "dropped_multi_answer": sum(info["multi_answer"] for info in relations.values()),
        "removed_for_disjointness": removed,
        "totals": {name: len(items) for name, items in splits.as_dict().items()},
        "sizes": sizes,
    }


def build_splits(facts: Sequence[Fact], spec: SplitSpec, source: str | None = None) -> Splits:
    """Draw D_known, D_unknown, D_held and dev from categorised facts (see the module docstring).

    Args:
        facts: facts with ``category`` set, e.g. ``read_facts("categories.jsonl")``.
        spec: sizes, fractions, filters, disjointness and seed.
        source: the input file, named in errors.

    Returns:
        The splits and a JSON-ready report (per-relation counts, what each filter removed, sizes
        per split, relation and category).

    Raises:
        ConfigError: an option is out of range.
        DataError: a fact lacks a category, an unknown relation is requested, no relation passes
            the filter, or a requested size exceeds what the data allows (with the counts).
    """
    spec.validate()
    _check_categories(facts, source)
    order = {fact.id: i for i, fact in enumerate(facts)}
    facts = _select_relations(facts, spec.relations, source)
    relations, groups = _group_by_relation(facts, spec.drop_multi_answer)
    kept = _keep_relations(relations, groups, spec, source)
    weights = {rel: float(len(groups[rel])) for rel in kept}
    highly, unknown = _shuffled_pools(groups, kept, spec.seed)
    held_weights = weights
    if spec.held_spread == "known":
        held_weights = {rel: float(len(highly[rel])) for rel in kept}
    held_n = _held_sizes(highly, held_weights, spec, source)
    dev_known_n, dev_unknown_n = _dev_sizes(highly, unknown, held_n, held_weights, spec, source)
    held, dev, known_rest, unknown_rest = _set_aside(
        highly, unknown, held_n, dev_known_n, dev_unknown_n
    )
    known_cand, unknown_cand, removed = _disjoint_candidates(
        held + dev, known_rest, unknown_rest, spec.held_disjoint_answers
    )
    d_known, d_unknown = _draw_training(known_cand, unknown_cand, weights, spec, source)

    def ordered(items: list[Fact]) -> list[Fact]:
        return sorted(items, key=lambda fact: order[fact.id])

    splits = Splits(ordered(d_known), ordered(d_unknown), ordered(held), ordered(dev))
    splits.report = _report(splits, relations, kept, removed)
    return splits
