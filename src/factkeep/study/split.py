"""``factkeep split``: D_known / D_unknown / D_held / dev from probed categories.

The splits of docs/method.md section 3.

Reads the ``categories.jsonl`` of ``factkeep probe`` (or a Hugging Face dataset of facts whose
category column is set: :mod:`factkeep.data.hf_facts`) and writes (``out=``, default
``runs/split``)::

    config.yaml, env.json                        the resolved config and the environment
    d_known.jsonl, d_unknown.jsonl               the training facts (HighlyKnown / Unknown)
    d_held.jsonl                                 HighlyKnown facts never trained on
    dev.jsonl                                    held-out HighlyKnown + Unknown, for early stopping
    summary.json                                 sizes per split, relation and category; what the
                                                 relation filter, the multi-answer filter and
                                                 disjointness removed

See :mod:`factkeep.data.splits` for the algorithm and the meaning of every option. Nothing is
written if the request is impossible; the message says how many facts there are.

Example::

    factkeep split categories=runs/probe/categories.jsonl out=runs/split n_held=300 \\
        held_disjoint_answers=false
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from factkeep.config import ConfigError, help_field, nested
from factkeep.data.fact_sets import read_fact_source
from factkeep.data.facts import write_facts
from factkeep.data.hf_facts import ColumnMap
from factkeep.data.splits import SPLIT_NAMES, Splits, SplitSpec, build_splits
from factkeep.eval.document import text_table
from factkeep.rundir import atomic_write_json, write_run_metadata

log = logging.getLogger(__name__)


@dataclass
class SplitCommandConfig(SplitSpec):
    """Options of ``factkeep split`` (the split options of :class:`SplitSpec` plus files)."""

    categories: str = help_field(
        "",
        "categories.jsonl written by 'factkeep probe' (required), or a Hugging Face dataset of "
        "facts with a category column (docs/datasets.md).",
    )
    out: str = help_field("runs/split", "Output folder.")
    columns: ColumnMap = nested(
        ColumnMap, "Dataset columns of the fact fields (Hugging Face dataset sources only)."
    )


def format_split_sizes_table(splits: Splits) -> str:
    """A plain-text table: per relation, its facts, Known fraction and the size of every split."""
    report = splits.report
    sizes = report["sizes"]
    removed = report["removed_for_disjointness"]
    header = [
        "relation", "facts", "known%", "d_known", "d_unknown", "d_held", "dev HK/U", "rm subj/ans"
    ]  # fmt: skip
    rows: list[list[str]] = []
    totals = dict.fromkeys(SPLIT_NAMES, 0)
    for rel, info in report["relations"].items():
        facts, known = str(info["facts"]), f"{100 * info['known_fraction']:.1f}%"
        if not info["kept"]:
            rows.append([rel, facts, known, "    dropped (Known fraction below the threshold)"])
            continue
        n = {name: sum(sizes[name].get(rel, {}).values()) for name in SPLIT_NAMES}
        for name in SPLIT_NAMES:
            totals[name] += n[name]
        dev = sizes["dev"].get(rel, {})
        rows.append(
            [
                rel,
                facts,
                known,
                *(str(n[name]) for name in ("d_known", "d_unknown", "d_held")),
                f"{dev.get('HighlyKnown', 0)}/{dev.get('Unknown', 0)}",
                f"{removed[rel]['subject']}/{removed[rel]['answer']}",
            ]
        )
    # The totals stop at the last split (dev), under its column.
    rows.append(["all", "", "", *(str(totals[name]) for name in SPLIT_NAMES)])
    return text_table(header, rows, min_widths=[8, *[11] * (len(header) - 1)])


def run_split(cfg: SplitCommandConfig) -> int:
    """Run ``factkeep split``: returns the exit code. Nothing is written if the input is bad."""
    if not cfg.categories:
        raise ConfigError("categories= is required (the categories.jsonl of 'factkeep probe')")
    facts = read_fact_source(cfg.categories, cfg.columns)
    spec = SplitSpec(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(SplitSpec)})
    splits = build_splits(facts, spec, source=cfg.categories)

    out = Path(cfg.out)
    write_run_metadata(out, cfg, seed=cfg.seed)
    for name, items in splits.as_dict().items():
        write_facts(out / f"{name}.jsonl", items)
    summary = {"categories": cfg.categories, "seed": cfg.seed, **splits.report}
    atomic_write_json(out / "summary.json", summary)

    report = splits.report
    print(f"\nSplits of {len(facts)} facts from {cfg.categories}:")
    print(format_split_sizes_table(splits))
    print(
        f"Dropped {report['dropped_multi_answer']} multi-answer facts and "
        f"{len(report['dropped_relations'])} relation(s); 'rm subj/ans' = training candidates "
        "removed for sharing a subject / an answer with D_held or dev."
    )
    print(f"Files in {out}: " + ", ".join(f"{name}.jsonl" for name in SPLIT_NAMES))
    return 0
