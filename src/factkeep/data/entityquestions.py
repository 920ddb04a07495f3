"""Loader for EntityQuestions (Sciavolino et al., 2021), the closed-book QA set factkeep uses.

The data set lives outside the repository, read-only, at ``../shared/data/entityquestions``
relative to the project root (override with the ``FACTKEEP_EQ_ROOT`` environment variable; a copy
downloaded by ``factkeep data entityquestions download=true`` into the cache is used before the
shared one, see :mod:`factkeep.data.eq_download`)::

    relation_query_templates.json          {"P17": "Which country is [X] located in?", ...}
    train/P17.train.json                   [{"question": str, "answers": [str, ...]}, ...]
    dev/P17.dev.json, test/P17.test.json   same format

Each question becomes a :class:`~factkeep.data.facts.Fact` with ``id = "{relation}.{split}.{i}"``
(``i`` the index in the file's array), the relation from the file name and the subject recovered
by matching the question against its relation's template (``[X]`` is the subject).

Subject recovery: on the published data every one of the 220,703 questions matches its
template exactly. Should a question not match, the loader retries ignoring case and runs of
whitespace; if that also fails the whole question (stripped) stands in for the subject and the
fact gets ``meta["subject_recovered"] = False`` (the key is absent when recovery succeeded), and a
warning with the count is logged.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from factkeep.data.facts import Fact
from factkeep.errors import DataError

logger = logging.getLogger(__name__)

ENV_VAR = "FACTKEEP_EQ_ROOT"
"""Environment variable that overrides the EntityQuestions location."""

SPLITS: tuple[str, ...] = ("train", "dev", "test")
TEMPLATES_FILE = "relation_query_templates.json"
SOURCE = "entityquestions"

_FILE_RE = re.compile(r"(P\d+)\.(train|dev|test)\.json")


def default_eq_root() -> Path:
    """Where EntityQuestions is: ``$FACTKEEP_EQ_ROOT`` if set, else the copy downloaded into the
    cache (``$FACTKEEP_CACHE/entityquestions``) if there is one, else ``../shared/...`` from cwd.

    See :mod:`factkeep.data.eq_download` for the cache and the download.

    Returns:
        The (resolved) data set root; it may not exist.
    """
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    from factkeep.data.eq_download import eq_cache_path  # here: eq_download imports this module

    cached = eq_cache_path()
    if cached.is_dir():
        return cached
    return (Path.cwd() / ".." / "shared" / "data" / "entityquestions").resolve()


def _read_json(path: Path) -> tuple[Any, str]:
    """Parse a JSON file, turning I/O, encoding and syntax errors into located DataErrors.

    Returns:
        The parsed value and the decoded text (to locate elements in later errors).
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except OSError as exc:
        raise DataError(f"cannot read file: {exc.strerror or exc}", path) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError("not valid UTF-8", path, line) from None
    try:
        return json.loads(text), text
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON: {exc.msg} (column {exc.colno})", path, exc.lineno) from None


def load_templates(root: str | Path | None = None) -> dict[str, str]:
    """Read ``relation_query_templates.json``.

    Args:
        root: The data set root; :func:`default_eq_root` if None.

    Returns:
        Relation -> question template containing ``[X]`` once.

    Raises:
        DataError: The file is missing or malformed, or a template lacks ``[X]``.
    """
    path = Path(root if root is not None else default_eq_root()) / TEMPLATES_FILE
    templates, _ = _read_json(path)
    if not isinstance(templates, dict):
        raise DataError(f"expected a JSON object, got {type(templates).__name__}", path)
    for rel, tpl in templates.items():
        if not isinstance(tpl, str) or tpl.count("[X]") != 1:
            raise DataError("template must be a string containing '[X]' once", path, field=rel)
    return templates


@functools.lru_cache(maxsize=256)
def _template_regex(template: str, loose: bool = False) -> re.Pattern[str]:
    """Compile a template into a regex whose group 1 is the ``[X]`` subject."""
    before, after = template.split("[X]", 1)
    if not loose:
        return re.compile(re.escape(before) + "(.+)" + re.escape(after), re.DOTALL)

    def part(s: str) -> str:
        return r"\s+".join(re.escape(w) for w in s.split())

    pattern = r"\s*" + part(before) + r"\s*(.+?)\s*" + part(after) + r"\s*"
    return re.compile(pattern, re.DOTALL | re.IGNORECASE)


def subject_from_question(question: str, template: str) -> str | None:
    """Recover the ``[X]`` subject of ``question`` by matching it against ``template``.

    Everything in the template but ``[X]`` is matched literally and the match must cover the
    whole question, e.g. ``"Who is [X]'s child?"`` on ``"Who is Ada's child?"`` gives ``"Ada"``.

    Args:
        question: The question text.
        template: A template with one ``[X]``.

    Returns:
        The subject (stripped), or None if the question does not match or the subject is blank.
    """
    match = _template_regex(template).fullmatch(question)
    if match is None:
        return None
    subject = match.group(1).strip()
    return subject or None


def _element_line(text: str, index: int) -> int | None:
    """The 1-based line where element ``index`` of the top-level JSON array in ``text`` starts."""
    decoder = json.JSONDecoder()
    ws = re.compile(r"[ \t\n\r]*")

    def skip_ws(at: int) -> int:
        m = ws.match(text, at)
        return m.end() if m else at

    pos = skip_ws(text.index("[") + 1)
    for i in range(index + 1):
        if i == index:
            return text.count("\n", 0, pos) + 1
        try:
            _, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return None
        pos = skip_ws(pos)
        if text.startswith(",", pos):
            pos = skip_ws(pos + 1)
    return None


def _load_file(path: Path, relation: str, split: str, template: str) -> tuple[list[Fact], int]:
    """Load one ``P*.{split}.json`` file; returns the facts and the count of fallback subjects."""
    rows, text = _read_json(path)
    if not isinstance(rows, list):
        raise DataError(f"expected a JSON array, got {type(rows).__name__}", path, 1)

    def fail(index: int, message: str, fld: str | None = None) -> DataError:
        return DataError(f"element {index}: {message}", path, _element_line(text, index), fld)

    strict = _template_regex(template)
    loose: re.Pattern[str] | None = None
    meta = {"split": split, "source": SOURCE}
    facts: list[Fact] = []
    fallbacks = 0
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise fail(i, f"expected a JSON object, got {type(row).__name__}")
        question = row.get("question")
        answers = row.get("answers")
        if not isinstance(question, str) or not question.strip():
            raise fail(i, "missing or not a non-empty string", "question")
        if (
            not isinstance(answers, list)
            or not answers
            or not all(isinstance(a, str) and a.strip() for a in answers)
        ):
            raise fail(i, "missing or not a non-empty list of non-empty strings", "answers")
        match = strict.fullmatch(question)
        subject = match.group(1).strip() if match else ""
        fact_meta: dict[str, Any] = dict(meta)
        if not subject:
            loose = loose or _template_regex(template, loose=True)
            match = loose.fullmatch(question)
            subject = match.group(1).strip() if match else ""
            if not subject:
                subject = question.strip()
                fact_meta["subject_recovered"] = False
                fallbacks += 1
        fact_id = f"{relation}.{split}.{i}"
        facts.append(Fact(fact_id, question, list(answers), relation, subject, None, fact_meta))
    return facts, fallbacks


def _relation_key(relation: str) -> tuple[int, str]:
    digits = relation[1:]
    return (int(digits), relation) if digits.isdigit() else (1 << 30, relation)


def load_entityquestions(
    root: str | Path | None = None,
    splits: Sequence[str] = SPLITS,
    relations: Sequence[str] | None = None,
) -> list[Fact]:
    """Load EntityQuestions as facts.

    Facts come split by split (in the order given), relation by relation (by property number),
    in file order within a file.

    Args:
        root: The data set root; :func:`default_eq_root` if None.
        splits: Which of ``train``, ``dev``, ``test`` to load.
        relations: Only these relations (e.g. ``["P17", "P36"]``); all if None.

    Returns:
        The facts; ids are ``"{relation}.{split}.{index}"`` and ``meta`` holds ``split`` and
        ``source`` (and ``subject_recovered: False`` where the template did not match).

    Raises:
        DataError: Missing root, split folder or file, an unknown split or relation, a relation
            without a template, or a malformed file (located by file, line and field).
    """
    root = Path(root) if root is not None else default_eq_root()
    if not root.is_dir():
        raise DataError(f"EntityQuestions folder not found (set ${ENV_VAR})", root)
    if isinstance(splits, str):
        splits = (splits,)
    for split in splits:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    templates = load_templates(root)

    files: dict[str, dict[str, Path]] = {}
    for split in splits:
        folder = root / split
        if not folder.is_dir():
            raise DataError("split folder not found", folder)
        for path in folder.glob(f"P*.{split}.json"):
            match = _FILE_RE.fullmatch(path.name)
            if match:
                files.setdefault(split, {})[match.group(1)] = path
    available = sorted({r for per in files.values() for r in per}, key=_relation_key)
    if relations is not None:
        if isinstance(relations, str):
            relations = (relations,)
        unknown = [r for r in relations if r not in available]
        if unknown:
            raise DataError(
                f"unknown relation(s) {', '.join(map(repr, unknown))}; "
                f"available: {', '.join(available)}",
                root,
                field="relations",
            )
        wanted = sorted(set(relations), key=_relation_key)
    else:
        wanted = available

    facts: list[Fact] = []
    fallbacks = 0
    for split in splits:
        for relation in wanted:
            found = files.get(split, {}).get(relation)
            if found is None:
                if relations is not None:
                    raise DataError("file not found", root / split / f"{relation}.{split}.json")
                continue
            path = found
            if relation not in templates:
                raise DataError(f"no template for relation {relation!r} in {TEMPLATES_FILE}", path)
            loaded, n_fallback = _load_file(path, relation, split, templates[relation])
            facts.extend(loaded)
            fallbacks += n_fallback
    if fallbacks:
        logger.warning(
            "EntityQuestions: %d of %d subjects not recovered from templates; "
            "used the whole question (meta.subject_recovered=False)",
            fallbacks,
            len(facts),
        )
    logger.info("Loaded %d EntityQuestions facts from %s", len(facts), root)
    return facts
