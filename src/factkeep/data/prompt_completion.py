"""Facts in TRL's prompt/completion JSONL format, for users who bring their own QA data.

TRL's "prompt-completion" dataset type has one example per line, in standard form::

    {"prompt": "Q: Which country is Painblanc located in?\\nA:", "completion": " France"}

or in conversational form (lists of ``{"role", "content"}`` messages)::

    {"prompt": [{"role": "user", "content": "Which country is Painblanc located in?"}],
     "completion": [{"role": "assistant", "content": "France"}]}

Besides ``prompt`` and ``completion`` a line may carry the
:class:`~factkeep.data.facts.Fact` fields ``id``, ``relation``, ``subject``, ``answers``,
``category`` and ``meta``; any other key is an error. Defaults when absent:

- question: in standard form, the text that ``{question}`` matches when the prompt matches the
  template (surrounding whitespace allowed), else the whole prompt stripped; in conversational
  form, the content of the last user message (stripped);
- answers: ``[completion.strip()]`` (in conversational form, the last assistant message);
- id: ``"{file stem}-{line}"``; relation: ``"unknown"``;
- subject: the question itself (a fact needs a non-empty subject and a free-form prompt has no
  recoverable one), with ``meta["subject_recovered"] = False`` recording that it was defaulted.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from factkeep.data.facts import (
    Fact,
    check_unique_ids,
    read_jsonl_objects,
    validate_facts,
)
from factkeep.data.prompts import DEFAULT_TEMPLATE, format_completion, format_prompt
from factkeep.errors import DataError
from factkeep.rundir import atomic_write_jsonl

_KEYS = ("prompt", "completion", "id", "relation", "subject", "answers", "category", "meta")
_SENTINEL = "\x00question\x00"
DEFAULT_RELATION = "unknown"


@functools.lru_cache(maxsize=32)
def template_regex(template: str) -> re.Pattern[str]:
    """Compile a prompt template into a regex whose group 1 is the question.

    ``{question}`` becomes a lazy ``(.+?)``, everything else matches literally (after
    ``str.format`` un-doubles braces) and whitespace may surround the whole prompt.

    Args:
        template: A ``str.format`` template with one ``{question}`` field.

    Returns:
        The compiled pattern, to use with ``fullmatch``.

    Raises:
        DataError: The template does not contain ``{question}`` exactly once.
    """
    try:
        filled = template.format(question=_SENTINEL)
    except (KeyError, IndexError, ValueError) as exc:
        raise DataError(f"invalid prompt template {template!r}: {exc}", field="template") from None
    parts = filled.split(_SENTINEL)
    if len(parts) != 2:
        raise DataError(
            f"prompt template must contain '{{question}}' exactly once: {template!r}",
            field="template",
        )
    before, after = (re.escape(p) for p in parts)
    return re.compile(rf"\s*{before}(.+?){after}\s*", re.DOTALL)


def _message_content(messages: list[Any], role: str, key: str, path: str | Path, line: int) -> str:
    """The content of the last ``role`` message of a conversational ``prompt``/``completion``."""
    found: str | None = None
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise DataError(f"message {i} must be an object with a string 'role'", path, line, key)
        if not isinstance(msg.get("content"), str):
            raise DataError(f"message {i} must have a string 'content'", path, line, key)
        if msg["role"] == role:
            found = msg["content"]
    if found is None:
        raise DataError(f"no '{role}' message", path, line, key)
    return found


def _field_text(
    obj: dict[str, Any], key: str, role: str, path: str | Path, line: int
) -> tuple[str, bool]:
    """The text of ``prompt``/``completion`` and whether it was in conversational form."""
    if key not in obj:
        raise DataError("missing required field", path, line, key)
    value = obj[key]
    if isinstance(value, str):
        return value, False
    if isinstance(value, list) and value:
        return _message_content(value, role, key, path, line), True
    raise DataError(
        "must be a string or a non-empty list of {role, content} messages", path, line, key
    )


def _to_fact(obj: dict[str, Any], path: Path, line: int, pattern: re.Pattern[str]) -> Fact:
    """Map one prompt/completion object to a validated fact."""
    for key in obj:
        if key not in _KEYS:
            raise DataError(f"unknown field (allowed: {', '.join(_KEYS)})", path, line, key)
    prompt, chat = _field_text(obj, "prompt", "user", path, line)
    completion, _ = _field_text(obj, "completion", "assistant", path, line)
    match = None if chat else pattern.fullmatch(prompt)
    question = (match.group(1) if match else prompt).strip()
    if not question:
        raise DataError("the question is empty", path, line, "prompt")
    if "answers" in obj:
        answers = obj["answers"]
    else:
        if not completion.strip():
            raise DataError("must be a non-empty answer", path, line, "completion")
        answers = [completion.strip()]
    meta = obj.get("meta")
    meta = {} if meta is None else meta
    if "subject" not in obj:
        if not isinstance(meta, dict):
            raise DataError(f"must be an object, got {type(meta).__name__}", path, line, "meta")
        meta = {**meta, "subject_recovered": False}
    record = {
        "id": obj.get("id", f"{path.stem}-{line}"),
        "question": question,
        "answers": answers,
        "relation": obj.get("relation", DEFAULT_RELATION),
        "subject": obj.get("subject", question),
        "category": obj.get("category"),
        "meta": meta,
    }
    return Fact.from_dict(record, path, line)


def read_prompt_completion(path: str | Path, template: str = DEFAULT_TEMPLATE) -> list[Fact]:
    """Read a TRL prompt/completion JSONL file as facts (see the module docstring for mapping).

    The whole file is read and validated before anything is returned.

    Args:
        path: The JSONL file.
        template: The prompt template used to extract the question from standard-form prompts.

    Returns:
        The facts, in file order.

    Raises:
        DataError: Missing file, non-UTF-8 bytes, invalid JSON, a line that is not an object, a
            missing, empty, mistyped or unknown field, or a duplicate id; located by line/field.
    """
    path = Path(path)
    pattern = template_regex(template)
    rows = [(n, _to_fact(obj, path, n, pattern)) for n, obj in read_jsonl_objects(path)]
    check_unique_ids(rows, path)
    return [fact for _, fact in rows]


def write_prompt_completion(
    path: str | Path, facts: Iterable[Fact], template: str = DEFAULT_TEMPLATE
) -> None:
    """Write facts atomically as standard-form TRL prompt/completion JSONL.

    Each line is ``{"prompt": template.format(question=...), "completion": " " + answers[0]}``
    followed by every other fact field, so :func:`read_prompt_completion` restores the facts.

    Args:
        path: Destination file (parent folders are created).
        facts: The facts to write.
        template: The prompt template (must contain ``{question}`` once).

    Raises:
        DataError: The template is invalid, a fact is invalid or an id repeats; nothing is
            written then.
    """
    template_regex(template)
    items = validate_facts(facts, path)
    rows = (
        {
            "prompt": format_prompt(f.question, template),
            "completion": format_completion(f.answers[0]),
            "id": f.id,
            "relation": f.relation,
            "subject": f.subject,
            "answers": list(f.answers),
            "category": f.category,
            "meta": dict(f.meta),
        }
        for f in items
    )
    atomic_write_jsonl(path, rows)
