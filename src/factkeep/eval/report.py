"""Reports over training run folders: comparison table, plots, an HTML file and its Markdown twin.

A run folder is what ``factkeep train`` writes (``config.yaml``, ``metrics.jsonl``,
``samples/step-N.jsonl``, ``results.json``), read with
:class:`~factkeep.training.run_folder.RunFolder`. Runs are grouped into rows by method; runs of a
method whose settings differ from the method's shipped config (another λ = ``loss.kl_weight``,
another temperature, frozen embeddings, ...) form their own row, named after the difference
(``self_distill (λ=5)``). Seeds are ignored, so the runs of a row are its seeds.

Analyses (folders with an ``analysis.json``, see :mod:`factkeep.analysis.summary`) add one section
each after the runs' sections: their title, description, tables and figures.

Example::

    runs = [load_run(p) for p in discover_runs(["runs/demo/runs"])]
    analyses = [load_analysis(p) for p in discover_analyses(["runs/demo/analyze"])]
    build_report(runs, Path("report/report.html"), "demo", analyses)  # + report.md, report_files/
"""

from __future__ import annotations

import json
import os
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from factkeep.analysis.summary import SUMMARY_FILE, AnalysisSummary, Cell, read_summary
from factkeep.config import config_to_dict, resolve_config
from factkeep.configs import CONFIG_DIR
from factkeep.eval.bootstrap import bootstrap_intervals, paired_difference
from factkeep.eval.document import Block, html_document, markdown_document, md_table
from factkeep.eval.plots import (
    METHOD_COLORS,
    PlotGroup,
    frontier_png,
    learning_curves_png,
    method_color,
    transitions_png,
)
from factkeep.eval.transitions import run_transitions
from factkeep.rundir import atomic_write_bytes, atomic_write_text
from factkeep.training.config import TrainCommandConfig
from factkeep.training.run_folder import RunFolder
from factkeep.training.summary import summarize_run

__all__ = [
    "COLUMNS",
    "AnalysisData",
    "ComparisonRow",
    "RunData",
    "Stat",
    "analysis_blocks",
    "build_report",
    "comparison_markdown",
    "comparison_rows",
    "discover_analyses",
    "discover_runs",
    "load_analysis",
    "load_run",
    "plot_groups",
    "variant_text",
]

COLUMNS = (
    ("d_known", "D_known"),
    ("d_unknown", "D_unknown"),
    ("d_held", "D_held"),
    ("forgetting", "forgetting"),
)
"""Table columns: key (a split's final accuracy, or ``forgetting``) and heading."""

# Options that do not change what a run learns (paths, bookkeeping, evaluation schedule).
_IGNORED = {
    *("method", "seed", "out", "model", "gguf_file", "dtype", "device", "threads", "progress"),
    *("resume", "report_to", "save_every_steps", "save_total_limit", "keep_checkpoints"),
    "log_every_steps",
    *("data.splits", "data.eval", "eval.every_steps", "eval.each_epoch", "eval.at_start"),
    *("eval.every_epochs",),
    *("eval.batch_size", "eval.max_new_tokens"),
}
_SHORT = {"loss.kl_weight": "λ", "loss.temperature": "τ", "freeze.freeze": "frozen"}


@dataclass
class RunData:
    """Everything a report needs from one run folder.

    Attributes:
        path: the run folder.
        config: ``config.yaml`` as a nested dict (empty if absent), as written: settings are
            compared in this form.
        results: ``results.json``, or a summary of ``metrics.jsonl`` while the run has none.
        metrics: the rows of ``metrics.jsonl`` (as dicts, see
            :meth:`~factkeep.training.run_folder.MetricsRow.to_dict`).
        transitions: ``{split: {kind: count}}`` between the first and last evaluation.
        complete: whether the run wrote its ``results.json``.
        train_config: ``config.yaml`` as the run's typed config (None if absent).
    """

    path: Path
    config: dict[str, Any]
    results: dict[str, Any]
    metrics: list[dict[str, Any]]
    transitions: dict[str, dict[str, int]]
    complete: bool
    train_config: TrainCommandConfig | None = None

    @property
    def method(self) -> str:
        """The run's method name (``results.json``, else ``config.yaml``)."""
        return str(self.results.get("method") or self.config.get("method") or "custom")

    @property
    def seed(self) -> int | None:
        """The run's seed, if recorded."""
        seed = self.results.get("seed", self.config.get("seed"))
        return None if seed is None else int(seed)

    @property
    def kl_weight(self) -> float | None:
        """λ (``loss.kl_weight``) of the run, None if it has no config."""
        return None if self.train_config is None else self.train_config.loss.kl_weight


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (None for a single value) of a column over runs."""

    mean: float
    sd: float | None
    n: int

    def percent(self, digits: int = 1) -> str:
        """``"57.4 ± 0.6"``: the fraction as a percentage."""
        text = f"{100 * self.mean:.{digits}f}"
        return text if self.sd is None else f"{text} ± {100 * self.sd:.{digits}f}"


@dataclass
class ComparisonRow:
    """One row of the comparison table: a method (or method variant) over its seeds."""

    label: str
    method: str
    variant: dict[str, Any]
    runs: list[RunData]
    cells: dict[str, Stat | None] = field(default_factory=dict)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    """95% bootstrap intervals per column, over the row's runs and their facts."""
    shared: dict[str, Any] = field(default_factory=dict)
    """Settings every run of the table changed the same way (left out of the labels)."""

    @property
    def kl_weight(self) -> float | None:
        """λ shared by the row's runs (None if they have none)."""
        return self.runs[0].kl_weight


@dataclass
class AnalysisData:
    """An analysis folder and its ``analysis.json`` (figure files are relative to ``path``)."""

    path: Path
    summary: AnalysisSummary


def discover_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Find run folders: each path is a run folder or a folder searched recursively for them.

    A run folder has ``metrics.jsonl`` or a training ``results.json``; it is not searched further.
    Hidden folders and nonexistent paths are skipped.

    Returns:
        The run folders in the order of ``paths``, each path's runs sorted, without duplicates.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    for start in map(Path, paths):
        runs: list[Path] = []
        for here, subdirs, _ in os.walk(start):
            folder = Path(here)
            if RunFolder(folder).is_run:
                runs.append(folder)
                subdirs.clear()
            else:
                subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for run in sorted(runs):
            if run.resolve() not in seen:
                seen.add(run.resolve())
                found.append(run)
    return found


def discover_analyses(paths: Iterable[str | Path]) -> list[Path]:
    """Find analysis folders: those with an ``analysis.json``, at or below each path.

    An analysis folder is not searched further. Hidden folders and nonexistent paths are skipped.

    Returns:
        The analysis folders in the order of ``paths``, each path's sorted, without duplicates.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    for start in map(Path, paths):
        folders: list[Path] = []
        for here, subdirs, _ in os.walk(start):
            if (Path(here) / SUMMARY_FILE).is_file():
                folders.append(Path(here))
                subdirs.clear()
            else:
                subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for folder in sorted(folders):
            if folder.resolve() not in seen:
                seen.add(folder.resolve())
                found.append(folder)
    return found


def load_analysis(folder: str | Path) -> AnalysisData:
    """Read an analysis folder's ``analysis.json`` (DataError naming the file and field if bad)."""
    return AnalysisData(Path(folder), read_summary(folder))


def load_run(run_dir: str | Path) -> RunData:
    """Read a run folder; a run without ``results.json`` yet is summarised from its metrics.

    Raises:
        ConfigError: an unreadable ``config.yaml``, or one with an unknown option.
        DataError: a malformed ``metrics.jsonl`` line (naming the file, line and field).
    """
    run = RunFolder(run_dir)
    config = run.config_dict if run.has_config else {}
    train_config = run.config if run.has_config else None
    metrics = [row.to_dict() for row in run.metrics]
    complete = run.has_results
    results = run.results if complete else None
    if results is None:
        results = {"method": config.get("method"), "seed": config.get("seed")}
        results.update(summarize_run(metrics))
    return RunData(
        run.path, config, results, metrics, run_transitions(run.path), complete, train_config
    )


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        elif f"{prefix}{key}" not in _IGNORED:
            out[f"{prefix}{key}"] = value
    return out


def _reference(method: str, runs: Sequence[RunData]) -> dict[str, Any]:
    """The settings a method's plain row stands for: its shipped config, else its commonest one."""
    shipped = CONFIG_DIR / f"{method}.yaml"
    try:
        if shipped.is_file():
            return _flatten(config_to_dict(resolve_config(TrainCommandConfig, shipped)))
    except (ValueError, OSError):  # another version's config: use the runs
        pass
    flats = [json.dumps(_flatten(r.config), sort_keys=True) for r in runs]
    return dict(json.loads(max(flats, key=flats.count))) if flats else {}


def _value_text(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "+".join(map(_value_text, value)) or "none"
    return str(value)


def variant_text(variant: Mapping[str, Any]) -> str:
    """``"λ=5, τ=0.25"``: a variant's settings, λ first."""
    keys = sorted(variant, key=lambda k: (k != "loss.kl_weight", k != "loss.temperature", k))
    names = {k: _SHORT.get(k, k.removeprefix("loss.").removeprefix("optim.")) for k in keys}
    return ", ".join(f"{names[k]}={_value_text(variant[k])}" for k in keys)


def _stat(values: Sequence[float]) -> Stat | None:
    if not values:
        return None
    sd = statistics.stdev(values) if len(values) > 1 else None
    return Stat(statistics.fmean(values), sd, len(values))


def comparison_rows(runs: Sequence[RunData]) -> list[ComparisonRow]:
    """Group runs into the rows of the comparison table (like the paper's Table 1).

    Runs are grouped by method and by how their settings differ from the method's shipped config
    (e.g. a non-default λ); each cell is the mean and sample standard deviation over the row's runs
    of a split's final accuracy or of the forgetting of D_held. Rows follow the shipped methods'
    order, then λ. With several methods, a change every run shares (e.g. the demo's epochs and
    learning rate) is left out of the labels and kept in each row's ``shared``.
    """
    by_method: dict[str, list[RunData]] = {}
    for run in runs:
        by_method.setdefault(run.method, []).append(run)
    variants: list[tuple[str, RunData, dict[str, Any]]] = []
    for method, method_runs in by_method.items():
        reference = _reference(method, method_runs)
        for run in method_runs:
            flat = _flatten(run.config)
            variant = {k: v for k, v in flat.items() if k in reference and v != reference[k]}
            variants.append((method, run, variant))
    shared: dict[str, Any] = {}
    if len(by_method) > 1:
        first = variants[0][2]
        shared = {k: v for k, v in first.items() if all(x.get(k) == v for _, _, x in variants)}
    rows: dict[tuple[str, str], ComparisonRow] = {}
    for method, run, variant in variants:
        own = {k: v for k, v in variant.items() if k not in shared}
        text = variant_text(own)
        label = f"{method} ({text})" if text else method
        row = rows.setdefault((method, text), ComparisonRow(label, method, own, [], shared=shared))
        row.runs.append(run)
    order = list(METHOD_COLORS)

    def sort_key(row: ComparisonRow) -> tuple[Any, ...]:
        rank = order.index(row.method) if row.method in order else len(order)
        return (rank, row.method, row.kl_weight or 0.0, row.label)

    out = sorted(rows.values(), key=sort_key)
    for row in out:
        for key, _ in COLUMNS:
            if key == "forgetting":
                values = [r.results.get("forgetting") for r in row.runs]
            else:
                values = [(r.results.get("final") or {}).get(key) for r in row.runs]
            row.cells[key] = _stat([float(v) for v in values if v is not None])
        row.intervals = bootstrap_intervals([r.path for r in row.runs if r.complete])
    return out


TABLE_HEADER = ["method", *(f"{name} (%)" for _, name in COLUMNS), "runs"]
UNFINISHED = "† a run of this row has no results.json yet: its last evaluation is used."


CI_NOTE = (
    "[low, high]: 95% bootstrap interval, over the facts of each split (and over the runs when a "
    "row has several); how many facts each figure rests on is in the run details."
)


def _cell(stat: Stat | None, interval: tuple[float, float] | None) -> str:
    if stat is None:
        return "—"
    if interval is None:
        return stat.percent()
    return f"{stat.percent()} [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def table_cells(row: ComparisonRow) -> list[str]:
    """The row as text cells: label (``†`` if a run is unfinished), each column (mean, ± sd over
    runs, and the 95% bootstrap interval), number of runs."""
    cells = [_cell(row.cells.get(k), row.intervals.get(k)) for k, _ in COLUMNS]
    mark = "" if all(r.complete for r in row.runs) else " †"
    return [row.label + mark, *cells, str(len(row.runs))]


def comparison_markdown(rows: Sequence[ComparisonRow]) -> str:
    """The comparison table as Markdown (accuracy and forgetting in %, mean ± sd over seeds)."""
    return md_table(TABLE_HEADER, [table_cells(r) for r in rows])


def plot_groups(rows: Sequence[ComparisonRow]) -> list[PlotGroup]:
    """The rows as plot groups; rows of a method that differ only in λ form a sweep."""
    groups = []
    for row in rows:
        rest = {k: v for k, v in row.variant.items() if k != "loss.kl_weight"}
        done = [
            r
            for r in row.runs
            if r.results.get("forgetting") is not None and "d_unknown" in r.results["final"]
        ]
        groups.append(
            PlotGroup(
                label=row.label,
                method=row.method,
                kl_weight=row.kl_weight,
                sweep=f"{row.method}|{variant_text(rest)}" if row.kl_weight is not None else None,
                note=variant_text(row.variant),
                metrics=[r.metrics for r in row.runs],
                forgetting=[float(r.results["forgetting"]) for r in done],
                unknown=[float(r.results["final"]["d_unknown"]) for r in done],
                transitions=[r.transitions for r in row.runs],
            )
        )
    return groups


def _details(rows: Sequence[ComparisonRow]) -> list[list[str]]:
    """One line per run: row, folder, seed, λ, steps, seconds, trainable parameters, facts per
    split, status."""
    out = []
    for row in rows:
        for run in row.runs:
            r = run.results
            trainable, total = r.get("trainable_parameters"), r.get("total_parameters")
            params = "—" if trainable is None else f"{trainable:,}"
            if trainable is not None and total:
                params += f" ({100 * trainable / total:.0f}%)"
            status = "done" if run.complete else "unfinished"
            if r.get("stopped_early_at") is not None:
                status = f"stopped early (step {r['stopped_early_at']})"
            seconds, kl, seed = r.get("seconds"), run.kl_weight, run.seed
            out.append(
                [
                    row.label,
                    str(run.path),
                    "—" if seed is None else str(seed),
                    "—" if kl is None else _value_text(kl),
                    str(r.get("steps", "—")),
                    "—" if seconds is None else f"{seconds:.0f}",
                    params,
                    ", ".join(f"{k} {n}" for k, n in sorted((r.get("n_facts") or {}).items()))
                    or "—",
                    status,
                ]
            )
    return out


_NOTES = [
    "D_known / D_unknown: training facts the model knew / did not know before fine-tuning. "
    "D_held: known facts held out from training; they measure forgetting.",
    "Accuracy: greedy closed-book answer, exact match, after the last training step.",
    "Forgetting: relative decline of D_held accuracy from its peak during training, "
    "(peak − final) / peak.",
    "A row is a method; runs whose settings differ from the method's shipped config (e.g. λ, the "
    "weight of the distillation term) form their own row. Cells are the mean ± sample standard "
    "deviation over the row's runs (seeds) when it has several.",
]
_CAPTIONS = {
    "frontier.png": "Each large point is a row (small points: its runs). Up is more new facts "
    "learned, left is less forgetting; lines join rows that differ only in λ.",
    "learning_curves.png": "Accuracy on each set along training (mean over a row's runs; the "
    "band spans its runs).",
    "transitions.png": "Share of facts by their answer at the first evaluation (the starting "
    "model) and at the last one (mean over a row's runs).",
}
_DETAILS = [
    *("row", "run folder", "seed", "λ", "steps", "seconds", "trainable params"),
    *("facts evaluated", "status"),
]


PAIRED_SPLITS = (("d_unknown", "D_unknown"), ("d_held", "D_held"))
"""The columns of the paired comparison with the reference row."""


def paired_rows(rows: Sequence[ComparisonRow], reference: str = "sft") -> list[list[str]]:
    """Each row's final accuracy minus the ``reference`` method's, paired over the same facts
    (percentage points, 95% bootstrap interval); empty without a finished reference row."""
    ref = next((r for r in rows if r.method == reference and not r.variant), None)
    if ref is None or not all(run.complete for run in ref.runs):
        return []
    out = []
    for row in rows:
        if row is ref or not all(run.complete for run in row.runs):
            continue
        cells = []
        for split, _ in PAIRED_SPLITS:
            found = paired_difference([r.path for r in row.runs], [r.path for r in ref.runs], split)
            if found is None:
                cells.append("—")
                continue
            diff, (low, high) = found
            cells.append(f"{100 * diff:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]")
        if any(c != "—" for c in cells):
            out.append([row.label, *cells])
    return out


def _shared_note(shared: Mapping[str, Any]) -> str:
    return (
        f"Every run here uses {variant_text(shared)} instead of its method's shipped setting "
        "(left out of the row names)."
    )


def _paired_blocks(rows: Sequence[ComparisonRow]) -> list[Block]:
    paired = paired_rows(rows)
    if not paired:
        return []
    header = ["method", *(f"{name} − sft (points)" for _, name in PAIRED_SPLITS)]
    colours = [method_color(r.method) for r in rows if r.label in {p[0] for p in paired}]
    note = (
        "Final accuracy minus sft's, paired over the same facts, with its 95% bootstrap interval: "
        "an interval that excludes 0 is a difference the facts drawn do not explain."
    )
    caption = "Against sft, on the same facts"
    return [("table", header, paired, colours, caption), ("p", note)]


def report_blocks(rows: Sequence[ComparisonRow]) -> list[Block]:
    """The report's content: metric notes, the table, the three figures and the run details."""
    groups = plot_groups(rows)
    colours = [method_color(r.method) for r in rows]
    run_colours = [method_color(row.method) for row in rows for _ in row.runs]
    unfinished = any(not run.complete for row in rows for run in row.runs)
    figures = {
        "frontier.png": frontier_png(groups),
        "learning_curves.png": learning_curves_png(groups),
        "transitions.png": transitions_png(groups),
    }
    titles = ["Learning vs forgetting", "Learning curves", "Fact transitions"]
    return [
        ("h2", "What is measured"),
        ("ul", _NOTES),
        ("h2", "Comparison"),
        ("table", TABLE_HEADER, [table_cells(r) for r in rows], colours),
        ("p", CI_NOTE),
        *_paired_blocks(rows),
        *([("p", UNFINISHED)] if unfinished else []),
        *([("p", _shared_note(rows[0].shared))] if rows and rows[0].shared else []),
        *[
            block
            for title, (name, png) in zip(titles, figures.items(), strict=True)
            for block in (("h2", title), ("img", name, _CAPTIONS[name], png))
        ],
        ("h2", "Runs"),
        ("table", _DETAILS, _details(rows), run_colours),
    ]


def _cell_text(value: Cell) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return " ".join(str(value).split()) if isinstance(value, str) else str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "analysis"


def analysis_blocks(analyses: Sequence[AnalysisData], taken: Iterable[str] = ()) -> list[Block]:
    """One section per analysis: its title, description, tables and figures.

    A figure's image file is named ``<analysis folder>-<file>`` (``drift-drift.png``), made
    unique among the analyses and the names in ``taken``.
    """
    used = set(taken)
    blocks: list[Block] = []
    for analysis in analyses:
        summary, folder = analysis.summary, analysis.path
        blocks += [("h2", summary.title), ("p", summary.description)]
        for table in summary.tables:
            rows = [[_cell_text(c) for c in row] for row in table.rows]
            blocks.append(("table", list(table.columns), rows, None, table.caption))
        prefix = _slug(folder.resolve().name or summary.kind)
        for figure in summary.figures:
            stem = f"{prefix}-{_slug(figure.file.replace('/', '-').removesuffix('.png'))}"
            name, k = f"{stem}.png", 1
            while name in used:
                k += 1
                name = f"{stem}-{k}.png"
            used.add(name)
            blocks.append(("img", name, figure.caption, (folder / figure.file).read_bytes()))
    return blocks


def build_report(
    runs: Sequence[RunData],
    out_html: Path,
    title: str = "factkeep report",
    analyses: Sequence[AnalysisData] = (),
) -> None:
    """Write a self-contained HTML report and its Markdown twin.

    Args:
        runs: the runs to compare (see :func:`load_run`); may be empty when there are analyses.
        out_html: the HTML file; the Markdown twin is written beside it with the suffix ``.md``,
            its images as PNG files in ``<stem>_files/``.
        title: the report's title.
        analyses: analyses shown after the runs' sections (see :func:`load_analysis`).

    Raises:
        ValueError: if ``runs`` and ``analyses`` are both empty.
    """
    if not runs and not analyses:
        raise ValueError("a report needs at least one run or analysis")
    out_html = Path(out_html)
    rows = comparison_rows(runs)
    blocks = report_blocks(rows) if rows else []
    blocks += analysis_blocks(analyses, taken=[b[1] for b in blocks if b[0] == "img"])
    when = datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = []
    if runs:
        methods = len({r.method for r in runs})
        parts.append(f"{len(runs)} runs · {methods} methods · {len(rows)} rows")
    if analyses:
        parts.append(f"{len(analyses)} {'analysis' if len(analyses) == 1 else 'analyses'}")
    meta = " · ".join([*parts, f"generated {when}"])
    files = f"{out_html.stem}_files"
    written = [out_html, out_html.with_suffix(".md")]
    for kind, *args in blocks:
        if kind == "img":
            written.append(out_html.parent / files / args[0])
            atomic_write_bytes(written[-1], args[2])
    atomic_write_text(written[1], markdown_document(blocks, title, meta, files))
    atomic_write_text(written[0], html_document(blocks, title, meta))
    for path in written:
        path.chmod(0o644)
