"""Synthetic new facts with controlled keys, for the key-type experiment (docs/method.md section 6).

New facts all use one relation's question ("Where was {key} born?") with a key that is either

- ``name_like``: a recombination of pieces of names the model already knows (the words of known
  subjects, e.g. "Nedrai" + "Vollaster"), never an existing subject; it overlaps with stored
  entities, so interference predicts it disturbs them;
- ``uuid``: a random hexadecimal string (``"3f9a2c7b"``) that shares nothing with any name.
  Tokenizers that would map it to an unknown token (the synthetic world's word-level one) get it
  spelled with spaces (``"3 f 9 a 2 c 7 b"``), every character then being a known token;

and a value that is either ``relation`` (a real value of the relation, drawn from the known
facts' answers) or ``random`` (a random 4-letter string, spelled like the UUIDs).

Example::

    rng = random.Random(0)
    subjects = [f.subject for f in held]
    facts = new_facts("name_like", "relation", 100, held, "birth_city", tokenizer, rng)
"""

from __future__ import annotations

import random
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

from factkeep.data.facts import Fact

__all__ = [
    "KEY_TYPES",
    "VALUE_KINDS",
    "KeyType",
    "ValueKind",
    "name_like_keys",
    "new_facts",
    "question_template",
    "spells_apart",
    "uuid_keys",
]

KeyType = Literal["name_like", "uuid"]
ValueKind = Literal["relation", "random"]
KEY_TYPES: tuple[str, ...] = ("name_like", "uuid")
VALUE_KINDS: tuple[str, ...] = ("relation", "random")


def question_template(facts: Sequence[Fact], relation: str) -> str:
    """The relation's question with its subject replaced by ``{key}`` (its most common form).

    Raises:
        ValueError: no fact of ``relation`` has its subject inside its question.
    """
    forms = Counter(
        f.question.replace(f.subject, "{key}")
        for f in facts
        if f.relation == relation and f.subject and f.subject in f.question
    )
    if not forms:
        raise ValueError(f"no fact of relation '{relation}' has its subject in its question")
    return forms.most_common(1)[0][0]


def spells_apart(tokenizer: Any, text: str) -> bool:
    """Whether ``text`` must be spelled with spaces for ``tokenizer`` to know all of it."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return False
    return unk in tokenizer(text, add_special_tokens=False)["input_ids"]


def _spell(text: str, apart: bool) -> str:
    return " ".join(text) if apart else text


def uuid_keys(n: int, rng: random.Random, tokenizer: Any, length: int = 8) -> list[str]:
    """``n`` distinct random hex keys (spelled apart if the tokenizer needs it)."""
    apart = spells_apart(tokenizer, "3f9a2c7b")
    keys: set[str] = set()
    while len(keys) < n:
        keys.add("".join(rng.choice("0123456789abcdef") for _ in range(length)))
    return [_spell(k, apart) for k in sorted(keys)]


def name_like_keys(
    subjects: Sequence[str], n: int, rng: random.Random, exclude: Sequence[str] = ()
) -> list[str]:
    """``n`` distinct new names made of word pieces of ``subjects``, none an existing subject.

    A key has as many words as a typical subject (the most common word count); word ``i`` is
    drawn from the words found at position ``i`` of subjects of that length.

    Raises:
        ValueError: the pieces cannot make ``n`` new names.
    """
    split = [s.split() for s in subjects if s.strip()]
    if not split:
        raise ValueError("no subjects to take name pieces from")
    width = Counter(len(words) for words in split).most_common(1)[0][0]
    pieces = [sorted({words[i] for words in split if len(words) == width}) for i in range(width)]
    taken = {s.lower() for s in (*subjects, *exclude)}
    capacity = 1
    for p in pieces:
        capacity *= len(p)
    if capacity - len(taken) < n:
        raise ValueError(f"name pieces make at most {capacity - len(taken)} new names, {n} asked")
    keys: list[str] = []
    seen: set[str] = set()
    while len(keys) < n:
        key = " ".join(rng.choice(p) for p in pieces)
        if key.lower() not in taken and key not in seen:
            seen.add(key)
            keys.append(key)
    return keys


def _values(
    kind: ValueKind,
    n: int,
    known: Sequence[Fact],
    relation: str,
    tokenizer: Any,
    rng: random.Random,
) -> list[str]:
    if kind == "relation":
        pool = sorted({f.answers[0] for f in known if f.relation == relation})
        if not pool:
            raise ValueError(f"no known answers of relation '{relation}' to draw values from")
        return [rng.choice(pool) for _ in range(n)]
    apart = spells_apart(tokenizer, "qzkx")
    return [_spell("".join(rng.choices(string.ascii_lowercase, k=4)), apart) for _ in range(n)]


def new_facts(
    key_type: KeyType,
    value_kind: ValueKind,
    n: int,
    known: Sequence[Fact],
    relation: str,
    tokenizer: Any,
    rng: random.Random,
    exclude_subjects: Sequence[str] = (),
) -> list[Fact]:
    """``n`` synthetic facts of ``relation`` with keys of ``key_type`` and values of ``value_kind``.

    Args:
        key_type: ``name_like`` or ``uuid``.
        value_kind: ``relation`` (real values of the relation) or ``random``.
        n: how many facts.
        known: facts the model knows: their subjects give the name pieces, their answers the
            values, and the relation's question form comes from them.
        relation: the relation of the new facts.
        tokenizer: decides whether UUIDs and random values are spelled apart.
        rng: the source of randomness (same seed, same facts).
        exclude_subjects: further subjects a name-like key must not equal.
    """
    if key_type not in KEY_TYPES or value_kind not in VALUE_KINDS:
        raise ValueError(f"unknown key type {key_type!r} or value kind {value_kind!r}")
    template = question_template(known, relation)
    if key_type == "uuid":
        keys = uuid_keys(n, rng, tokenizer)
    else:
        keys = name_like_keys([f.subject for f in known], n, rng, exclude_subjects)
    values = _values(value_kind, n, known, relation, tokenizer, rng)
    return [
        Fact(
            id=f"{key_type}-{value_kind}-{i:06d}",
            question=template.replace("{key}", key),
            answers=[value],
            relation=relation,
            subject=key,
            meta={"key_type": key_type, "value_kind": value_kind, "synthetic": True},
        )
        for i, (key, value) in enumerate(zip(keys, values, strict=True))
    ]
