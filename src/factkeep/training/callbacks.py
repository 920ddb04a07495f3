"""Trainer callbacks: accuracy on the splits along training, early stopping, EMA teacher.

:class:`SplitEvalCallback` answers every evaluation set greedily (``Q: ...\\nA:``, exact match)
before training, every ``every_steps`` optimiser steps and/or at the end of every epoch (or every
``every_epochs``-th), and at the end.
Each evaluation appends one row to ``metrics.jsonl``::

    {"phase": "main", "step": 120, "phase_step": 60, "epoch": 3.0,
     "acc": {"d_known": 1.0, "d_unknown": 0.41, "d_held": 0.93}, "n": {"d_known": 250, ...}}

(``step`` counts optimiser steps over all phases) and writes the per-fact answers to
``samples/step-000120.jsonl`` (``{"split", "id", "prediction", "correct"}`` per fact), from which
fact transitions between any two evaluations are computed. With a ``dev`` set and
``patience > 0`` it also stops training once dev accuracy has not improved for ``patience``
evaluations.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from factkeep.data.facts import Fact
from factkeep.data.prompts import DEFAULT_TEMPLATE
from factkeep.methods.teacher import Teacher
from factkeep.probing.accuracy import accuracy, answer_facts
from factkeep.rundir import atomic_write_jsonl
from factkeep.training.costs import CostMeter

__all__ = ["EMACallback", "SplitEvalCallback", "read_metrics", "trim_metrics"]

log = logging.getLogger(__name__)

EMA_TEACHER_DIR = "ema_teacher"
"""Sub-folder of a checkpoint holding the EMA teacher's weights."""


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (empty if the file does not exist)."""
    p = Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line]


def trim_metrics(path: str | Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Rewrite ``metrics.jsonl`` with only the rows ``keep`` accepts (used when resuming)."""
    rows = read_metrics(path)
    kept = [r for r in rows if keep(r)]
    if len(kept) != len(rows):
        atomic_write_jsonl(path, kept)


class SplitEvalCallback(TrainerCallback):
    """Evaluate named fact sets along training (see the module docstring)."""

    def __init__(
        self,
        tokenizer: Any,
        eval_sets: Mapping[str, Sequence[Fact]],
        out_dir: str | Path,
        phase: str,
        step_offset: int = 0,
        every_steps: int = 0,
        each_epoch: bool = True,
        every_epochs: int = 1,
        at_start: bool = False,
        template: str = DEFAULT_TEMPLATE,
        batch_size: int = 256,
        max_new_tokens: int = 16,
        patience: int = 0,
        min_delta: float = 0.0,
        meter: CostMeter | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.eval_sets = {k: list(v) for k, v in eval_sets.items()}
        self.out_dir = Path(out_dir)
        self.phase = phase
        self.step_offset = step_offset
        self.every_steps = every_steps
        self.each_epoch = each_epoch
        self.every_epochs = max(1, every_epochs)
        self.at_start = at_start
        self.template = template
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.patience = patience
        self.min_delta = min_delta
        self.meter = meter
        self.best_dev = float("-inf")
        self.bad_evals = 0
        self.last_step = -1
        self.stopped_early_at: int | None = None

    def evaluate(self, model: Any, phase_step: int, epoch: float) -> dict[str, Any]:
        """Answer every set, append a metrics row, write the samples; returns the row."""
        step = self.step_offset + phase_step
        row: dict[str, Any] = {
            "phase": self.phase,
            "step": step,
            "phase_step": phase_step,
            "epoch": round(float(epoch), 4),
            "acc": {},
            "n": {},
        }
        samples: list[dict[str, Any]] = []
        for name, facts in self.eval_sets.items():
            answers = answer_facts(
                model,
                self.tokenizer,
                facts,
                template=self.template,
                batch_size=self.batch_size,
                max_new_tokens=self.max_new_tokens,
            )
            row["acc"][name] = round(accuracy(answers), 6)
            row["n"][name] = len(answers)
            samples.extend({"split": name, **s.to_dict()} for s in answers)
        atomic_write_jsonl(self.out_dir / "samples" / f"step-{step:06d}.jsonl", samples)
        with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        self.last_step = phase_step
        accs = ", ".join(f"{k} {v:.3f}" for k, v in row["acc"].items())
        log.info("[%s] step %d (epoch %.2f): %s", self.phase, step, epoch, accs)
        return row

    def restore(self, rows: Sequence[dict[str, Any]]) -> None:
        """Replay the early-stopping bookkeeping over this phase's rows of a resumed run."""
        for row in rows:
            self._maybe_stop(row, None)

    def _maybe_stop(self, row: dict[str, Any], control: Any) -> None:
        if self.patience <= 0 or "dev" not in row["acc"]:
            return
        dev = row["acc"]["dev"]
        if dev > self.best_dev + self.min_delta:
            self.best_dev, self.bad_evals = dev, 0
            return
        self.bad_evals += 1
        if self.bad_evals >= self.patience:
            self.stopped_early_at = row["step"]
            log.info(
                "early stop at step %d: dev accuracy %.3f, no gain over %.3f in %d evaluations",
                row["step"],
                dev,
                self.best_dev,
                self.patience,
            )
            if control is not None:
                control.should_training_stop = True

    def _run(self, state: Any, control: Any, model: Any) -> None:
        if state.global_step == self.last_step:
            return
        if state.is_world_process_zero:  # under DDP, one process evaluates and writes
            with self.meter.measure("evaluation") if self.meter else contextlib.nullcontext():
                row = self.evaluate(model, state.global_step, state.epoch or 0.0)
            self._maybe_stop(row, control)
        self.last_step = state.global_step
        if _world_size() > 1:  # every process must stop at the same step
            flag = [bool(control.should_training_stop)]
            torch.distributed.broadcast_object_list(flag, src=0)
            control.should_training_stop = flag[0]

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Evaluate the starting model (only on a fresh start of the first phase)."""
        if self.at_start and state.global_step == 0:
            self._run(state, control, kwargs["model"])
        self.last_step = state.global_step
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Evaluate every ``every_steps`` steps."""
        if self.every_steps and state.global_step % self.every_steps == 0:
            self._run(state, control, kwargs["model"])
        return control

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Evaluate at the end of every ``every_epochs``-th epoch if asked."""
        if self.each_epoch and round(state.epoch or 0.0) % self.every_epochs == 0:
            self._run(state, control, kwargs["model"])
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Make sure the final model is evaluated."""
        self._run(state, control, kwargs["model"])
        return control


class EMACallback(TrainerCallback):
    """After each optimiser step, move the EMA teacher towards the student."""

    def __init__(self, teacher: Teacher, decay: float) -> None:
        self.teacher = teacher
        self.decay = decay

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """``θ_T <- d·θ_T + (1-d)·θ_S``."""
        self.teacher.ema_update(kwargs["model"], self.decay)
        return control

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Save the EMA teacher inside the checkpoint, so that resuming restores it."""
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}" / EMA_TEACHER_DIR
            self.teacher.model.save_pretrained(folder)  # a PreTrainedModel
        return control


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
