"""The closed-book QA prompt format shared by probing, training and evaluation.

Default zero-shot format (docs/method.md section 4): ``Q: {question}\\nA: {answer}<eos>``. The
prompt is everything up to and including ``A:``; the completion is a space and the answer.
Few-shot prompts (SLiCK probing) put exemplars in the same format, one per block, before the
question.
"""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_TEMPLATE = "Q: {question}\nA:"
"""Prompt template; ``{question}`` is replaced by the question text."""


def format_prompt(question: str, template: str = DEFAULT_TEMPLATE) -> str:
    """The zero-shot prompt for ``question`` (ends right after ``A:``)."""
    return template.format(question=question)


def format_completion(answer: str) -> str:
    """The completion the model should produce after the prompt: a space and the answer."""
    return f" {answer}"


def few_shot_parts(
    question: str,
    exemplars: Sequence[tuple[str, str]],
    template: str = DEFAULT_TEMPLATE,
) -> tuple[str, str]:
    """A few-shot prompt split into the exemplars (each block and its blank line) and the
    question's own prompt; :func:`format_few_shot` is their concatenation."""
    blocks = [format_prompt(q, template) + format_completion(a) + "\n\n" for q, a in exemplars]
    return "".join(blocks), format_prompt(question, template)


def format_few_shot(
    question: str,
    exemplars: Sequence[tuple[str, str]],
    template: str = DEFAULT_TEMPLATE,
) -> str:
    """A few-shot prompt: each ``(question, answer)`` exemplar, a blank line, then the question."""
    prefix, suffix = few_shot_parts(question, exemplars, template)
    return prefix + suffix
