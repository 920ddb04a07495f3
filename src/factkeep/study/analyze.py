"""``factkeep analyze drift`` / ``analyze overlap``: the read-only side of the mechanism study.

``drift`` measures, for every model each training run saved, how far the held-out entities'
middle-layer hidden states moved from the reference model's (docs/method.md section 6)::

    factkeep analyze drift runs=[runs/sft,runs/sd] facts=runs/split/d_held.jsonl out=runs/an/drift

writes ``drift.json`` (per run: its method and one row per saved model), ``drift.png`` and
``analysis.json`` (its section of ``factkeep report``, see :mod:`factkeep.analysis.summary`).

``overlap`` asks which held-out known facts one run forgot, and whether the interference measures
of :mod:`factkeep.analysis.overlap` (key similarity, token overlap, shared relation or answer)
predict it beyond the confounds (relation, answer frequency, question length, base confidence)::

    factkeep analyze overlap run=runs/sft out=runs/an/overlap

writes ``features.jsonl`` (one row per labelled held fact), ``regression.json``, ``overlap.png``
(forgetting rate by ``max_key_cosine`` quantile bin) and ``analysis.json``. Both commands read and
check every input before writing anything.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from matplotlib.figure import Figure

from factkeep.analysis.overlap import (
    design_matrix,
    forgotten_labels,
    overlap_features,
    pick_evaluation,
    split_correctness,
)
from factkeep.analysis.regression import RegressionResult, logistic_regression
from factkeep.analysis.representations import drift_along_run, read_run_config, run_models
from factkeep.analysis.summary import AnalysisFigure, AnalysisSummary, AnalysisTable, write_summary
from factkeep.config import ConfigError, help_field
from factkeep.data.fact_sets import load_fact_set
from factkeep.data.facts import Fact, read_facts
from factkeep.data.prompts import DEFAULT_TEMPLATE
from factkeep.errors import DataError
from factkeep.eval.plots import figure_png, method_color, style_axes
from factkeep.eval.transitions import run_sample_files
from factkeep.models.loading import load_model_and_tokenizer
from factkeep.rundir import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_jsonl,
    write_run_metadata,
)

__all__ = ["DriftCommandConfig", "OverlapCommandConfig", "run_drift", "run_overlap"]

log = logging.getLogger(__name__)

_DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")


@dataclass
class DriftCommandConfig:
    """Options of ``factkeep analyze drift``."""

    runs: list[str] = help_field([], "Training run folders (required).")
    facts: str = help_field("", "Facts whose keys are measured (required), e.g. a d_held.jsonl.")
    reference: str = help_field("", "Reference model (default: each run's starting model).")
    position: Literal["last", "mean"] = help_field("last", "Last token, or mean over tokens.")
    kind: Literal["subject", "prompt"] = help_field(
        "subject", "Key text: the entity name (subject) or the whole question prompt."
    )
    max_facts: int = help_field(0, "Measure a seeded random subsample of the facts (0 = all).")
    seed: int = help_field(0, "Seed of the subsample.")
    layer: int = help_field(-1, "Hidden-state index (0 = embeddings; -1 = the middle layer).")
    batch_size: int = help_field(64, "Texts per forward pass.")
    dtype: str = help_field("auto", "Model dtype: auto, float32, bfloat16 or float16.")
    device: str = help_field("auto", "auto (CUDA if present), cpu, cuda, cuda:1, ...")
    threads: int = help_field(0, "CPU threads for torch (0 = torch's default).")
    out: str = help_field("runs/analyze/drift", "Output folder.")


@dataclass
class OverlapCommandConfig:
    """Options of ``factkeep analyze overlap``."""

    run: str = help_field("", "A training run folder (required).")
    held: str = help_field("", "Held-out facts (default: d_held.jsonl of the run's data.splits).")
    split: str = help_field("", "The held facts' split in samples/ (default: the file's stem).")
    train: list[str] = help_field(
        [], "Training facts: split names or JSONL paths (default: the run's data.train)."
    )
    reference: str = help_field("", "Model the features use (default: the run's starting model).")
    before: str = help_field(
        "peak", "'Before' evaluation: peak (best held accuracy), start, or a global step."
    )
    after: str = help_field("final", "'After' evaluation: final, or a global step.")
    l2: float = help_field(1e-6, "Ridge penalty of the logistic regression (standardised scale).")
    bins: int = help_field(5, "Quantile bins of max_key_cosine in overlap.png.")
    layer: int = help_field(-1, "Hidden-state index (0 = embeddings; -1 = the middle layer).")
    batch_size: int = help_field(64, "Texts per forward pass.")
    dtype: str = help_field("auto", "Model dtype: auto, float32, bfloat16 or float16.")
    device: str = help_field("auto", "auto (CUDA if present), cpu, cuda, cuda:1, ...")
    threads: int = help_field(0, "CPU threads for torch (0 = torch's default).")
    out: str = help_field("runs/analyze/overlap", "Output folder.")


def _check_common(cfg: DriftCommandConfig | OverlapCommandConfig) -> int | None:
    """Check the options both commands share; returns the layer (None: the middle layer)."""
    if cfg.layer < -1:
        raise ConfigError(f"layer must be >= 0, or -1 for the middle layer, got {cfg.layer}")
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {cfg.batch_size}")
    if cfg.threads < 0:
        raise ConfigError(f"threads must be >= 0, got {cfg.threads}")
    if cfg.dtype not in _DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(_DTYPES)}, got {cfg.dtype!r}")
    return None if cfg.layer == -1 else cfg.layer


def _read_facts_file(path: str, what: str) -> list[Fact]:
    """The facts of a required JSONL file (``what``: its option, named in errors)."""
    if not path:
        raise ConfigError(f"{what}= is required (a facts JSONL file)")
    if not Path(path).is_file():
        raise ConfigError(f"{what}: facts file not found: {path}")
    facts = read_facts(path)
    if not facts:
        raise DataError("no facts in the file", path)
    return facts


def _start_torch(cfg: DriftCommandConfig | OverlapCommandConfig) -> None:
    """Set torch's CPU threads (``threads=``, if set)."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)


def run_drift(cfg: DriftCommandConfig) -> int:
    """Run ``factkeep analyze drift``: returns the exit code."""
    layer = _check_common(cfg)
    if not cfg.runs:
        raise ConfigError("runs= is required (training run folders)")
    if cfg.max_facts < 0:
        raise ConfigError(f"max_facts must be >= 0, got {cfg.max_facts}")
    facts = _read_facts_file(cfg.facts, "facts")
    methods = {}
    for run in cfg.runs:
        methods[run] = str(read_run_config(run).get("method", "custom"))
        if not run_models(run):
            raise ConfigError(f"{run}: the run saved no model (no checkpoint, no finished phase)")
    if 0 < cfg.max_facts < len(facts):
        keep = set(random.Random(cfg.seed).sample(range(len(facts)), cfg.max_facts))
        facts = [f for i, f in enumerate(facts) if i in keep]
    _start_torch(cfg)
    runs = []
    for run in cfg.runs:
        rows = drift_along_run(
            run,
            facts,
            cfg.reference or None,
            layer,
            cfg.position,
            cfg.kind,
            batch_size=cfg.batch_size,
            dtype=cfg.dtype,
            device=cfg.device,
        )
        runs.append({"run": run, "method": methods[run], "rows": rows})
    out = Path(cfg.out)
    write_run_metadata(out, cfg, seed=cfg.seed)
    document = {
        "facts": cfg.facts,
        "n_facts": len(facts),
        "kind": cfg.kind,
        "position": cfg.position,
        "layer": "middle" if layer is None else layer,
        "reference": cfg.reference or "each run's starting model",
        "runs": runs,
    }
    atomic_write_json(out / "drift.json", document)
    atomic_write_bytes(out / "drift.png", _drift_png(runs))
    write_summary(out, _drift_summary(document))
    print(f"\nCosine distance of {cfg.kind} hidden states to the reference ({len(facts)} facts):")
    print(_drift_table(runs))
    print(f"\nFiles in {out}: drift.json, drift.png, analysis.json")
    return 0


def _drift_table(runs: list[dict[str, Any]]) -> str:
    """The plain-text table of the final distances, one row per run."""
    width = max(6, *(len(r["method"]) for r in runs))
    run_width = max(3, *(len(r["run"]) for r in runs))
    lines = [f"{'method':<{width}} {'run':<{run_width}} {'after format':>12} {'final':>8}"]
    lines.append("-" * len(lines[0]))
    for r in runs:
        fmt = [row for row in r["rows"] if row["phase"] == "format"]
        after = f"{fmt[-1]['mean_distance']:.4f}" if fmt else "-"
        final = r["rows"][-1]["mean_distance"]
        lines.append(f"{r['method']:<{width}} {r['run']:<{run_width}} {after:>12} {final:>8.4f}")
    return "\n".join(lines)


def _drift_summary(doc: dict[str, Any]) -> AnalysisSummary:
    """The report section of ``analyze drift`` (``doc``: the content of drift.json)."""
    rows: list[list[Any]] = []
    for r in doc["runs"]:
        fmt = [row["mean_distance"] for row in r["rows"] if row["phase"] == "format"]
        rows.append(
            [r["method"], r["run"], fmt[-1] if fmt else None, r["rows"][-1]["mean_distance"]]
        )
    layer = "middle layer" if doc["layer"] == "middle" else f"layer {doc['layer']}"
    where = f"{layer}, {'last token' if doc['position'] == 'last' else 'mean over tokens'}"
    return AnalysisSummary(
        kind="drift",
        title="Hidden-state drift of held-out entities",
        description=(
            f"Mean cosine distance between the {doc['kind']} hidden states ({where}) of "
            f"{doc['n_facts']} held-out facts in each saved model and in the reference model "
            f"({doc['reference']}). 0 means the keys did not move; higher means the fine-tuning "
            "moved the representations of facts it did not train on."
        ),
        tables=[
            AnalysisTable(
                "Mean cosine distance to the reference (— : the run has no format phase).",
                ["method", "run", "distance after format phase", "final distance"],
                rows,
            )
        ],
        figures=[AnalysisFigure("drift.png", "Mean cosine distance along training, per run.")],
    )


def _figure(width: float, height: float) -> tuple[Any, Any]:
    """A styled figure of ``width`` x ``height`` inches and its axes."""
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.subplots()
    style_axes(ax)
    return fig, ax


def _drift_png(runs: list[dict[str, Any]]) -> bytes:
    """The mean cosine distance along training, one line per run (PNG)."""
    fig, ax = _figure(6.0, 3.6)
    seen: set[str] = set()
    for r in runs:
        steps = [row["step"] for row in r["rows"]]
        values = [row["mean_distance"] for row in r["rows"]]
        label = None if r["method"] in seen else r["method"]
        seen.add(r["method"])
        ax.plot(
            steps,
            values,
            marker="o",
            markersize=3,
            color=method_color(r["method"]),
            linewidth=1.5,
            label=label,
        )
    ax.set_xlabel("training step", fontsize=9)
    ax.set_ylabel("mean cosine distance to reference", fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    return figure_png(fig)


def _overlap_inputs(cfg: OverlapCommandConfig) -> dict[str, Any]:
    """Read and check every input of ``analyze overlap`` (nothing is written)."""
    if not cfg.run:
        raise ConfigError("run= is required (a training run folder)")
    if cfg.bins < 1:
        raise ConfigError(f"bins must be >= 1, got {cfg.bins}")
    if cfg.l2 < 0:
        raise ConfigError(f"l2 must be >= 0, got {cfg.l2}")
    config = read_run_config(cfg.run)
    data = config.get("data") or {}
    splits = str(data.get("splits") or "")
    held_path = cfg.held or (str(Path(splits) / "d_held.jsonl") if splits else "")
    held = _read_facts_file(held_path, "held")
    train_entries = list(cfg.train) or [str(e) for e in data.get("train") or []]
    if not train_entries:
        raise ConfigError("train= is required: the run's config names no training sets")
    train = [fact for entry in train_entries for fact in load_fact_set(entry, splits)]
    if not train:
        raise ConfigError(f"no training facts in {train_entries}")
    split = cfg.split or Path(held_path).stem
    files = run_sample_files(cfg.run)
    if not files:
        raise ConfigError(f"{cfg.run}: no evaluations (samples/step-*.jsonl)")
    evals: dict[int, dict[str, bool]] = {}
    for step, path in files:
        evals[step], present = split_correctness(path, split)
        if not evals[step]:
            raise ConfigError(f"{path}: no facts of split '{split}' (splits: {sorted(present)})")
    if not {f.id for f in held} & set(evals[files[0][0]]):
        raise ConfigError(f"no fact of {held_path} is in split '{split}' of {cfg.run}/samples")
    before = pick_evaluation(cfg.before, "before", evals)
    after = pick_evaluation(cfg.after, "after", evals)
    if before >= after:
        raise ConfigError(f"the 'before' evaluation (step {before}) must precede 'after' ({after})")
    return {
        "held": held,
        "held_path": held_path,
        "train": train,
        "train_entries": train_entries,
        "split": split,
        "before": before,
        "after": after,
        "evals": evals,
        "reference": cfg.reference or str(config["model"]),
        "template": str(data.get("template") or DEFAULT_TEMPLATE),
    }


def _labelled_held(inp: dict[str, Any]) -> tuple[dict[str, int], list[Fact]]:
    """The forgotten labels (1: right before, wrong after) and the held facts that have one.

    Raises:
        DataError: no held fact is right at the 'before' evaluation.
    """
    before, after = inp["evals"][inp["before"]], inp["evals"][inp["after"]]
    labels = forgotten_labels(before, after)
    held = [f for f in inp["held"] if f.id in labels]
    log.info(
        "%d of %d held facts right at step %d; %d of them wrong at step %d",
        len(held),
        len(inp["held"]),
        inp["before"],
        sum(labels.get(f.id, 0) for f in held),
        inp["after"],
    )
    if not held:
        raise DataError(
            f"no held fact of split '{inp['split']}' is right at step {inp['before']}: "
            "nothing can be forgotten",
            inp["held_path"],
        )
    return labels, held


def _labelled_features(
    cfg: OverlapCommandConfig,
    inp: dict[str, Any],
    held: list[Fact],
    labels: dict[str, int],
    layer: int | None,
) -> list[dict[str, Any]]:
    """Each labelled held fact's interference measures and confounds, with ``forgotten``."""
    model, tokenizer = load_model_and_tokenizer(
        inp["reference"], dtype=cfg.dtype, device=cfg.device
    )
    rows = overlap_features(
        model, tokenizer, held, inp["train"], layer, inp["template"], cfg.batch_size
    )
    for row in rows:
        row["forgotten"] = labels[row["id"]]
    return rows


def _fit(
    rows: list[dict[str, Any]], y: np.ndarray, l2: float
) -> tuple[RegressionResult | None, str | None]:
    """The logistic regression of ``y`` on the measures, or None and why it was skipped."""
    if 0 < y.sum() < len(y):
        X, names = design_matrix(rows)
        return logistic_regression(X, y, names, l2=l2), None
    skipped = "every labelled fact has the same outcome: no regression"
    log.warning(skipped)
    return None, skipped


def _regression_document(
    cfg: OverlapCommandConfig,
    inp: dict[str, Any],
    rows: list[dict[str, Any]],
    y: np.ndarray,
    layer: int | None,
    bins: list[dict[str, Any]],
    result: RegressionResult | None,
    skipped: str | None,
) -> dict[str, Any]:
    """The content of regression.json."""
    return {
        "run": cfg.run,
        "held": inp["held_path"],
        "split": inp["split"],
        "train": inp["train_entries"],
        "n_train": len(inp["train"]),
        "reference": inp["reference"],
        "layer": "middle" if layer is None else layer,
        "before_step": inp["before"],
        "after_step": inp["after"],
        "n_held": len(inp["held"]),
        "n_labelled": len(rows),
        "relations": sorted({str(row["relation"]) for row in rows}),
        "n_forgotten": int(y.sum()),
        "forgetting_rate": float(y.mean()),
        "bins": bins,
        "regression": result.to_dict() if result else None,
        "skipped": skipped,
    }


def _print_overlap(
    out: Path,
    inp: dict[str, Any],
    y: np.ndarray,
    result: RegressionResult | None,
    skipped: str | None,
) -> None:
    """Print the forgetting rate, the regression table (or why there is none) and the files."""
    print(
        f"\n{int(y.sum())} of {len(y)} held facts right at step {inp['before']} are wrong at "
        f"step {inp['after']} ({100 * y.mean():.1f}%)."
    )
    if result is not None:
        print("\nLogistic regression of forgotten (log-odds):")
        print(result.format_table())
    else:
        print(skipped)
    print(f"\nFiles in {out}: features.jsonl, regression.json, overlap.png, analysis.json")


def run_overlap(cfg: OverlapCommandConfig) -> int:
    """Run ``factkeep analyze overlap``: returns the exit code."""
    layer = _check_common(cfg)
    inp = _overlap_inputs(cfg)
    labels, held = _labelled_held(inp)
    _start_torch(cfg)
    rows = _labelled_features(cfg, inp, held, labels, layer)
    y = np.array([row["forgotten"] for row in rows], dtype=np.float64)
    result, skipped = _fit(rows, y, cfg.l2)
    out = Path(cfg.out)
    write_run_metadata(out, cfg)
    bins = _forgetting_bins(rows, cfg.bins)
    atomic_write_jsonl(out / "features.jsonl", rows)
    document = _regression_document(cfg, inp, rows, y, layer, bins, result, skipped)
    atomic_write_json(out / "regression.json", document)
    atomic_write_bytes(out / "overlap.png", _overlap_png(bins, float(y.mean())))
    write_summary(out, _overlap_summary(cfg.run, inp, bins, result, y))
    _print_overlap(out, inp, y, result, skipped)
    return 0


def _overlap_summary(
    run: str,
    inp: dict[str, Any],
    bins: list[dict[str, Any]],
    result: RegressionResult | None,
    y: np.ndarray,
) -> AnalysisSummary:
    """The report section of ``analyze overlap``."""
    tables = []
    if result is not None:
        coefs: list[list[Any]] = [
            [c.name, c.estimate, f"[{c.ci_low:.3g}, {c.ci_high:.3g}]", c.p_value]
            for c in result.coefficients
        ]
        tables.append(
            AnalysisTable(
                f"Logistic regression of forgotten (log-odds per unit; n = {result.n}, "
                f"{result.n_positive} forgotten).",
                ["term", "estimate", "95% CI", "p"],
                coefs,
            )
        )
    rates = [
        [f"{b['low']:.3f}–{b['high']:.3f}", b["n"], _percent(b["forgetting_rate"])] for b in bins
    ]
    rates.append(["all", len(y), _percent(float(y.mean()))])
    tables.append(
        AnalysisTable(
            "Forgetting rate by max key cosine (quantile bins).",
            ["max key cosine", "facts", "forgotten (%)"],
            rates,
        )
    )
    regression = (
        "A logistic regression asks whether the interference measures (key similarity, token "
        "overlap, shared relation or answer) predict it beyond the confounds (relation, answer "
        "frequency, question length, base confidence): a positive estimate whose CI excludes 0 "
        "means more forgetting."
        if result is not None
        else "Every labelled fact has the same outcome, so no regression was fitted."
    )
    return AnalysisSummary(
        kind="overlap",
        title="What predicts forgetting: interference with the training facts",
        description=(
            f"A held-out fact of {run} right at step {inp['before']} counts as forgotten if it "
            f"is wrong at step {inp['after']} ({int(y.sum())} of {len(y)} facts). " + regression
        ),
        tables=tables,
        figures=[
            AnalysisFigure(
                "overlap.png",
                "Forgetting rate by quantile bin of the largest key cosine similarity to a "
                "training subject; the dashed line is the rate over all facts.",
            )
        ],
    )


def _percent(rate: float | None) -> float | None:
    """A rate in percent, rounded to 0.1 (None stays None)."""
    return None if rate is None else round(100 * rate, 1)


def _forgetting_bins(rows: list[dict[str, Any]], n_bins: int) -> list[dict[str, Any]]:
    """Forgetting rate per quantile bin of ``max_key_cosine`` (tied edges merge bins)."""
    values = np.array([row["max_key_cosine"] for row in rows], dtype=np.float64)
    edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, n_bins + 1)))
    index = np.searchsorted(edges[1:-1], values, side="right")
    out = []
    for b in range(max(1, len(edges) - 1)):
        members = [row["forgotten"] for row, i in zip(rows, index, strict=True) if i == b]
        out.append(
            {
                "low": float(edges[b]),
                "high": float(edges[min(b + 1, len(edges) - 1)]),
                "n": len(members),
                "forgetting_rate": sum(members) / len(members) if members else None,
            }
        )
    return out


def _overlap_png(bins: list[dict[str, Any]], overall: float) -> bytes:
    """The forgetting rate per bin, with the overall rate as a dashed line (PNG)."""
    fig, ax = _figure(6.0, 3.4)
    rates = [100 * (b["forgetting_rate"] or 0.0) for b in bins]
    ax.bar(range(len(bins)), rates, color="#e15759", width=0.7)
    ax.axhline(100 * overall, color="#555555", linestyle="--", linewidth=1, label="all facts")
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    for i, (b, rate) in enumerate(zip(bins, rates, strict=True)):
        ax.annotate(
            f"n={b['n']}",
            (i, rate),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            fontsize=8,
        )
    ax.set_xticks(range(len(bins)), [f"{b['low']:.2f}–{b['high']:.2f}" for b in bins], fontsize=8)
    ax.set_xlabel("max key cosine to the training subjects (quantile bins)", fontsize=9)
    ax.set_ylabel("forgotten (%)", fontsize=9)
    ax.set_ylim(0, 110)
    return figure_png(fig)
