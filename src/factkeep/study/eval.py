"""``factkeep eval``: a model's closed-book accuracy per split, relation and category.

Every fact set is answered greedily with the training prompt (``Q: {question}\\nA:``) and scored by
exact match, as the training runs' evaluations are (:mod:`factkeep.eval.evaluate`). ``facts=``
lists split names, resolved in the ``splits=`` folder (``d_held`` -> ``<splits>/d_held.jsonl``),
JSONL paths (facts files or TRL prompt/completion files; a set is named by its file stem) or
Hugging Face dataset sources (``hub:owner/name:split``, a ``save_to_disk`` folder, a
Parquet/JSON/CSV file; named as :func:`~factkeep.data.fact_sets.fact_set_name` says, e.g.
``trivia_qa-validation``), their columns mapped by ``columns.*`` or ``#field=column``
(docs/datasets.md).

Output folder (``out=``, default ``runs/eval``)::

    config.yaml, env.json    the resolved config and the environment
    results.json             metrics per split, with model, config, versions, date and timing
    samples.jsonl            one {"split", "id", "prediction", "correct"} line per fact

Every facts file is read and validated before the model is loaded and before anything is written;
a bad file stops the command with its file and line.

Example::

    factkeep eval model=runs/exp/sft/model facts=[d_known,d_unknown,d_held] splits=runs/split \\
        out=runs/eval/sft
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from factkeep.config import ConfigError, config_to_dict, help_field, nested
from factkeep.data.fact_sets import fact_set_name, fact_set_source, is_split_name, load_fact_set
from factkeep.data.facts import Fact
from factkeep.data.hf_facts import ColumnMap
from factkeep.data.prompts import DEFAULT_TEMPLATE
from factkeep.errors import DataError
from factkeep.eval.document import text_table
from factkeep.models.loading import ModelOptions, load_model_and_tokenizer
from factkeep.rundir import atomic_write_json, atomic_write_jsonl, write_run_metadata

__all__ = [
    "EvalCommandConfig",
    "format_relation_table",
    "format_split_accuracy_table",
    "load_sets",
]

log = logging.getLogger(__name__)


@dataclass
class EvalCommandConfig(ModelOptions):
    """Options of ``factkeep eval``."""

    facts: list[str] = help_field(
        [],
        "Fact sets to evaluate (required): split names found in the splits folder, JSONL "
        "paths (facts or TRL prompt/completion; named by their file stem), or Hugging Face "
        "datasets (a save_to_disk folder, .parquet/.json/.csv, hf:PATH, hub:owner/name[:split]; "
        "docs/datasets.md).",
    )
    splits: str = help_field("", "Folder of the split files (the output of factkeep split).")
    columns: ColumnMap = nested(
        ColumnMap, "Dataset columns of the fact fields (Hugging Face dataset sources only)."
    )
    template: str = help_field(DEFAULT_TEMPLATE, "Prompt template; {question} is replaced.")
    out: str = help_field("runs/eval", "Output folder.")
    batch_size: int = help_field(256, "Prompts per generate call.")
    max_new_tokens: int = help_field(16, "The most tokens generated per answer.")
    progress: bool = help_field(True, "Show a progress bar per set.")
    threads: int = help_field(0, "CPU threads for torch (0 = torch's default).")


def _check_options(cfg: EvalCommandConfig) -> None:
    if not cfg.model:
        raise ConfigError("model= is required (a Hugging Face model folder or hub id)")
    if not cfg.facts:
        raise ConfigError(
            "facts= is required (split names, JSONL paths or dataset sources, e.g. facts=[d_held])"
        )
    for name in ("batch_size", "max_new_tokens"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.threads < 0:
        raise ConfigError(f"threads must be >= 0, got {cfg.threads}")
    if "{question}" not in cfg.template:
        raise ConfigError(f"template must contain {{question}}, got {cfg.template!r}")
    try:
        cfg.template.format(question="")
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"template {cfg.template!r} cannot be filled: {exc}") from exc


def load_sets(
    entries: list[str], splits_dir: str, columns: ColumnMap | None = None
) -> tuple[dict[str, list[Fact]], dict[str, str]]:
    """Read and validate every fact set; returns (name -> facts, name -> file or dataset).

    Args:
        entries: Split names, JSONL paths or dataset sources.
        splits_dir: The folder of split names.
        columns: The column mapping of dataset sources.

    Raises:
        ConfigError: a missing file, a split name without ``splits=``, or two sets with one name.
        DataError: an invalid or empty file or dataset (located by file and line, or row).
    """
    sets: dict[str, list[Fact]] = {}
    files: dict[str, str] = {}
    for entry in entries:
        if is_split_name(entry) and not splits_dir:
            raise ConfigError(f"'{entry}' is a split name but splits= is not set")
        name, where = fact_set_name(entry), fact_set_source(entry, splits_dir)
        if name in sets:
            raise ConfigError(
                f"two fact sets are named '{name}' ({files[name]} and {where}); "
                "set names (file stems, dataset names) must differ"
            )
        facts = load_fact_set(entry, splits_dir, columns)
        if not facts:
            raise DataError("no facts in the file", where)
        sets[name], files[name] = facts, where
    return sets, files


def format_split_accuracy_table(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """A plain-text table: split, number of facts, accuracy."""
    rows = [[name, str(m["n"]), f"{m['accuracy']:.4f}"] for name, m in metrics.items()]
    return text_table(["split", "n", "accuracy"], rows, min_widths=[8, 7, 9])


def format_relation_table(metrics: Mapping[str, Mapping[str, Any]]) -> str:
    """A plain-text table: relation x split, each cell ``accuracy (n)``; blank where absent.

    The split columns share one width.
    """
    relations = sorted({rel for m in metrics.values() for rel in m["per_relation"]})
    rows = []
    for rel in relations:
        groups = [m["per_relation"].get(rel) for m in metrics.values()]
        cells = [f"{g['accuracy']:.4f} ({g['n']})" if g else "" for g in groups]
        rows.append([rel, *cells])
    width = max([16, *(len(cell) for row in rows for cell in row[1:]), *map(len, metrics)])
    return text_table(["relation", *metrics], rows, min_widths=[8, *[width] * len(metrics)])


def run_eval(cfg: EvalCommandConfig) -> int:
    """Run ``factkeep eval``: returns the exit code.

    The options and every facts file are checked, and the model is loaded, before anything is
    written.
    """
    # Lazily: it loads transformers, and this module is imported for 'factkeep eval --help'.
    from factkeep.eval.evaluate import evaluate_sets, results_document

    _check_options(cfg)
    sets, files = load_sets(list(cfg.facts), cfg.splits, cfg.columns)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    model, tokenizer = load_model_and_tokenizer(
        cfg.model, dtype=cfg.dtype, device=cfg.device, gguf_file=cfg.gguf_file
    )
    n_facts = sum(len(facts) for facts in sets.values())
    log.info("evaluating %d facts in %d sets: %s", n_facts, len(sets), ", ".join(sets))
    t0 = time.time()
    with torch.inference_mode():
        metrics, samples = evaluate_sets(
            model,
            tokenizer,
            sets,
            template=cfg.template,
            batch_size=cfg.batch_size,
            max_new_tokens=cfg.max_new_tokens,
            progress=cfg.progress,
        )
    seconds = time.time() - t0

    out = Path(cfg.out)
    write_run_metadata(out, cfg)
    results = results_document(metrics, cfg.model, config_to_dict(cfg), seconds, files)
    atomic_write_jsonl(out / "samples.jsonl", samples)
    atomic_write_json(out / "results.json", results)

    print(f"\nAccuracy of {cfg.model} (greedy, exact match):")
    print(format_split_accuracy_table(metrics))
    print("\nAccuracy per relation:")
    print(format_relation_table(metrics))
    print(f"\nAnswered {n_facts} facts in {seconds:.1f} s; results in {out}")
    return 0
