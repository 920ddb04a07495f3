"""``factkeep report``: one HTML report (and its Markdown twin) comparing training run folders.

``runs=`` lists run folders (``factkeep train`` outputs) or folders holding them, searched
recursively, e.g. a demo's ``runs/`` or a sweep. The report has the comparison table (one row per
method or method variant, mean ± sd over seeds), the learning/forgetting frontier, the learning
curves, the fact transitions and the details of every run. Then one section per analysis (an
``analysis.json`` written by ``factkeep analyze ...``, see :mod:`factkeep.analysis.summary`),
found under ``runs=`` and ``analyses=``. The HTML file embeds its images; the Markdown twin beside
it (``.md``) refers to PNG files in ``<stem>_files/``.

Example::

    factkeep report runs=[runs/demo] out=runs/demo/report.html title="demo"
    factkeep report analyses=[runs/an] out=runs/an/report.html  # analyses only
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from factkeep.config import ConfigError, help_field

__all__ = ["ReportCommandConfig", "run_report"]

log = logging.getLogger(__name__)


@dataclass
class ReportCommandConfig:
    """Options of ``factkeep report``."""

    runs: list[str] = help_field(
        [],
        "Run folders, or folders searched recursively for run folders (those with results.json "
        "or metrics.jsonl) and for analysis folders (with analysis.json). Required unless "
        "analyses= is given.",
    )
    analyses: list[str] = help_field(
        [],
        "Analysis folders (with the analysis.json of a 'factkeep analyze' command), or folders "
        "searched recursively for them; each becomes a section after the runs' sections.",
    )
    out: str = help_field(
        "report.html", "The HTML file; the Markdown twin and its images go beside it."
    )
    title: str = help_field("factkeep report", "Title of the report.")


def run_report(cfg: ReportCommandConfig) -> int:
    """Run ``factkeep report``: returns the exit code.

    Raises:
        ConfigError: if ``runs`` and ``analyses`` are both empty, name a missing path, or hold
            no run folder and no analysis, or if a folder of ``analyses`` holds no analysis.
        DataError: if an ``analysis.json`` is invalid (nothing is written then).
    """
    # Lazily: it loads matplotlib, and this module is imported for 'factkeep report --help'.
    from factkeep.eval.report import (
        build_report,
        comparison_markdown,
        comparison_rows,
        discover_analyses,
        discover_runs,
        load_analysis,
        load_run,
    )

    if not cfg.runs and not cfg.analyses:
        raise ConfigError(
            "runs= or analyses= is required: give run folders, analysis folders or folders "
            "holding them"
        )
    for key, paths in (("runs", cfg.runs), ("analyses", cfg.analyses)):
        missing = [p for p in paths if not Path(p).exists()]
        if missing:
            raise ConfigError(f"{key}: no such folder: {', '.join(missing)}")
    empty = [p for p in cfg.analyses if not discover_analyses([p])]
    if empty:
        raise ConfigError(f"analyses: no analysis.json in {', '.join(empty)}")
    found = discover_runs(cfg.runs)
    analysis_dirs = discover_analyses([*cfg.analyses, *cfg.runs])
    if not found and not analysis_dirs:
        raise ConfigError(
            f"no run folders (with results.json or metrics.jsonl) nor analysis.json in "
            f"{', '.join(cfg.runs)}"
        )
    log.info("reading %d run folders and %d analyses", len(found), len(analysis_dirs))
    runs = [load_run(path) for path in found]
    analyses = [load_analysis(path) for path in analysis_dirs]
    out = Path(cfg.out)
    if out.suffix.lower() not in (".html", ".htm"):
        out = out.with_suffix(".html") if out.suffix else out / "report.html"
    build_report(runs, out, cfg.title, analyses)
    if runs:
        print(comparison_markdown(comparison_rows(runs)) + "\n")
    for analysis in analyses:
        print(f"analysis: {analysis.summary.title} ({analysis.path})")
    counts = [f"{len(runs)} runs"] if runs else []
    if analyses:
        counts.append(f"{len(analyses)} {'analysis' if len(analyses) == 1 else 'analyses'}")
    print(f"{', '.join(counts)}. Report: {out}")
    print(f"Markdown: {out.with_suffix('.md')} (images in {out.parent / (out.stem + '_files')})")
    return 0
