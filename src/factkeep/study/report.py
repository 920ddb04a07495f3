"""``factkeep report``: one HTML report (and its Markdown twin) comparing training run folders.

``runs=`` lists run folders (``factkeep train`` outputs) or folders holding them, searched
recursively, e.g. a demo's ``runs/`` or a sweep. The report has the comparison table (one row per
method or method variant, mean ± sd over seeds), the learning/forgetting frontier, the learning
curves, the fact transitions and the details of every run. The HTML file embeds its images; the
Markdown twin beside it (``.md``) refers to PNG files in ``<stem>_files/``.

Example::

    factkeep report runs=[runs/demo/runs] out=runs/demo/report.html title="demo"
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
        "Required. Run folders, or folders searched recursively for run folders (those with "
        "results.json or metrics.jsonl).",
    )
    out: str = help_field(
        "report.html", "The HTML file; the Markdown twin and its images go beside it."
    )
    title: str = help_field("factkeep report", "Title of the report.")


def run_report(cfg: ReportCommandConfig) -> int:
    """Run ``factkeep report``: returns the exit code.

    Raises:
        ConfigError: if ``runs`` is empty, names a missing path, or holds no run folder.
    """
    from factkeep.eval.report import (
        build_report,
        comparison_markdown,
        comparison_rows,
        discover_runs,
        load_run,
    )

    if not cfg.runs:
        raise ConfigError("runs= is required: give run folders or folders holding them")
    missing = [p for p in cfg.runs if not Path(p).exists()]
    if missing:
        raise ConfigError(f"runs: no such folder: {', '.join(missing)}")
    found = discover_runs(cfg.runs)
    if not found:
        raise ConfigError(
            f"no run folders (with results.json or metrics.jsonl) in {', '.join(cfg.runs)}"
        )
    log.info("reading %d run folders", len(found))
    runs = [load_run(path) for path in found]
    out = Path(cfg.out)
    if out.suffix.lower() not in (".html", ".htm"):
        out = out.with_suffix(".html") if out.suffix else out / "report.html"
    build_report(runs, out, cfg.title)
    print(comparison_markdown(comparison_rows(runs)))
    print(f"\n{len(runs)} runs. Report: {out}")
    print(f"Markdown: {out.with_suffix('.md')} (images in {out.parent / (out.stem + '_files')})")
    return 0
