"""``factkeep train``: fine-tune with a method config and summarise what was learned and forgotten.

Runs :func:`factkeep.training.run.train`, then writes ``results.json`` (final / peak / starting
accuracy per evaluation set, forgetting of D_held, parameters, time) and prints a summary.

Example::

    factkeep train --config self_distill model=runs/world/model \\
        data.splits=runs/split out=runs/self_distill
"""

from __future__ import annotations

import logging
from typing import Any

from factkeep.eval.bootstrap import bootstrap_intervals, run_matrices
from factkeep.rundir import atomic_write_json
from factkeep.training.config import TrainCommandConfig
from factkeep.training.run import TrainResult, is_main_process, train
from factkeep.training.summary import summarize_run

__all__ = ["format_summary", "run_train", "train_job", "train_summary"]

log = logging.getLogger(__name__)


def train_summary(cfg: TrainCommandConfig, result: TrainResult) -> dict[str, Any]:
    """The ``results.json`` of a training run."""
    summary = summarize_run(result.metrics)
    intervals = bootstrap_intervals([result.out])
    evaluated = run_matrices(result.out)
    return {
        "method": cfg.method,
        "model": cfg.model,
        "seed": cfg.seed,
        **summary,
        "ci95": {name: list(bounds) for name, bounds in intervals.items()},
        "n_facts": {
            name: len(evaluated[name][0]) for name in summary["final"] if name in evaluated
        },
        "trainable_parameters": result.trainable_parameters,
        "total_parameters": result.total_parameters,
        "teacher_forwards": result.teacher_forwards,
        "stopped_early_at": result.stopped_early_at,
        "phases": result.phases,
        "seconds": result.seconds,
        "cost_seconds": result.cost_seconds,
        "model_dir": str(result.model_dir),
    }


def format_summary(results: dict[str, Any]) -> str:
    """A short text table: start / peak / final accuracy per set, then forgetting."""
    lines = [f"{'set':<12}{'start':>8}{'peak':>8}{'final':>8}"]
    for name, final in results["final"].items():
        lines.append(
            f"{name:<12}{results['start'][name]:>8.3f}{results['peak'][name]:>8.3f}{final:>8.3f}"
        )
    if results["forgetting"] is not None:
        lines.append(
            f"forgetting of d_held (relative decline from peak): {results['forgetting']:.1%}"
            + _interval(results.get("ci95", {}).get("forgetting"))
        )
    return "\n".join(lines)


def _interval(bounds: list[float] | None) -> str:
    """`` (95% CI 8.2-14.6%)``, or nothing without bounds."""
    if not bounds:
        return ""
    return f" (95% CI {100 * bounds[0]:.1f}-{100 * bounds[1]:.1f}%)"


def train_job(cfg: TrainCommandConfig) -> tuple[TrainResult, dict[str, Any] | None]:
    """Train one run and write its ``results.json``: what ``factkeep train``, each run of
    ``factkeep demo`` and each trial of ``factkeep sweep`` do.

    Returns:
        The run's result and its summary (``None`` in the processes of a DDP run that do not
        write files).
    """
    result = train(cfg)
    if not is_main_process():  # under DDP, one process writes the summary
        return result, None
    summary = train_summary(cfg, result)
    atomic_write_json(result.out / "results.json", summary)
    return result, summary


def run_train(cfg: TrainCommandConfig) -> int:
    """Run ``factkeep train``: returns the exit code."""
    result, results = train_job(cfg)
    if results is None:
        return 0
    print(f"\n{cfg.method}: {results['steps']} steps in {result.seconds:.0f} s")
    print(format_summary(results))
    print(f"Model in {result.model_dir}; metrics in {result.out / 'metrics.jsonl'}")
    return 0
