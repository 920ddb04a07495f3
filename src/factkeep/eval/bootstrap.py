"""95% bootstrap intervals of final accuracy and forgetting, over facts and over seeds.

An accuracy measured on 300 facts moves by a third of a point per fact, and a difference of a few
points between two methods can be noise. Every evaluation along a run writes its per-fact answers
(``samples/step-NNNNNN.jsonl``: ``{"split", "id", "correct", ...}``), so the uncertainty that
comes from *which facts* were drawn can be measured by resampling them: a replicate draws the
split's facts with replacement and recomputes the accuracy at every evaluation, hence the final
accuracy and the forgetting (``(max_t acc(t) − acc(final)) / max_t acc(t)``, docs/method.md
section 5). With several runs of one method (seeds), a replicate also draws the runs with
replacement and averages them (a two-level bootstrap: seeds, then facts shared by the runs), so
the interval covers both sources of variation. The interval is the 2.5th to 97.5th percentile of
``n_boot`` replicates (percentile bootstrap), seeded so that reports are reproducible.

Example::

    intervals = bootstrap_intervals(["runs/demo/runs/sft"])
    intervals["forgetting"]   # (0.082, 0.146)
    intervals["d_held"]       # (0.855, 0.912)
    paired_difference(["runs/sd"], ["runs/sft"], "d_held")   # (0.073, (0.020, 0.123))

Two methods evaluated on the same facts are compared *paired*: a replicate draws the facts once
for both (and each method's runs separately), so the interval of the difference leaves out the
variation that both share (which facts are easy), and is much narrower than the two intervals
side by side suggest.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from factkeep.eval.transitions import read_samples, run_sample_files

__all__ = ["bootstrap_intervals", "correctness_matrix", "paired_difference", "run_matrices"]


def run_matrices(run_dir: str | Path) -> dict[str, tuple[list[str], np.ndarray]]:
    """Every split's per-fact correctness at each evaluation of a run, its sample files read once.

    Returns:
        ``{split: (fact ids, matrix)}``: ids sorted (those of the split's first evaluation), matrix
        ``(evaluations, facts)`` of 0/1 in step order.
    """
    rows: dict[str, list[list[bool]]] = {}
    ids: dict[str, list[str]] = {}
    for _, path in run_sample_files(run_dir):
        by_split: dict[str, dict[str, bool]] = {}
        for (name, fid), ok in read_samples(path).items():
            by_split.setdefault(name, {})[fid] = ok
        for name, answers in by_split.items():
            order = ids.setdefault(name, sorted(answers))
            rows.setdefault(name, []).append([answers.get(fid, False) for fid in order])
    return {name: (ids[name], np.asarray(rows[name], dtype=np.float64)) for name in rows}


def correctness_matrix(run_dir: str | Path, split: str) -> tuple[list[str], np.ndarray]:
    """The per-fact correctness of ``split`` at each evaluation of a run.

    Returns:
        ``(fact ids, matrix)``: ids sorted, matrix ``(evaluations, facts)`` of 0/1 in step order;
        an empty matrix when the run evaluated no fact of ``split``.
    """
    return run_matrices(run_dir).get(split, ([], np.zeros((0, 0))))


def _forgetting(curves: np.ndarray) -> np.ndarray:
    """Forgetting of each column of ``(evaluations, replicates)`` accuracy curves."""
    peak = curves.max(axis=0)
    return np.where(peak > 0, (peak - curves[-1]) / np.where(peak > 0, peak, 1.0), 0.0)


def bootstrap_intervals(
    run_dirs: Sequence[str | Path],
    held: str = "d_held",
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of every split's final accuracy and of the forgetting of
    ``held``, over the runs (when there are several) and their facts.

    Args:
        run_dirs: run folders of one method (e.g. its seeds), each with ``samples/``.
        held: the split whose forgetting is measured.
        n_boot: bootstrap replicates.
        seed: seed of the resampling.
        level: coverage of the interval.

    Returns:
        ``{split: (low, high)}`` of the final accuracy (mean over the runs), and
        ``"forgetting": (low, high)``; empty when the runs have no samples. Facts a split does
        not share across the runs are left out.
    """
    rng = np.random.default_rng(seed)
    tail = 100 * (1 - level) / 2
    out: dict[str, tuple[float, float]] = {}
    per_run = [run_matrices(run) for run in run_dirs]
    splits = sorted({name for found in per_run for name in found})
    picks = rng.integers(len(run_dirs), size=(n_boot, len(run_dirs))) if len(run_dirs) > 1 else None
    for split in splits:
        loaded = [found.get(split, ([], np.zeros((0, 0)))) for found in per_run]
        common = sorted(set.intersection(*(set(ids) for ids, _ in loaded)))
        if not common:
            continue
        matrices = []
        for ids, matrix in loaded:
            position = {fid: i for i, fid in enumerate(ids)}
            matrices.append(matrix[:, [position[fid] for fid in common]])
        facts = rng.integers(len(common), size=(n_boot, len(common)))
        finals = np.zeros((len(matrices), n_boot))
        forgets = np.zeros((len(matrices), n_boot))
        for r, matrix in enumerate(matrices):
            curves = matrix[:, facts].mean(axis=2)  # (evaluations, replicates)
            finals[r], forgets[r] = curves[-1], _forgetting(curves)
        if picks is not None:  # resample the runs too: replicate b averages runs picks[b]
            finals = np.take_along_axis(finals, picks.T, axis=0)
            forgets = np.take_along_axis(forgets, picks.T, axis=0)
        final, forget = finals.mean(axis=0), forgets.mean(axis=0)
        out[split] = (float(np.percentile(final, tail)), float(np.percentile(final, 100 - tail)))
        if split == held:
            low, high = np.percentile(forget, tail), np.percentile(forget, 100 - tail)
            out["forgetting"] = (float(low), float(high))
    return out


def _final_correct(run_dirs: Sequence[str | Path], split: str) -> tuple[list[str], np.ndarray]:
    """The facts of ``split`` every run evaluated, and each run's final 0/1 answers on them."""
    loaded = [correctness_matrix(run, split) for run in run_dirs]
    common = sorted(set.intersection(*(set(ids) for ids, _ in loaded))) if loaded else []
    if not common:
        return [], np.zeros((len(loaded), 0))
    finals = []
    for ids, matrix in loaded:
        position = {fid: i for i, fid in enumerate(ids)}
        finals.append(matrix[-1, [position[fid] for fid in common]])
    return common, np.asarray(finals)


def paired_difference(
    runs_a: Sequence[str | Path],
    runs_b: Sequence[str | Path],
    split: str,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, tuple[float, float]] | None:
    """Final accuracy of ``runs_a`` minus that of ``runs_b`` on ``split``, paired over the facts.

    Returns:
        ``(difference, (low, high))`` over the facts both evaluated (each side the mean over its
        runs), or None when they share no fact of ``split``.
    """
    ids_a, a = _final_correct(runs_a, split)
    ids_b, b = _final_correct(runs_b, split)
    common = sorted(set(ids_a) & set(ids_b))
    if not common:
        return None
    a = a[:, [ids_a.index(fid) for fid in common]]  # (runs, facts)
    b = b[:, [ids_b.index(fid) for fid in common]]
    rng = np.random.default_rng(seed)
    facts = rng.integers(len(common), size=(n_boot, len(common)))
    pick_a = rng.integers(len(a), size=(n_boot, len(a)))
    pick_b = rng.integers(len(b), size=(n_boot, len(b)))
    # replicate r: mean over its runs of each side, each on the same resampled facts
    mean_a = np.stack([a[pick_a[r]][:, facts[r]].mean() for r in range(n_boot)])
    mean_b = np.stack([b[pick_b[r]][:, facts[r]].mean() for r in range(n_boot)])
    diff = mean_a - mean_b
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(diff, tail), np.percentile(diff, 100 - tail)
    return float(a.mean() - b.mean()), (float(low), float(high))
