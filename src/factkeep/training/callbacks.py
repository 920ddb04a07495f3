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
evaluations. :class:`~factkeep.training.run_folder.MetricsRow` and
:class:`~factkeep.training.run_folder.SampleRow` read these lines back.

When a run resumes, :meth:`SplitEvalCallback.restore` takes over the rows already written: an
evaluation the interruption lost is made before training goes on, and a phase whose early stopping
had already triggered raises :class:`StoppedBeforeTraining` instead of training further.

With logging backends (``report_to``), :func:`route_trackers` makes the Trainer's tracker callbacks
(TensorBoard, W&B, MLflow, ...) count steps over all phases (:class:`GlobalStepTracker`) and hands
the evaluation callback the Trainer's ``log``: every evaluation is logged as ``eval_acc_<split>``
at its step, and the end of the last phase as ``eval_final_acc_<split>``,
``eval_final_forgetting_d_held`` and ``eval_final_decline_d_held`` (the summary of
``results.json``), which the trackers show as ``eval/acc_d_held``, ``eval/final_forgetting_d_held``,
... (docs/trackers.md).
"""

from __future__ import annotations

import contextlib
import copy
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
from factkeep.training.run_folder import MetricsRow, RunFolder, read_metrics, trim_metrics
from factkeep.training.summary import summarize_run

__all__ = [
    "EMACallback",
    "GlobalStepTracker",
    "SplitEvalCallback",
    "StoppedBeforeTraining",
    "read_metrics",
    "route_trackers",
    "trim_metrics",
]

log = logging.getLogger(__name__)


class StoppedBeforeTraining(Exception):
    """Raised by :class:`SplitEvalCallback` before the first step of a resumed phase whose early
    stopping has already triggered.

    The Trainer runs one optimiser step before it looks at ``should_training_stop``, so a stop
    decided before training resumes cannot be honoured otherwise. Whoever calls ``train`` catches
    it: the phase ends with the model of the checkpoint it resumed from.
    """

    def __init__(self, step: int) -> None:
        super().__init__(f"training had already stopped early at step {step}")
        self.step = step


EMA_TEACHER_DIR = "ema_teacher"
"""Sub-folder of a checkpoint holding the EMA teacher's weights."""


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
        last_phase: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.eval_sets = {k: list(v) for k, v in eval_sets.items()}
        self.run = RunFolder(out_dir)
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
        self.evaluated: set[int] = set()
        """Phase steps that have a metrics row (with those of a resumed run, see restore)."""
        self.stop_before_training = False
        self.last_phase = last_phase
        """Whether this is the run's last phase: its end logs the run's summary."""
        self.log_to: Callable[[dict[str, float]], None] | None = None
        """The Trainer's ``log`` when there are trackers (set by :func:`route_trackers`)."""

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
        atomic_write_jsonl(self.run.sample_path(step), samples)
        with open(self.run.metrics_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        self.last_step = phase_step
        self.evaluated.add(phase_step)
        accs = ", ".join(f"{k} {v:.3f}" for k, v in row["acc"].items())
        log.info("[%s] step %d (epoch %.2f): %s", self.phase, step, epoch, accs)
        return row

    def restore(self, rows: Sequence[MetricsRow]) -> None:
        """Take over this phase's rows of a resumed run: which steps were evaluated, and the
        early-stopping bookkeeping."""
        for row in rows:
            self.evaluated.add(row.phase_step)
            self._maybe_stop(row.step, row.acc, None)

    def _maybe_stop(self, step: int, acc: Mapping[str, float], control: Any) -> None:
        if self.patience <= 0 or "dev" not in acc:
            return
        dev = acc["dev"]
        if dev > self.best_dev + self.min_delta:
            self.best_dev, self.bad_evals = dev, 0
            return
        self.bad_evals += 1
        if self.bad_evals >= self.patience:
            self.stopped_early_at = step
            log.info(
                "early stop at step %d: dev accuracy %.3f, no gain over %.3f in %d evaluations",
                step,
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
            self._report({f"eval_acc_{name}": value for name, value in row["acc"].items()})
            self._maybe_stop(row["step"], row["acc"], control)
        self.last_step = state.global_step
        if _world_size() > 1:  # every process must stop at the same step
            flag = [bool(control.should_training_stop)]
            torch.distributed.broadcast_object_list(flag, src=0)
            control.should_training_stop = flag[0]

    def _step_due(self, step: int) -> bool:
        return self.every_steps > 0 and step % self.every_steps == 0

    def _epoch_due(self, epoch: float) -> bool:
        return self.each_epoch and round(epoch) % self.every_epochs == 0

    def _missed_evaluation(self, state: Any) -> bool:
        """Whether a resumed run starts at an evaluation point that has no metrics row.

        The Trainer saves a step checkpoint (``save_every_steps``) in its step-end hook, before
        the epoch-end hook that evaluates, and the end of training is evaluated after the last
        checkpoint: a run killed in between resumes past an evaluation that never ran.
        """
        step, epoch = state.global_step, float(state.epoch or 0.0)
        if step == 0 or step in self.evaluated:
            return False
        at_epoch_end = epoch.is_integer() and self._epoch_due(epoch)
        return self._step_due(step) or at_epoch_end or step >= state.max_steps

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Evaluate the starting model (only on a fresh start of the first phase); on resuming,
        make up for an evaluation of the resumed step that the interruption lost."""
        if state.global_step == 0:
            if self.at_start:
                self._run(state, control, kwargs["model"])
        elif self._missed_evaluation(state):
            log.info(
                "[%s] evaluating step %d, lost when the run stopped",
                self.phase,
                self._global_step(state),
            )
            self._run(state, control, kwargs["model"])
        self.last_step = state.global_step
        # Early stopping decided before any step of this train call (a resumed run): under DDP
        # only the main process knows stopped_early_at, the others got should_training_stop.
        self.stop_before_training = (
            self.stopped_early_at is not None or control.should_training_stop
        )
        control.should_training_stop = self.stop_before_training
        return control

    def _global_step(self, state: Any) -> int:
        return self.step_offset + int(state.global_step)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Stop before a step when early stopping triggered before this train call began."""
        if self.stop_before_training:
            raise StoppedBeforeTraining(self._global_step(state))
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Evaluate every ``every_steps`` steps."""
        if self._step_due(state.global_step):
            self._run(state, control, kwargs["model"])
        return control

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Evaluate at the end of every ``every_epochs``-th epoch if asked."""
        if self._epoch_due(state.epoch or 0.0):
            self._run(state, control, kwargs["model"])
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Make sure the final model is evaluated; at the end of the run, log its summary."""
        self._run(state, control, kwargs["model"])
        if self.last_phase and state.is_world_process_zero:
            self._report(self.final_scalars())
        return control

    def _report(self, logs: dict[str, float]) -> None:
        """Send scalars to the trackers through the Trainer's ``log`` (if there are any)."""
        if self.log_to is not None and logs:
            self.log_to(dict(logs))

    def final_scalars(self) -> dict[str, float]:
        """The run's summary over every phase's evaluations, as in ``results.json``: final
        accuracy per set (``eval_final_acc_<set>``) and the forgetting and absolute decline of
        D_held (``eval_final_forgetting_d_held``, ``eval_final_decline_d_held``)."""
        summary = summarize_run([row.to_dict() for row in self.run.metrics])
        scalars = {f"eval_final_acc_{name}": float(v) for name, v in summary["final"].items()}
        if summary["forgetting"] is not None:
            scalars["eval_final_forgetting_d_held"] = float(summary["forgetting"])
            scalars["eval_final_decline_d_held"] = float(summary["held_decline"])
        return scalars


_EVENTS = [name for name in vars(TrainerCallback) if name.startswith("on_")]
"""The Trainer's callback events (``on_train_begin``, ``on_log``, ``on_save``, ...)."""


class GlobalStepTracker(TrainerCallback):
    """A tracker callback of the Trainer (TensorBoard, W&B, MLflow, ...) that counts steps over
    all phases.

    Every phase is its own ``Trainer.train`` call whose steps start at 0; the tracker gets each
    event with ``state.global_step`` raised by ``step_offset``, the steps of the earlier phases,
    as in the ``step`` of ``metrics.jsonl``. Its ``on_train_begin`` is sent before the first log
    if that comes first: the evaluation of the starting model is logged by the evaluation
    callback's ``on_train_begin``, which runs before this one's.
    """

    def __init__(self, tracker: TrainerCallback, step_offset: int) -> None:
        self.tracker = tracker
        self.step_offset = step_offset
        self.begun = False

    def _send(self, event: str, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        shifted = copy.copy(state)
        shifted.global_step = int(state.global_step) + self.step_offset
        return getattr(self.tracker, event)(args, shifted, control, **kwargs)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Start the tracker (once)."""
        if self.begun:
            return control
        self.begun = True
        return self._send("on_train_begin", args, state, control, **kwargs)

    def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Log at the global step (starting the tracker first if it has not started)."""
        if not self.begun:
            begin = {k: v for k, v in kwargs.items() if k != "logs"}
            control = self.on_train_begin(args, state, control, **begin) or control
        return self._send("on_log", args, state, control, **kwargs)


def _forward(event: str) -> Callable[..., Any]:
    def forward(self: GlobalStepTracker, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        return self._send(event, args, state, control, **kwargs)

    forward.__name__ = event
    forward.__doc__ = f"Forward ``{event}`` at the global step."
    return forward


for _event in _EVENTS:
    if _event not in vars(GlobalStepTracker):
        setattr(GlobalStepTracker, _event, _forward(_event))


def route_trackers(trainer: Any, eval_cb: SplitEvalCallback, tensorboard_dir: str | Path) -> int:
    """Connect a phase's Trainer, its tracker callbacks (``report_to``) and ``eval_cb``.

    Each tracker callback is wrapped in a :class:`GlobalStepTracker` (offset: the phase's
    ``eval_cb.step_offset``) and moved right after ``eval_cb``, so that the run's final evaluation
    and summary, logged by ``eval_cb.on_train_end``, reach the trackers before their own
    ``on_train_end`` closes them. ``eval_cb`` logs through ``trainer.log``, so every backend (and
    ``state.log_history``) gets the accuracies. TensorBoard writes to ``tensorboard_dir``, one
    folder for all phases (unless ``TENSORBOARD_LOGGING_DIR`` says otherwise; by default the
    Trainer would write under the phase's checkpoint folder, deleted when the phase ends).

    Returns:
        How many tracker callbacks were routed (0: nothing changed).
    """
    # Lazily: the integrations module imports every backend it finds.
    from transformers.integrations import TensorBoardCallback, get_reporting_integration_callbacks

    handler = trainer.callback_handler
    kinds = tuple(get_reporting_integration_callbacks(trainer.args.report_to))
    trackers = [cb for cb in handler.callbacks if kinds and isinstance(cb, kinds)]
    if not trackers:
        return 0
    for cb in trackers:
        if isinstance(cb, TensorBoardCallback) and getattr(cb, "logging_dir", None) is None:
            cb.logging_dir = str(tensorboard_dir)
    rest = [cb for cb in handler.callbacks if cb not in trackers]
    at = rest.index(eval_cb) + 1
    wrapped = [GlobalStepTracker(cb, eval_cb.step_offset) for cb in trackers]
    handler.callbacks = [*rest[:at], *wrapped, *rest[at:]]
    eval_cb.log_to = trainer.log
    return len(trackers)


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
