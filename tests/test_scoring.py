"""Tests of answer normalisation, exact match and generation cleaning (factkeep.probing.scoring)."""

from __future__ import annotations

import pytest

from factkeep.probing.scoring import clean_generation, exact_match, match_key, normalize_answer

NORMALIZE_CASES = [
    # (text, normal form)
    ("Washington, D.C.", "washington dc"),
    ("Washington D.C.", "washington dc"),
    ("washington dc", "washington dc"),
    ("washington , d . c .", "washington dc"),  # word-level tokenizer decoding
    ("The Beatles", "beatles"),
    ("Paris.", "paris"),
    ("  paris \n", "paris"),
    ("U.S.A.", "usa"),
    ("u . s . a .", "usa"),
    ("Beyoncé", "beyonce"),  # diacritics stripped (unlike SQuAD)
    ("Łódź", "lodz"),
    ("Straße", "strasse"),  # casefold
    ("Ｐａｒｉｓ", "paris"),  # NFKC: full-width letters
    ("1984", "1984"),
    ("１９８４", "1984"),
    ("An Lushan", "lushan"),  # known SQuAD limitation: the article of a name is removed
    ("the the", ""),
    ("A.J. Foyt", "aj foyt"),  # an initial "A" is not an article
    ("a . j . foyt", "aj foyt"),
    ("Vitamin A", "vitamin"),  # known SQuAD limitation
    ("“Quoted” — text…", "quoted text"),  # curly quotes, em dash, ellipsis
    ("Jean–Paul Sartre", "jean paul sartre"),  # en dash
    ("«Le Monde»", "le monde"),
    ("the rapist", "rapist"),
    ("Théâtre", "theatre"),
    ("हिन्दी", "हिन्दी"),  # non-Latin combining marks are kept
    ("", ""),
    ("...", ""),
]


@pytest.mark.parametrize(("text", "expected"), NORMALIZE_CASES)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


MATCH_CASES = [
    # (prediction, answers, match?)
    ("Washington, D.C.", ["washington dc"], True),
    ("Washington, D.C.", ["Washington D.C."], True),
    ("washington , d . c .", ["Washington, D.C."], True),
    ("washington dc", ["Washington, D.C."], True),
    ("The Beatles", ["beatles"], True),
    ("beatles", ["The Beatles"], True),
    ("Paris.", ["Paris"], True),
    ("  paris \n", ["Paris"], True),
    ("USA", ["U.S.A."], True),
    ("U S A", ["U.S.A."], True),
    ("Beyonce", ["Beyoncé"], True),
    ("1984", ["1984"], True),
    ("1,000", ["1000"], True),
    ("F-16", ["F16"], True),
    ("AC/DC", ["ACDC"], True),
    ("O'Brien", ["OBrien"], True),
    ("o ' brien", ["O'Brien"], True),
    ("An Lushan", ["An Lushan"], True),
    ("Lushan", ["An Lushan"], True),  # known limitation (SQuAD behaviour)
    ("new york", ["NYC", "New York City", "New York"], True),  # any alias
    ("AJ Foyt", ["A.J. Foyt"], True),
    ("Paris", "Paris", True),  # a single string is one alias, not characters
    # negatives
    ("Paris", ["Paris, Texas"], False),
    ("Paris, Texas", ["Paris"], False),
    ("therapist", ["the rapist"], False),
    ("1984", ["1985"], False),
    ("", [""], False),
    ("", ["Paris"], False),
    ("the", ["the"], False),  # empty after normalisation
    ("the the", ["The The"], False),
    ("...", ["!"], False),
    ("Paris", [], False),
    ("P", "Paris", False),
]


@pytest.mark.parametrize(("prediction", "answers", "expected"), MATCH_CASES)
def test_exact_match(prediction: str, answers: list[str] | str, expected: bool) -> None:
    assert exact_match(prediction, answers) is expected


def test_match_key_removes_spaces_after_articles() -> None:
    assert match_key("The New York Times") == "newyorktimes"
    assert match_key("a") == ""


CLEAN_CASES = [
    (" Paris\nQ: next question", "Paris"),
    (" Paris", "Paris"),
    ("  new york  \n\n", "new york"),
    ("\nParis", ""),  # the answer ends at the first newline
    ("Paris\r\nQ:", "Paris"),
    (" Paris Q: what is", "Paris"),  # ran on without a newline
    ("IQ: 140", "IQ: 140"),  # "Q:" inside a word is kept
    ("paris \n", "paris"),  # word-level decoding
    ("", ""),
]


@pytest.mark.parametrize(("raw", "expected"), CLEAN_CASES)
def test_clean_generation(raw: str, expected: str) -> None:
    assert clean_generation(raw) == expected
