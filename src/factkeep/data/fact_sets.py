"""Fact sets as the commands name them: a split name of a splits folder, or a file path.

``d_known`` means ``<splits folder>/d_known.jsonl``; anything ending in ``.jsonl`` is a path. A file
whose first record has ``prompt`` and ``completion`` is read as TRL prompt/completion data
(:mod:`factkeep.data.prompt_completion`), any other as facts (:mod:`factkeep.data.facts`).

Example::

    facts = load_fact_set("d_held", "runs/split")
"""

from __future__ import annotations

from pathlib import Path

from factkeep.config import ConfigError
from factkeep.data.facts import Fact, read_facts, read_jsonl_objects
from factkeep.data.prompt_completion import read_prompt_completion

__all__ = ["load_fact_set"]


def load_fact_set(entry: str, splits_dir: str) -> list[Fact]:
    """Facts of a split name (``d_known`` -> ``<splits_dir>/d_known.jsonl``) or a JSONL path.

    A file whose first record has ``prompt`` and ``completion`` is read as TRL prompt/completion.
    """
    path = Path(entry)
    if not entry.endswith(".jsonl"):
        if not splits_dir:
            raise ConfigError(f"'{entry}' is a split name but data.splits is not set")
        path = Path(splits_dir) / f"{entry}.jsonl"
    if not path.is_file():
        raise ConfigError(f"facts file not found: {path}")
    rows = read_jsonl_objects(path)
    if rows and "prompt" in rows[0][1] and "completion" in rows[0][1]:
        return read_prompt_completion(path)
    return read_facts(path)
