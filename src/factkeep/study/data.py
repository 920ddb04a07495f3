"""``factkeep data entityquestions``: EntityQuestions (Sciavolino et al., 2021) as Fact JSONL.

Reads a local copy of EntityQuestions (or downloads, verifies and caches the official release
with ``download=true``, see :mod:`factkeep.data.eq_download`) and writes the chosen splits and
relations as a facts file, optionally sampling a fixed number of facts per relation and split,
plus optionally the dev split of the same relations as few-shot exemplars for
``factkeep probe exemplars=``. Both files are written atomically, and only once all input has
been read and checked.

Where the data comes from, in order: ``root=``; ``$FACTKEEP_EQ_ROOT``; the copy cached by an
earlier download (``$FACTKEEP_CACHE/entityquestions``, default ``~/.cache/factkeep``);
``../shared/data/entityquestions``; the download if ``download=true``.

Example::

    factkeep data entityquestions out=data/eq_train.jsonl relations=P17,P36 per_relation=500 \\
        exemplars_out=data/eq_dev.jsonl
    factkeep data entityquestions download=true splits=test out=data/eq_test.jsonl
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

from factkeep.cache import CACHE_ENV
from factkeep.config import ConfigError, help_field
from factkeep.data.entityquestions import ENV_VAR, SPLITS, load_entityquestions
from factkeep.data.eq_download import (
    DEFAULT_URL,
    download_entityquestions,
    eq_cache_path,
    locate_eq_root,
)
from factkeep.data.facts import Fact, validate_facts
from factkeep.errors import DataError, FactkeepError
from factkeep.rundir import atomic_write_jsonl

log = logging.getLogger(__name__)


@dataclass
class EntityQuestionsCommandConfig:
    """Options of ``factkeep data entityquestions``."""

    out: str = help_field("", "Facts JSONL file to write (required; parent folders are created).")
    root: str | None = help_field(
        None,
        "Local copy of EntityQuestions (relation_query_templates.json, train/, dev/, test/). "
        f"Default: ${ENV_VAR}, else the copy cached by an earlier download, else "
        "../shared/data/entityquestions, else the download if download=true.",
    )
    download: bool = help_field(
        False,
        "When no local copy is found, download the official release archive (url=), verify "
        "every file against the shipped manifest and cache it in cache_dir.",
    )
    url: str = help_field(DEFAULT_URL, "The release archive to download (http(s):// or file://).")
    cache_dir: str | None = help_field(
        None, f"Cache folder for the download (default: ${CACHE_ENV}, else ~/.cache/factkeep)."
    )
    sha256: str | None = help_field(
        None,
        "Expected sha256 of the archive, checked when downloading (the hash of every download "
        "is logged, to pin it here).",
    )
    splits: list[str] = help_field(["train"], f"Splits to write: any of {', '.join(SPLITS)}.")
    relations: list[str] = help_field(
        [], "Relations to write, e.g. P17,P36 (default: all in the data)."
    )
    per_relation: int = help_field(
        0,
        "Facts per relation and split: 0 = all; N = a seeded random sample of N, kept in file "
        "order (also applied to exemplars_out).",
    )
    seed: int = help_field(0, "Seed of the per_relation sample.")
    exemplars_out: str | None = help_field(
        None,
        "Also write the dev split of the same relations to this JSONL file (few-shot exemplars "
        "for 'factkeep probe exemplars=').",
    )


def _check_options(cfg: EntityQuestionsCommandConfig) -> list[str]:
    """Validate the options that need no data; returns the splits without repeats."""
    if not cfg.out:
        raise ConfigError("out= is required (the facts JSONL file to write)")
    unknown = [s for s in cfg.splits if s not in SPLITS]
    if unknown:
        raise ConfigError(
            f"option 'splits': unknown split(s) {', '.join(map(repr, unknown))} "
            f"(expected some of {', '.join(SPLITS)})"
        )
    splits = list(dict.fromkeys(cfg.splits))
    if not splits:
        raise ConfigError(f"option 'splits': give at least one of {', '.join(SPLITS)}")
    if cfg.per_relation < 0:
        raise ConfigError(f"option 'per_relation': must be >= 0, got {cfg.per_relation}")
    if cfg.exemplars_out and Path(cfg.exemplars_out).resolve() == Path(cfg.out).resolve():
        raise ConfigError("option 'exemplars_out': must be a different file from out=")
    return splits


def resolve_root(cfg: EntityQuestionsCommandConfig) -> Path:
    """The copy of EntityQuestions to read, downloading it if needed and allowed.

    Args:
        cfg: The command's options (``root``, ``download``, ``url``, ``cache_dir``, ``sha256``).

    Returns:
        The data set root.

    Raises:
        DataError: The given root does not exist, or the download failed verification.
        DownloadError: The download failed.
        FactkeepError: No copy was found and ``download`` is false.
    """
    if cfg.root:
        root = Path(cfg.root).expanduser().resolve()
        if not root.is_dir():
            raise DataError("EntityQuestions folder not found (option 'root')", root)
        return root
    found = locate_eq_root(cfg.cache_dir)
    if found is not None:
        if not found.is_dir():
            raise DataError(f"EntityQuestions folder not found (from ${ENV_VAR})", found)
        log.info("Using EntityQuestions from %s", found)
        return found
    if cfg.download:
        return download_entityquestions(cfg.cache_dir, url=cfg.url, sha256=cfg.sha256)
    raise FactkeepError(
        "no local copy of EntityQuestions found (looked at "
        f"${ENV_VAR}, the cache {eq_cache_path(cfg.cache_dir)} and "
        "../shared/data/entityquestions); pass root=PATH, set "
        f"{ENV_VAR}=PATH, or pass download=true to download and cache the official release"
    )


def sample_per_relation(facts: list[Fact], n: int, seed: int) -> list[Fact]:
    """Keep a seeded random sample of ``n`` facts per (relation, split), in input order.

    Each group's sample depends only on the seed, the relation, the split and the group's
    facts, not on which other relations or splits were loaded.

    Args:
        facts: The facts (``meta["split"]`` set, as the loader does).
        n: Facts to keep per group; 0 keeps all.
        seed: The seed.

    Returns:
        The kept facts, in their input order.
    """
    if n <= 0:
        return list(facts)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, fact in enumerate(facts):
        groups.setdefault((fact.relation, str(fact.meta.get("split"))), []).append(i)
    keep: set[int] = set()
    for (relation, split), indices in groups.items():
        if len(indices) <= n:
            keep.update(indices)
        else:
            rng = random.Random(f"{seed}:{relation}:{split}")
            keep.update(rng.sample(indices, n))
    return [fact for i, fact in enumerate(facts) if i in keep]


def _count(facts: list[Fact]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for fact in facts:
        per = counts.setdefault(fact.relation, {})
        split = str(fact.meta.get("split"))
        per[split] = per.get(split, 0) + 1
    return counts


def run_entityquestions(cfg: EntityQuestionsCommandConfig) -> int:
    """Run ``factkeep data entityquestions``: returns the exit code.

    Nothing is written unless all the input was read and checked.
    """
    splits = _check_options(cfg)
    root = resolve_root(cfg)
    relations = list(cfg.relations) or None
    loaded = load_entityquestions(root, splits=splits, relations=relations)
    facts = sample_per_relation(loaded, cfg.per_relation, cfg.seed)
    validate_facts(facts, cfg.out)
    exemplars: list[Fact] = []
    if cfg.exemplars_out:
        if "dev" in splits:
            log.warning("exemplars_out= holds dev facts that out= also holds (splits has dev)")
        wanted = sorted({f.relation for f in loaded})
        dev = load_entityquestions(root, splits=["dev"], relations=wanted)
        exemplars = sample_per_relation(dev, cfg.per_relation, cfg.seed)
        validate_facts(exemplars, cfg.exemplars_out)

    atomic_write_jsonl(cfg.out, (fact.to_dict() for fact in facts))
    if cfg.exemplars_out:
        atomic_write_jsonl(cfg.exemplars_out, (fact.to_dict() for fact in exemplars))

    available, written, shots = _count(loaded), _count(facts), _count(exemplars)
    width = max([5, *(len(r) for r in available)])
    for relation, per_split in available.items():
        kept = written.get(relation, {})
        parts = ", ".join(f"{s} {kept.get(s, 0)} of {per_split.get(s, 0)}" for s in splits)
        line = f"{relation:<{width}} {sum(kept.values()):>7} facts ({parts})"
        if cfg.exemplars_out:
            line += f", {sum(shots.get(relation, {}).values())} dev exemplars"
        print(line)
    total = f"{'total':<{width}} {len(facts):>7} facts of {len(available)} relations -> {cfg.out}"
    if cfg.exemplars_out:
        total += f"; {len(exemplars)} dev exemplars -> {cfg.exemplars_out}"
    print(total)
    return 0
