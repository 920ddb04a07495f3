"""Few-shot exemplars for SLiCK probing: a pool grouped by relation and per-fact sampling.

An exemplar is never the probed fact itself (same id), nor a fact about the same subject or asking
the same question (compared ignoring case and runs of spaces), and always of the probed fact's
relation. The draw for a fact depends only on ``(seed, fact.id)`` and the pool, so it does not
change with the other facts probed, their order, or where a resumed run starts.

Example::

    pool = ExemplarPool(read_facts("dev.jsonl"), source="dev.jsonl")
    pool.check(facts, k=4)                       # DataError naming the relation if too few
    prompts = build_prompts(fact, pool.sample(fact, k=4, n_prompts=10, seed=0))
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from factkeep.data.facts import Fact
from factkeep.data.prompts import DEFAULT_TEMPLATE, few_shot_parts
from factkeep.errors import DataError

__all__ = ["ExemplarPool", "build_prompt_parts", "build_prompts", "stable_int"]


def _key(text: str) -> str:
    """Comparison form of subjects and questions (case and surrounding/inner spaces ignored)."""
    return " ".join(text.casefold().split())


def stable_int(*parts: object) -> int:
    """A 63-bit integer from ``parts``, stable across processes (no ``hash()`` salt)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class ExemplarPool:
    """Few-shot exemplars grouped by relation, and per-fact sampling that excludes the fact.

    An exemplar is never the probed fact itself (same id), nor a fact about the same subject or
    asking the same question (compared ignoring case and runs of spaces), and always of the
    probed fact's relation.

    Args:
        facts: the pool (e.g. a dev split, or the probed facts themselves).
        source: where the pool comes from, named in error messages.
    """

    def __init__(self, facts: Sequence[Fact], source: str = "the exemplar pool") -> None:
        self.source = source
        self.by_relation: dict[str, list[Fact]] = {}
        for fact in facts:
            self.by_relation.setdefault(fact.relation, []).append(fact)
        # Per relation: positions of each id / subject / question, to count exclusions fast.
        self._index: dict[str, dict[str, dict[str, list[int]]]] = {}
        for rel, items in self.by_relation.items():
            idx: dict[str, dict[str, list[int]]] = {"id": {}, "subject": {}, "question": {}}
            for i, fact in enumerate(items):
                idx["id"].setdefault(fact.id, []).append(i)
                idx["subject"].setdefault(_key(fact.subject), []).append(i)
                idx["question"].setdefault(_key(fact.question), []).append(i)
            self._index[rel] = idx
        self._orders: dict[tuple[str, int, int], list[int]] = {}  # fixed_sets' shuffles

    def size(self, relation: str) -> int:
        """How many exemplars the pool has for ``relation``."""
        return len(self.by_relation.get(relation, ()))

    def excluded(self, fact: Fact) -> set[int]:
        """Positions (within the fact's relation) of the pool entries ``fact`` may not use."""
        idx = self._index.get(fact.relation)
        if idx is None:
            return set()
        return {
            *idx["id"].get(fact.id, ()),
            *idx["subject"].get(_key(fact.subject), ()),
            *idx["question"].get(_key(fact.question), ()),
        }

    def eligible_count(self, fact: Fact) -> int:
        """How many pool entries may serve as exemplars for ``fact``."""
        return self.size(fact.relation) - len(self.excluded(fact))

    def check(self, facts: Sequence[Fact], k: int) -> None:
        """Raise unless every fact has at least ``k`` eligible exemplars.

        Raises:
            DataError: naming the relation, how many exemplars it has and how many are needed.
        """
        if k == 0:
            return
        for fact in facts:
            available = self.eligible_count(fact)
            if available >= k:
                continue
            size = self.size(fact.relation)
            if size == 0:
                raise DataError(
                    f"relation {fact.relation!r} has no exemplars in {self.source}; "
                    f"k_exemplars={k} are needed per prompt (relations there: "
                    f"{', '.join(sorted(self.by_relation)) or 'none'})"
                )
            raise DataError(
                f"relation {fact.relation!r} has {size} exemplar(s) in {self.source}, "
                f"{available} of them usable for fact {fact.id!r} (not itself, not the same "
                f"subject or question); k_exemplars={k} are needed per prompt"
            )

    def sample(self, fact: Fact, k: int, n_prompts: int, seed: int) -> list[list[Fact]]:
        """Draw ``n_prompts`` exemplar sets of ``k`` distinct facts for ``fact``.

        The draw depends only on ``(seed, fact.id)`` and the pool, not on which other facts are
        probed or in which order.

        Raises:
            DataError: fewer than ``k`` eligible exemplars.
        """
        items, excluded = self._candidates(fact, k)
        if k == 0:
            return [[] for _ in range(n_prompts)]
        rng = random.Random(stable_int("exemplars", seed, fact.id))
        sets = []
        for _ in range(n_prompts):
            # Drawing k + |excluded| distinct positions always leaves >= k eligible ones.
            drawn = rng.sample(range(len(items)), min(len(items), k + len(excluded)))
            chosen = [i for i in drawn if i not in excluded][:k]
            sets.append([items[i] for i in chosen])
        return sets

    def fixed_sets(self, fact: Fact, k: int, n_prompts: int, seed: int) -> list[list[Fact]]:
        """``n_prompts`` exemplar sets shared by the facts of a relation (one per prompt index).

        Prompt ``i`` of relation ``r`` walks one fixed shuffle of ``r``'s pool, drawn from
        ``(seed, r, i)``, and takes its first ``k`` entries that ``fact`` may use. So nearly every
        fact of ``r`` gets the same set for prompt ``i`` (and the same few-shot prefix, whose
        encoding can be reused); a fact that is one of those exemplars, or shares a subject or
        question with one, gets the next eligible entry in its place.

        Raises:
            DataError: fewer than ``k`` eligible exemplars.
        """
        items, excluded = self._candidates(fact, k)
        if k == 0:
            return [[] for _ in range(n_prompts)]
        sets = []
        for index in range(n_prompts):
            key = (fact.relation, index, seed)
            if key not in self._orders:
                order = list(range(len(items)))
                random.Random(stable_int("fixed-exemplars", *key)).shuffle(order)
                self._orders[key] = order
            eligible = (i for i in self._orders[key] if i not in excluded)
            sets.append([items[i] for _, i in zip(range(k), eligible, strict=False)])
        return sets

    def _candidates(self, fact: Fact, k: int) -> tuple[list[Fact], set[int]]:
        """The pool of ``fact``'s relation and the positions it may not use (checked for ``k``)."""
        self.check([fact], k)
        return self.by_relation.get(fact.relation, []), self.excluded(fact)


def build_prompts(
    fact: Fact, exemplar_sets: Sequence[Sequence[Fact]], template: str = DEFAULT_TEMPLATE
) -> list[str]:
    """The few-shot prompts of ``fact``: one per exemplar set (canonical answers shown)."""
    return [prefix + suffix for prefix, suffix in build_prompt_parts(fact, exemplar_sets, template)]


def build_prompt_parts(
    fact: Fact, exemplar_sets: Sequence[Sequence[Fact]], template: str = DEFAULT_TEMPLATE
) -> list[tuple[str, str]]:
    """The few-shot prompts of ``fact`` as ``(exemplar prefix, question suffix)`` pairs."""
    return [
        few_shot_parts(fact.question, [(ex.question, ex.answers[0]) for ex in exemplars], template)
        for exemplars in exemplar_sets
    ]
