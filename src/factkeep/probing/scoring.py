"""Answer normalisation and exact-match scoring for probing, training callbacks and evaluation.

A generated answer is first cut out of the raw generation with :func:`clean_generation` (the answer
ends at the first newline), then compared with the gold aliases by :func:`exact_match`, which
compares :func:`normalize_answer` forms with all spaces removed (:func:`match_key`).

The normaliser is SQuAD's (lowercase, drop punctuation, drop the articles a/an/the, collapse
whitespace) with four deliberate differences, each chosen so that the *same* answer written in
different surface forms, or decoded by different tokenizers, gets the same key:

1. Unicode: NFKC first (full-width letters and digits, ligatures, no-break spaces become their plain
   forms), ``str.casefold`` instead of ``lower`` (``ß`` -> ``ss``), and Latin/Greek/Cyrillic
   diacritics are stripped (``Beyoncé`` == ``beyonce``; a few letters without a decomposition, such
   as ``ł``, ``ø``, ``æ``, are mapped too). SQuAD keeps accents; models often drop them, and two
   answers that differ only by an accent are the same entity in closed-book QA.
2. Punctuation (any Unicode punctuation, symbol, control or format character:
   ``string.punctuation``, curly quotes, en/em dashes, ``«»``, ...) is *replaced by a space*, not
   deleted. A word-level tokenizer decodes ``Washington, D.C.`` as ``washington , d . c .``; the two
   differ only in whitespace next to punctuation, and turning punctuation into whitespace makes them
   identical.
3. Runs of two or more single letters are joined (``d c`` -> ``dc``, ``u s a`` -> ``usa``,
   ``a j foyt`` -> ``aj foyt``), so initialisms written with dots, with spaces or run together get
   one form, and the ``A`` of ``A.J.`` is not taken for an article. This happens before articles are
   removed.
4. :func:`exact_match` compares keys with all spaces removed (``F-16`` == ``F16``, ``AC/DC`` ==
   ``ACDC``, ``O'Brien`` == ``OBrien``), which also makes it immune to how a tokenizer spaces the
   pieces of a word. Articles are removed as whole words *before* spaces are dropped, so
   ``the rapist`` and ``therapist`` still differ.

Known limitations, inherited from SQuAD normalisation: an article that is part of a name is
removed (``An Lushan`` -> ``lushan``, ``Vitamin A`` -> ``vitamin``, ``The The`` -> empty); answers
that differ only in punctuation or symbols match (``C++`` == ``C``, ``3.14`` == ``314``). An answer
whose normal form is empty never matches anything.

Example::

    >>> normalize_answer("Washington, D.C.")
    'washington dc'
    >>> exact_match(clean_generation(" The Beatles.\\nQ: next"), ["Beatles"])
    True
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

__all__ = ["clean_generation", "exact_match", "match_key", "normalize_answer"]

# Combining diacritical marks (U+0300-U+036F): accents of Latin, Greek and Cyrillic letters.
# Marks of other scripts (Devanagari vowel signs, ...) are part of the letter and are kept.
_DIACRITICS = re.compile("[\u0300-\u036f]")

# Letters without a canonical decomposition that are commonly written without their stroke/ligature.
_LETTER_FOLDS = str.maketrans(
    {"ł": "l", "ø": "o", "đ": "d", "ð": "d", "ħ": "h", "ı": "i", "æ": "ae", "œ": "oe", "þ": "th"}
)

_ARTICLES = re.compile(r"(?<!\S)(?:a|an|the)(?!\S)")

# The answer ends at the first newline; a model that runs on without one may start the next block.
_NEXT_QUESTION = re.compile(r"\sQ:")


def _is_separator(char: str) -> bool:
    """Whether ``char`` is punctuation, a symbol or a control/format character (not a letter,
    digit, combining mark or whitespace)."""
    return unicodedata.category(char)[0] in "PSC" and not char.isspace()


def _strip_diacritics(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return unicodedata.normalize("NFC", _DIACRITICS.sub("", decomposed))


def _join_single_letters(words: list[str]) -> list[str]:
    """Join each run of two or more one-letter words into one word (``d c`` -> ``dc``)."""
    out: list[str] = []
    run: list[str] = []
    for word in [*words, ""]:
        if len(word) == 1 and word.isalpha():
            run.append(word)
            continue
        if len(run) >= 2:
            out.append("".join(run))
        else:
            out.extend(run)
        run = []
        if word:
            out.append(word)
    return out


def normalize_answer(text: str) -> str:
    """The normal form of an answer: SQuAD normalisation made Unicode- and tokenizer-robust.

    Steps, in order: NFKC; casefold; strip Latin/Greek/Cyrillic diacritics; replace every
    punctuation, symbol, control and format character by a space; join runs of single letters;
    remove the articles ``a``/``an``/``the`` as whole words; collapse whitespace and strip. See the
    module docstring for why each step is there and for the known limitations.

    Args:
        text: an answer (generated or gold).

    Returns:
        The normal form: lowercase words separated by single spaces (possibly empty).

    Example::

        >>> normalize_answer("  The U.S.A.! ")
        'usa'
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _strip_diacritics(text).translate(_LETTER_FOLDS)
    text = "".join(" " if _is_separator(ch) else ch for ch in text)
    words = _join_single_letters(text.split())
    return " ".join(_ARTICLES.sub(" ", " ".join(words)).split())


def match_key(text: str) -> str:
    """The key :func:`exact_match` compares: :func:`normalize_answer` with all spaces removed.

    Args:
        text: an answer (generated or gold).

    Returns:
        The key (empty when the answer normalises to nothing).
    """
    return normalize_answer(text).replace(" ", "")


def exact_match(prediction: str, answers: Sequence[str]) -> bool:
    """Whether ``prediction`` equals any of ``answers`` after normalisation.

    Args:
        prediction: the model's (cleaned) answer.
        answers: the gold answer and its aliases. A single string is taken as one alias.

    Returns:
        ``True`` when the :func:`match_key` of the prediction is non-empty and equals that of at
        least one alias; an empty prediction (or one that is only articles/punctuation) never
        matches.
    """
    if isinstance(answers, str):
        answers = [answers]
    key = match_key(prediction)
    if not key:
        return False
    return any(key == match_key(answer) for answer in answers)


def clean_generation(text: str) -> str:
    """The answer part of a raw generation (the text generated after the prompt).

    The answer ends at the first newline (generation also stops there or at EOS). A model that runs
    on without a newline and starts the next block is cut before that block's ``Q:`` (a ``Q:``
    preceded by whitespace). Surrounding whitespace is stripped.

    Args:
        text: the decoded new tokens, e.g. ``" Paris\\nQ: ..."``.

    Returns:
        The answer, e.g. ``"Paris"``; empty when the generation starts with a newline.
    """
    text = text.split("\n", 1)[0]
    found = _NEXT_QUESTION.search(text)
    if found is not None:
        text = text[: found.start()]
    return text.strip()
