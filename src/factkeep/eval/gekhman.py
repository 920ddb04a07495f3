"""Gekhman et al.'s linear view of forgetting: test accuracy vs the fitted Known / Unknown examples.

Gekhman et al. (2024, "Does Fine-Tuning LLMs on New Knowledge Encourage Hallucinations?") model a
fine-tuned model's test accuracy as linear in how much of its fine-tuning set ``D`` it fits::

    test_acc ≈ β0 + β_kn · F_kn + β_unk · F_unk
    F_kn  = N_kn  / |D|     N_kn:  Known examples of D the model answers correctly
    F_unk = N_unk / |D|     N_unk: Unknown examples of D the model answers correctly

Here ``D = D_known ∪ D_unknown`` and the test set is ``D_held``. Each evaluation row of a training
run's ``metrics.jsonl`` (``{"step", "acc": {split: fraction}, "n": {split: count}}``) gives one
point: ``N = round(acc · n)`` per split and ``|D| = n[d_known] + n[d_unknown]`` (the evaluated
facts; with ``eval.max_facts`` these are subsamples and the fractions are estimates). Points of
several runs (methods, seeds, durations) may be pooled before fitting.

Units: ``F_kn`` and ``F_unk`` are fractions in [0, 1]. ``test_acc`` is a fraction in [0, 1] by
default, so ``β`` is in accuracy (fraction) per unit fitted fraction; with ``percent=True`` the
test accuracy is in percent and ``β`` in percentage points per unit fraction, the units of the
paper. The paper reports, in-distribution (EntityQuestions test relations), β_kn = 7.3 and
β_unk = −8.3 (R² = 0.86) in those units: fitting all of ``D`` with Known examples adds about 7
points of test accuracy, fitting all of it with Unknown examples removes about 8. In fractions
these are 0.073 and −0.083.

Example::

    points = fitted_fractions("runs/exp/sft") + fitted_fractions("runs/exp/self_distill")
    fit = linear_fit(points, percent=True)
    fit["beta_kn"], fit["beta_unk"], fit["r2"]

From a shell (prints the points and the fit, in percent)::

    python -m factkeep.eval.gekhman runs/exp/sft runs/exp/self_distill
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from factkeep.errors import DataError
from factkeep.training.run_folder import RunFolder, read_metrics

__all__ = ["fitted_fractions", "linear_fit", "main"]

KNOWN, UNKNOWN, TEST = "d_known", "d_unknown", "d_held"


def fitted_fractions(
    run_dir: str | Path, known: str = KNOWN, unknown: str = UNKNOWN, test: str = TEST
) -> list[dict[str, Any]]:
    """The fitted-Known / fitted-Unknown fractions and test accuracy at each evaluation of a run.

    Args:
        run_dir: a training run folder (or its ``metrics.jsonl``).
        known: the split of Known training facts.
        unknown: the split of Unknown training facts.
        test: the held-out test split.

    Returns:
        One point per evaluation that measured all three splits, in file order:
        ``{"run", "phase", "step", "fitted_known", "fitted_unknown", "test_acc", "n_known",
        "n_unknown", "n_test"}`` (fractions in [0, 1]).

    Raises:
        DataError: no ``metrics.jsonl``, an unreadable row (naming its line), or no evaluation of
            the three splits.
    """
    path = Path(run_dir)
    if path.is_dir():
        path = RunFolder(path).metrics_path
    if not path.is_file():
        raise DataError("no metrics.jsonl here (is it a training run folder?)", path)
    points: list[dict[str, Any]] = []
    for line, row in enumerate(read_metrics(path), start=1):
        acc, n = row.get("acc", {}), row.get("n", {})
        if not all(s in acc and s in n for s in (known, unknown, test)):
            continue
        try:
            n_kn, n_unk = int(n[known]), int(n[unknown])
            correct_kn = round(float(acc[known]) * n_kn)
            correct_unk = round(float(acc[unknown]) * n_unk)
            point = {
                "run": str(path.parent),
                "phase": row.get("phase"),
                "step": int(row["step"]),
                "test_acc": float(acc[test]),
                "n_known": n_kn,
                "n_unknown": n_unk,
                "n_test": int(n[test]),
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"bad metrics row: {exc!r}", path, line) from None
        total = n_kn + n_unk
        if total <= 0:
            continue
        point["fitted_known"] = correct_kn / total
        point["fitted_unknown"] = correct_unk / total
        points.append(point)
    if not points:
        raise DataError(f"no evaluation of {known}, {unknown} and {test} together", path)
    return points


def linear_fit(points: Sequence[Mapping[str, Any]], percent: bool = False) -> dict[str, Any]:
    """Least-squares fit of ``test_acc ≈ β0 + β_kn·F_kn + β_unk·F_unk`` over the points.

    Args:
        points: rows with ``fitted_known``, ``fitted_unknown`` and ``test_acc`` (fractions), e.g.
            from :func:`fitted_fractions` of one or several runs.
        percent: express test accuracy in percent (the paper's units) instead of a fraction.

    Returns:
        ``{"beta0", "beta_kn", "beta_unk", "r2", "n_points", "units"}``; ``units`` is
        ``"percent"`` or ``"fraction"`` (of test accuracy, per unit fitted fraction); ``r2`` is
        None when the test accuracy is the same at every point (R² is undefined then).

    Raises:
        ValueError: fewer than 3 points, or a singular design (the two fractions are constant or
            proportional to each other, so their effects cannot be told apart).
    """
    if len(points) < 3:
        raise ValueError(
            f"a fit of 3 coefficients needs at least 3 points, got {len(points)}; "
            "pool more evaluations or runs"
        )
    fk = np.array([float(p["fitted_known"]) for p in points])
    fu = np.array([float(p["fitted_unknown"]) for p in points])
    y = np.array([float(p["test_acc"]) for p in points]) * (100.0 if percent else 1.0)
    design = np.column_stack([np.ones_like(fk), fk, fu])
    if np.linalg.matrix_rank(design) < 3:
        raise ValueError(
            "singular design: the fitted-Known and fitted-Unknown fractions are constant or "
            "collinear across the points, so β_kn and β_unk cannot be separated"
        )
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = float(np.sum((y - design @ coef) ** 2))
    total = float(np.sum((y - y.mean()) ** 2))
    return {
        "beta0": float(coef[0]),
        "beta_kn": float(coef[1]),
        "beta_unk": float(coef[2]),
        "r2": 1.0 - residual / total if total > 0 else None,
        "n_points": len(points),
        "units": "percent" if percent else "fraction",
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Print the points of the given run folders and the linear fit (in percent)."""
    runs = list(sys.argv[1:] if argv is None else argv)
    if not runs or runs[0] in ("-h", "--help"):
        print("usage: python -m factkeep.eval.gekhman RUN_DIR [RUN_DIR ...]")
        return 0 if runs else 2
    try:
        points = [p for run in runs for p in fitted_fractions(run)]
        fit = linear_fit(points, percent=True)
    except (DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{'run':<32} {'step':>6} {'F_kn':>7} {'F_unk':>7} {'test acc':>9}")
    for p in points:
        print(
            f"{p['run'][-32:]:<32} {p['step']:>6} {p['fitted_known']:>7.3f} "
            f"{p['fitted_unknown']:>7.3f} {p['test_acc']:>9.3f}"
        )
    r2 = "undefined" if fit["r2"] is None else f"{fit['r2']:.3f}"

    def term(beta: float, name: str) -> str:
        return f"{'-' if beta < 0 else '+'} {abs(beta):.2f}·{name}"

    print(
        f"\ntest acc (%) = {fit['beta0']:.2f} {term(fit['beta_kn'], 'F_kn')} "
        f"{term(fit['beta_unk'], 'F_unk')}   (R² {r2}, {fit['n_points']} points)"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
