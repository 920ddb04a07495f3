"""Where a training run's time goes: loading, optimiser steps, teacher, evaluation, checkpoints.

A :class:`CostMeter` adds up wall-clock seconds by category while a run trains; ``results.json``
keeps them as ``cost_seconds``::

    {"load": 21.3,            # the model, the teacher and the facts
     "teacher_cache": 14.0,   # building the cached top-k teacher (teacher.cache_top_k)
     "steps": 702.5,          # optimiser steps (student forward/backward, loss terms, update),
                              #   teacher forwards excluded
     "teacher": 0.0,          # the teacher's forwards during the steps
     "evaluation": 141.9,     # answering the evaluation sets along training
     "checkpoints": 9.1,      # the Trainer's checkpoints (model + optimiser state)
     "save": 2.0}             # the phase-end model folders

``steps`` is the training loop's time minus everything measured inside it (evaluation,
checkpoints, teacher forwards), so the categories add up to the run's time up to the setup they
leave out. On a GPU the teacher's time is taken after a ``torch.cuda.synchronize`` (its kernels
run asynchronously otherwise); that sync costs the step a little.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from transformers import TrainerCallback

__all__ = ["COST_CATEGORIES", "CostCallback", "CostMeter"]

COST_CATEGORIES = (
    "load",
    "teacher_cache",
    "steps",
    "teacher",
    "evaluation",
    "checkpoints",
    "save",
)
"""The categories of :class:`CostMeter`, in the order reports show them."""


class CostMeter:
    """Seconds per category (see the module docstring)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = dict.fromkeys(COST_CATEGORIES, 0.0)

    def add(self, category: str, seconds: float) -> None:
        """Add ``seconds`` to ``category`` (one of :data:`COST_CATEGORIES`)."""
        if category not in self.seconds:
            raise KeyError(f"unknown cost category '{category}'; one of {COST_CATEGORIES}")
        self.seconds[category] += seconds

    @contextmanager
    def measure(self, category: str) -> Iterator[None]:
        """Add the time spent in the ``with`` block to ``category``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(category, time.perf_counter() - start)

    def training_loop(self, seconds: float, inside: dict[str, float]) -> None:
        """Book a ``Trainer.train`` call of ``seconds``: what the other categories measured in it
        (``inside``: their totals before the call) is taken out, the rest is ``steps``."""
        measured = sum(self.seconds[k] - inside.get(k, 0.0) for k in self.seconds if k != "steps")
        self.add("steps", max(0.0, seconds - measured))

    def as_dict(self) -> dict[str, float]:
        """The totals, rounded to the millisecond, in :data:`COST_CATEGORIES` order."""
        return {k: round(v, 3) for k, v in self.seconds.items()}


class CostCallback(TrainerCallback):
    """Books the Trainer's checkpoint writes.

    The Trainer saves right after ``on_step_end`` / ``on_epoch_end`` and then calls ``on_save``;
    registered after the evaluation callback, this one marks the time at the end of the step or
    epoch and books the interval up to ``on_save`` (logging included, which is tiny).
    """

    def __init__(self, meter: CostMeter) -> None:
        self.meter = meter
        self.mark: float | None = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Mark the end of a step."""
        self.mark = time.perf_counter()
        return control

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Mark the end of an epoch (its evaluation has run by now)."""
        self.mark = time.perf_counter()
        return control

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Book the checkpoint just written."""
        if self.mark is not None:
            self.meter.add("checkpoints", time.perf_counter() - self.mark)
            self.mark = None
        return control
