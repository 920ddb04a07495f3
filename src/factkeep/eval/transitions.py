"""Fact transitions between two evaluations of a run: what was forgotten, what was learned.

Every evaluation along training writes the per-fact answers to ``samples/step-NNNNNN.jsonl``
(``{"split", "id", "prediction", "correct"}`` per fact). Comparing two of them classifies each
fact present in both:

- ``known_to_forgotten``: right before, wrong after;
- ``unknown_to_learned``: wrong before, right after;
- ``stable_right`` / ``stable_wrong``: the same answer correctness at both evaluations.

Example::

    counts = run_transitions("runs/exp/sft")  # first vs last evaluation
    counts["d_held"]["known_to_forgotten"]
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "TRANSITIONS",
    "read_samples",
    "run_sample_files",
    "run_transitions",
    "transition_counts",
]

TRANSITIONS = ("stable_right", "known_to_forgotten", "unknown_to_learned", "stable_wrong")
"""The four transition kinds, in display order."""

_STEP_FILE = re.compile(r"^step-(\d+)\.jsonl$")


def read_samples(path: str | Path) -> dict[tuple[str, str], bool]:
    """Read one samples file.

    Args:
        path: a ``samples/step-NNNNNN.jsonl`` file.

    Returns:
        ``(split, id) -> correct`` for every fact in the file.
    """
    out: dict[tuple[str, str], bool] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            out[(str(row["split"]), str(row["id"]))] = bool(row["correct"])
    return out


def transition_counts(
    before: Mapping[tuple[str, str], bool], after: Mapping[tuple[str, str], bool]
) -> dict[str, dict[str, int]]:
    """Count the transitions of every fact present in both evaluations, per split.

    Args:
        before: ``(split, id) -> correct`` at the earlier evaluation.
        after: the same at the later evaluation.

    Returns:
        ``{split: {kind: count}}`` with the four kinds of :data:`TRANSITIONS` (zeros included),
        splits sorted by name.
    """
    counts: dict[str, dict[str, int]] = {}
    for key in sorted(before.keys() & after.keys()):
        was, now = before[key], after[key]
        if was and now:
            kind = "stable_right"
        elif was:
            kind = "known_to_forgotten"
        elif now:
            kind = "unknown_to_learned"
        else:
            kind = "stable_wrong"
        split_counts = counts.setdefault(key[0], dict.fromkeys(TRANSITIONS, 0))
        split_counts[kind] += 1
    return counts


def run_sample_files(run_dir: str | Path) -> list[tuple[int, Path]]:
    """The samples files of a run folder as ``(step, path)``, sorted by step."""
    folder = Path(run_dir) / "samples"
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _STEP_FILE.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def run_transitions(
    run_dir: str | Path, start_step: int | None = None, end_step: int | None = None
) -> dict[str, dict[str, int]]:
    """Transition counts of a run between two of its evaluations.

    Args:
        run_dir: a training run folder (with ``samples/``).
        start_step: the earlier evaluation's global step (default: the first evaluation).
        end_step: the later evaluation's global step (default: the last evaluation).

    Returns:
        ``{split: {kind: count}}`` as :func:`transition_counts`; empty when the run has no
        samples files.

    Raises:
        FileNotFoundError: if no evaluation was written at a requested step.
    """
    files = run_sample_files(run_dir)
    if not files:
        return {}
    by_step = dict(files)

    def pick(step: int | None, default: Path) -> Path:
        if step is None:
            return default
        if step not in by_step:
            steps = ", ".join(str(s) for s, _ in files)
            raise FileNotFoundError(f"{run_dir}: no evaluation at step {step} (steps: {steps})")
        return by_step[step]

    first = pick(start_step, files[0][1])
    last = pick(end_step, files[-1][1])
    return transition_counts(read_samples(first), read_samples(last))
