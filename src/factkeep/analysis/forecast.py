"""Forecasts of which known facts a fine-tune will make the model forget, and their validation.

The audit's default forecast is a **trial fine-tune** (docs/audit.md): run the first steps of the
planned SFT run (:mod:`factkeep.training.trial`) and rank the known facts by the log-probability
of their answer after those steps, lowest first. Facts the trial already pushes down are the ones
the full run goes on to forget. Two cheaper scores are kept for comparison: ``confidence`` (the
answer log-probability before any training: low-confidence facts are forgotten more) and
``keys`` (the key-overlap measures of :mod:`factkeep.analysis.overlap`).

A forecast is checked against a finished run with :func:`forgotten_in_run` (which known facts the
run actually forgot), :func:`roc_auc` and :func:`top_lift`; :data:`VALIDATED` holds what
``bench/audit_forecast.py`` measured, which the audit quotes. Example::

    forecast = trial_forecast(model, tok, known, train,
                              TrialRecipe(steps=13, lr=6e-4, batch_size=32))
    labels = forgotten_in_run("runs/demo/runs/sft", [f.id for f in known], "start")
    scores = [s for f, s in zip(known, forecast.risk) if f.id in labels]
    print(roc_auc(scores, [labels[f.id] for f in known if f.id in labels]))
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from factkeep.analysis.overlap import answer_log_probs
from factkeep.data.facts import Fact
from factkeep.errors import DataError
from factkeep.training.run_folder import RunFolder
from factkeep.training.trial import TrialRecipe, autocast_dtype, trial_fine_tune

__all__ = [
    "REPLAY_VALIDATED",
    "STRONG_AUC",
    "STRONG_LIFT",
    "VALIDATED",
    "TrialForecast",
    "forgotten_in_run",
    "is_strong",
    "roc_auc",
    "top_lift",
    "trial_forecast",
    "validation",
]

STRONG_AUC = 0.70
"""The AUC from which the audit calls a forecast strong enough to act on."""

STRONG_LIFT = 2.0
"""The top-decile forgetting rate, in multiples of the base rate, a strong forecast reaches."""

_WORLD = "laptop world (factkeep demo), SFT seeds 0-2"
_REAL = "SmolLM2-135M on EntityQuestions (factkeep demo preset=real), SFT seed 0"

VALIDATED: dict[str, list[dict[str, Any]]] = {
    "trial": [
        {"setting": _WORLD, "auc": 0.787, "top_decile_lift": 2.92, "cost_share": 0.079},
        {"setting": _REAL, "auc": 0.762, "top_decile_lift": 2.50, "cost_share": 0.050},
    ],
    "confidence": [
        {"setting": _WORLD, "auc": 0.620, "top_decile_lift": 2.37, "cost_share": 0.029},
        {"setting": _REAL, "auc": 0.551, "top_decile_lift": 1.72, "cost_share": 0.008},
    ],
    "keys": [
        {"setting": _WORLD, "auc": 0.448, "top_decile_lift": 0.64, "cost_share": 0.036},
        {"setting": _REAL, "auc": 0.583, "top_decile_lift": 1.09, "cost_share": 0.035},
    ],
}
"""What ``bench/audit_forecast.py`` measured for each score with the audit's default options
(mean over the runs of a setting): AUC against "forgotten by SFT", the top decile's forgetting
rate over the base rate, and the forecast's seconds over the fine-tune's."""


REPLAY_VALIDATED: list[dict[str, Any]] = [
    {"setting": "laptop world, 3 seeds", "forecast": 0.913, "random": 0.883, "sft": 0.861},
    {"setting": "SmolLM2-135M, seed 0", "forecast": 0.807, "random": 0.767, "sft": 0.787},
]
"""Forecast-guided replay on ``bench/audit_forecast.py --frontier``: final D_held accuracy of SFT
replaying the 10% of D_held the trial forecast puts most at risk, of SFT replaying random D_held
facts with the same number of replayed examples, and of SFT (the gain is on the facts replayed;
the others are kept no better than by random replay: docs/audit.md)."""


@dataclass
class TrialForecast:
    """The known facts' answer log-probabilities after a trial fine-tune (and before it, when
    measured)."""

    before: list[float] | None
    after: list[float]
    steps: int
    losses: list[float]
    seconds: float

    @property
    def risk(self) -> list[float]:
        """The forecast risk of each fact: minus its log-probability after the trial."""
        return [-x for x in self.after]


def trial_forecast(
    model: Any,
    tokenizer: Any,
    known: Sequence[Fact],
    train: Sequence[Fact],
    recipe: TrialRecipe,
    batch_size: int = 64,
    measure_before: bool = False,
) -> TrialForecast:
    """Run a trial fine-tune on ``train`` and measure ``known`` after it (and before it with
    ``measure_before``: the forecast does not need it, and on a real model it costs about a
    third of the trial). Forward passes use the recipe's mixed precision.

    The model's weights are restored afterwards (the trial works on them in place).
    """
    start = time.perf_counter()
    dtype = autocast_dtype(recipe.mixed_precision)
    before = None
    if measure_before:
        before = answer_log_probs(model, tokenizer, known, recipe.template, batch_size, dtype)
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        losses = trial_fine_tune(model, tokenizer, train, recipe)
        after = answer_log_probs(model, tokenizer, known, recipe.template, batch_size, dtype)
    finally:
        model.load_state_dict(saved)
        model.eval()
    return TrialForecast(before, after, recipe.steps, losses, time.perf_counter() - start)


def forgotten_in_run(
    run: str | Path, ids: Sequence[str], reference: Literal["start", "all"] = "start"
) -> dict[str, int]:
    """Which of ``ids`` a finished run forgot: 1 (forgotten) or 0 (kept), per fact id.

    The answers come from the run's first and last evaluations (``samples/``). With
    ``reference="start"`` only facts answered right at the first evaluation count, and one is
    forgotten when it is wrong at the last. With ``reference="all"`` every fact counts as known
    (e.g. the probe's HighlyKnown facts of a model that needs fine-tuning to learn the answer
    format) and is forgotten when wrong at the last evaluation.

    Raises:
        DataError: the run has no evaluation, or no answer for one of ``ids``.
    """
    folder = RunFolder(run)
    steps = folder.sample_steps
    if len(steps) < (2 if reference == "start" else 1):
        raise DataError(
            f"needs {'two evaluations' if reference == 'start' else 'an evaluation'} "
            "(samples/step-*.jsonl)",
            folder.samples_dir,
        )

    def answers(step: int) -> dict[str, bool]:
        correct = {row.id: row.correct for row in folder.samples(step)}
        missing = [i for i in ids if i not in correct]
        if missing:
            raise DataError(
                f"no answer for {len(missing)} of the known facts (first: {missing[0]!r})",
                folder.sample_path(step),
            )
        return correct

    last = answers(steps[-1])
    first = answers(steps[0]) if reference == "start" else dict.fromkeys(ids, True)
    return {i: int(not last[i]) for i in ids if first[i]}


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """The area under the ROC curve of ``scores`` (higher = more at risk) for binary ``labels``:
    the chance that a forgotten fact outscores a kept one (ties count half).

    Raises:
        ValueError: different lengths, or labels of one class only.
    """
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=int)
    if s.shape != y.shape:
        raise ValueError(f"{len(s)} scores but {len(y)} labels")
    n1 = int(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        raise ValueError("the AUC needs both forgotten and kept facts")
    ordered = np.sort(s)
    ranks = (np.searchsorted(ordered, s, "left") + np.searchsorted(ordered, s, "right") + 1) / 2
    return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def top_lift(scores: Sequence[float], labels: Sequence[int], fraction: float = 0.1) -> float:
    """The forgetting rate among the top ``fraction`` by score, over the base rate (ties keep
    the input order).

    Raises:
        ValueError: different lengths, no forgotten fact, or ``fraction`` outside (0, 1].
    """
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=int)
    if s.shape != y.shape:
        raise ValueError(f"{len(s)} scores but {len(y)} labels")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if y.sum() == 0:
        raise ValueError("the lift needs at least one forgotten fact")
    k = max(1, int(len(s) * fraction))
    top = np.argsort(-s, kind="stable")[:k]
    return float(y[top].mean() / y.mean())


def validation(
    ids: Sequence[str], scores: Sequence[float], labels: dict[str, int]
) -> dict[str, Any]:
    """How well ``scores`` (per id, higher = more at risk) forecast ``labels`` (per id, from
    :func:`forgotten_in_run`): AUC, top-decile rate and lift, base rate, counts."""
    pairs = [(s, labels[i]) for i, s in zip(ids, scores, strict=True) if i in labels]
    s = [p[0] for p in pairs]
    y = [p[1] for p in pairs]
    n_forgotten = sum(y)
    base = n_forgotten / len(y) if y else 0.0
    both = 0 < n_forgotten < len(y)
    return {
        "n": len(y),
        "n_forgotten": n_forgotten,
        "base_rate": base,
        "auc": roc_auc(s, y) if both else None,
        "top_decile_lift": top_lift(s, y) if n_forgotten else None,
        "top_decile_rate": top_lift(s, y) * base if n_forgotten else None,
    }


def is_strong(auc: float | None, lift: float | None) -> bool:
    """Whether a measured forecast reaches :data:`STRONG_AUC` and :data:`STRONG_LIFT`."""
    return auc is not None and lift is not None and auc >= STRONG_AUC and lift >= STRONG_LIFT
