"""Zero-shot closed-book accuracy: one greedy answer per fact, exact match against any alias.

The measurement shared by the world check, the training callback and ``factkeep eval``: prompt
``Q: {question}\\nA:`` (the training template), greedy decoding up to a newline or EOS, scored with
:func:`~factkeep.probing.scoring.exact_match`.

Example::

    samples = answer_facts(model, tokenizer, facts)
    accuracy(samples), accuracy_by(samples, facts, key=lambda f: f.relation)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from factkeep.data.facts import Fact
from factkeep.data.prompts import DEFAULT_TEMPLATE, format_prompt
from factkeep.probing.generation import greedy_answers
from factkeep.probing.scoring import exact_match

__all__ = ["Sample", "accuracy", "accuracy_by", "answer_facts"]


@dataclass(frozen=True)
class Sample:
    """The model's greedy answer to one fact and whether it is right."""

    id: str
    prediction: str
    correct: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"id", "prediction", "correct"}``."""
        return {"id": self.id, "prediction": self.prediction, "correct": self.correct}


def answer_facts(
    model: Any,
    tokenizer: Any,
    facts: Sequence[Fact],
    template: str = DEFAULT_TEMPLATE,
    batch_size: int = 256,
    max_new_tokens: int = 16,
    progress: bool = False,
) -> list[Sample]:
    """Greedy answers to ``facts`` (batched, left-padded), scored by exact match.

    Returns:
        One :class:`Sample` per fact, in input order.
    """
    prompts = [format_prompt(f.question, template) for f in facts]
    preds = greedy_answers(
        model,
        tokenizer,
        prompts,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        progress=progress,
    )
    return [Sample(f.id, p, exact_match(p, f.answers)) for f, p in zip(facts, preds, strict=True)]


def accuracy(samples: Sequence[Sample]) -> float:
    """Fraction of correct samples (0.0 for none)."""
    return sum(s.correct for s in samples) / len(samples) if samples else 0.0


def accuracy_by(
    samples: Sequence[Sample], facts: Sequence[Fact], key: Callable[[Fact], str]
) -> dict[str, float]:
    """Accuracy per group of facts (e.g. ``key=lambda f: f.relation``), groups sorted."""
    groups: dict[str, list[Sample]] = {}
    for s, f in zip(samples, facts, strict=True):
        groups.setdefault(key(f), []).append(s)
    return {k: accuracy(v) for k, v in sorted(groups.items())}
