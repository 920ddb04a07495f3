"""The closed-book QA prompt format shared by probing, training and evaluation.

Default zero-shot format (method.md section 4): ``Q: {question}\\nA: {answer}<eos>``. The prompt is
everything up to and including ``A:``; the completion is a space and the answer. Few-shot prompts
(SLiCK probing) put exemplars in the same format, one per block, before the question.
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


def format_few_shot(
    question: str,
    exemplars: Sequence[tuple[str, str]],
    template: str = DEFAULT_TEMPLATE,
) -> str:
    """A few-shot prompt: each ``(question, answer)`` exemplar, a blank line, then the question."""
    blocks = [format_prompt(q, template) + format_completion(a) for q, a in exemplars]
    blocks.append(format_prompt(question, template))
    return "\n\n".join(blocks)
