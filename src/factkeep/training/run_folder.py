"""Reading a training run folder back: its config, metrics, per-fact answers, results and models.

A run folder is what ``factkeep train`` writes (:mod:`factkeep.training.run`)::

    config.yaml                  the resolved TrainCommandConfig
    env.json                     versions, platform, git revision, seed
    metrics.jsonl                one MetricsRow per evaluation along training
    samples/step-NNNNNN.jsonl    the per-fact answers of each evaluation (one SampleRow a line)
    results.json                 the run's summary, written once the run has finished
    phases/<phase>/done.json     a finished phase: its steps, seconds and Trainer log history
    phases/<phase>/model/        the model at the end of an intermediate phase
    checkpoints/<phase>/checkpoint-N/   Trainer checkpoints (N: optimiser steps of the phase)
    model/                       the final model

:class:`RunFolder` reads it, typed::

    run = RunFolder("runs/sft")
    run.config.loss.kl_weight              # the TrainCommandConfig of config.yaml
    run.config_dict["optim"]["lr"]         # config.yaml as a nested dict (for comparisons)
    [row.acc["d_held"] for row in run.metrics]          # list[MetricsRow], in file order
    run.results["final"] if run.has_results else None   # results.json (a dict)
    run.samples(run.sample_steps[-1])      # list[SampleRow] of the last evaluation
    run.model_dir                          # the final model's folder

Nothing is cached: every property reads its file when used, so a folder a run is still writing
can be read again. A missing file gives an empty value where that is meaningful (no metrics yet:
``[]``; no results yet: ``None``); a malformed one raises :class:`~factkeep.errors.DataError`
naming the file, the line and the field (``metrics.jsonl:3: field 'acc.d_held': must be a
number``), or :class:`~factkeep.config.ConfigError` for ``config.yaml``.

The functions :func:`read_metrics` (raw rows, for tools that accept hand-made files),
:func:`read_metrics_rows` and :func:`trim_metrics` work on a ``metrics.jsonl`` path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from factkeep.config import ConfigError, load_saved_config
from factkeep.data.facts import read_jsonl_objects
from factkeep.errors import DataError
from factkeep.rundir import atomic_write_jsonl
from factkeep.training.config import TrainCommandConfig

__all__ = [
    "PHASE_ORDER",
    "Checkpoint",
    "MetricsRow",
    "RunFolder",
    "SampleRow",
    "read_metrics",
    "read_metrics_rows",
    "trim_metrics",
]

PHASE_ORDER = ("format", "main", "patch")
"""The training phases of a run, in the order they run."""

_STEP_FILE = re.compile(r"^step-(\d+)\.jsonl$")


def _require(data: Mapping[str, Any], key: str, path: Path | None, line: int | None) -> Any:
    if key not in data:
        raise DataError("missing required field", path, line, key)
    return data[key]


def _text(value: Any, path: Path | None, line: int | None, name: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"must be a string, got {value!r}", path, line, name)
    return value


def _integer(value: Any, path: Path | None, line: int | None, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DataError(f"must be an integer >= 0, got {value!r}", path, line, name)
    return value


def _number(value: Any, path: Path | None, line: int | None, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"must be a number, got {value!r}", path, line, name)
    return float(value)


def _by_split(
    value: Any,
    convert: Callable[[Any, Path | None, int | None, str], Any],
    path: Path | None,
    line: int | None,
    name: str,
) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise DataError(f"must be an object of split: value, got {value!r}", path, line, name)
    return {str(k): convert(v, path, line, f"{name}.{k}") for k, v in value.items()}


@dataclass(frozen=True)
class MetricsRow:
    """One evaluation along training: a line of ``metrics.jsonl``.

    Attributes:
        phase: the training phase (``format``, ``main`` or ``patch``).
        step: optimiser steps over all phases so far.
        phase_step: optimiser steps of this phase so far.
        epoch: epochs of this phase so far.
        acc: accuracy (a fraction) per evaluation set.
        n: facts evaluated per evaluation set.
    """

    phase: str
    step: int
    phase_step: int
    epoch: float
    acc: dict[str, float]
    n: dict[str, int]

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], path: str | Path | None = None, line: int | None = None
    ) -> MetricsRow:
        """Check and convert one row; ``path`` and ``line`` locate it in error messages.

        Raises:
            DataError: a field is missing or has the wrong type (naming the file, line, field).
        """
        where = Path(path) if path is not None else None
        return cls(
            phase=_text(_require(data, "phase", where, line), where, line, "phase"),
            step=_integer(_require(data, "step", where, line), where, line, "step"),
            phase_step=_integer(
                _require(data, "phase_step", where, line), where, line, "phase_step"
            ),
            epoch=_number(_require(data, "epoch", where, line), where, line, "epoch"),
            acc=_by_split(_require(data, "acc", where, line), _number, where, line, "acc"),
            n=_by_split(_require(data, "n", where, line), _integer, where, line, "n"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The row as ``metrics.jsonl`` holds it (same keys, same order)."""
        return {
            "phase": self.phase,
            "step": self.step,
            "phase_step": self.phase_step,
            "epoch": self.epoch,
            "acc": dict(self.acc),
            "n": dict(self.n),
        }


@dataclass(frozen=True)
class SampleRow:
    """One fact's answer at one evaluation: a line of ``samples/step-NNNNNN.jsonl``."""

    split: str
    id: str
    prediction: str
    correct: bool

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], path: str | Path | None = None, line: int | None = None
    ) -> SampleRow:
        """Check and convert one line; ``path`` and ``line`` locate it in error messages.

        Raises:
            DataError: a field is missing or has the wrong type (naming the file, line, field).
        """
        where = Path(path) if path is not None else None
        correct = _require(data, "correct", where, line)
        if not isinstance(correct, bool):
            raise DataError(f"must be true or false, got {correct!r}", where, line, "correct")
        return cls(
            split=_text(_require(data, "split", where, line), where, line, "split"),
            id=_text(_require(data, "id", where, line), where, line, "id"),
            prediction=_text(_require(data, "prediction", where, line), where, line, "prediction"),
            correct=correct,
        )

    def to_dict(self) -> dict[str, Any]:
        """The line as the samples file holds it."""
        return {
            "split": self.split,
            "id": self.id,
            "prediction": self.prediction,
            "correct": self.correct,
        }


@dataclass(frozen=True)
class Checkpoint:
    """A complete Trainer checkpoint of a phase (its ``trainer_state.json`` was written)."""

    phase: str
    step: int
    """Optimiser steps of the phase at the checkpoint."""
    path: Path


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` as dicts, unchecked beyond being JSON objects.

    For tools that also read hand-made files with fewer fields; :func:`read_metrics_rows` checks
    every field. Returns ``[]`` if the file does not exist.

    Raises:
        DataError: a line is not a JSON object (naming the file and line).
    """
    p = Path(path)
    if not p.exists():
        return []
    return [row for _, row in read_jsonl_objects(p)]


def read_metrics_rows(path: str | Path) -> list[MetricsRow]:
    """The rows of a ``metrics.jsonl``, checked (``[]`` if the file does not exist).

    Raises:
        DataError: a line is not a JSON object or lacks a field (naming the file, line, field).
    """
    p = Path(path)
    if not p.exists():
        return []
    return [MetricsRow.from_dict(row, p, line) for line, row in read_jsonl_objects(p)]


def trim_metrics(path: str | Path, keep: Callable[[MetricsRow], bool]) -> int:
    """Rewrite ``metrics.jsonl`` (atomically) with only the rows ``keep`` accepts.

    Used when resuming a run: the evaluations after its last checkpoint are made again.

    Returns:
        How many rows were removed (the file is not touched when none is).
    """
    rows = read_metrics_rows(path)
    kept = [row for row in rows if keep(row)]
    if len(kept) != len(rows):
        atomic_write_jsonl(path, [row.to_dict() for row in kept])
    return len(rows) - len(kept)


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"cannot read file: {exc.strerror or exc}", path) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise DataError(f"invalid JSON: {exc}", path) from None
    if not isinstance(data, dict):
        raise DataError(f"expected a JSON object, got {type(data).__name__}", path)
    return data


class RunFolder:
    """A training run folder, read on demand (see the module docstring).

    Args:
        path: the folder ``factkeep train`` wrote (``out=``); it need not exist yet.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # -- where things are ------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        """``config.yaml``."""
        return self.path / "config.yaml"

    @property
    def env_path(self) -> Path:
        """``env.json``."""
        return self.path / "env.json"

    @property
    def metrics_path(self) -> Path:
        """``metrics.jsonl``."""
        return self.path / "metrics.jsonl"

    @property
    def results_path(self) -> Path:
        """``results.json``."""
        return self.path / "results.json"

    @property
    def samples_dir(self) -> Path:
        """``samples/``."""
        return self.path / "samples"

    @property
    def replayed_path(self) -> Path:
        """``replayed.json``: the ids of the facts a replay run replays."""
        return self.path / "replayed.json"

    @property
    def model_dir(self) -> Path:
        """``model/``: the final model (an ordinary HF model folder)."""
        return self.path / "model"

    def sample_path(self, step: int) -> Path:
        """``samples/step-NNNNNN.jsonl``: the answers of the evaluation at global ``step``."""
        return self.samples_dir / f"step-{step:06d}.jsonl"

    def phase_dir(self, phase: str) -> Path:
        """``phases/<phase>/``."""
        return self.path / "phases" / phase

    def done_path(self, phase: str) -> Path:
        """``phases/<phase>/done.json``, written when the phase has finished."""
        return self.phase_dir(phase) / "done.json"

    def phase_model_dir(self, phase: str) -> Path:
        """``phases/<phase>/model/``: the model at the end of an intermediate phase."""
        return self.phase_dir(phase) / "model"

    def checkpoints_dir(self, phase: str) -> Path:
        """``checkpoints/<phase>/``: the phase's Trainer output folder."""
        return self.path / "checkpoints" / phase

    # -- what is there ---------------------------------------------------------------------------

    @property
    def has_config(self) -> bool:
        """Whether ``config.yaml`` exists."""
        return self.config_path.is_file()

    @property
    def has_metrics(self) -> bool:
        """Whether ``metrics.jsonl`` exists (the run has started evaluating)."""
        return self.metrics_path.is_file()

    @property
    def has_results(self) -> bool:
        """Whether a training ``results.json`` (an object with a ``final`` object) is readable.

        Never raises: a missing, unreadable or other ``results.json`` (e.g. ``factkeep eval``'s)
        is simply not a training run's results.
        """
        try:
            data = _read_json_object(self.results_path)
        except DataError:
            return False
        return isinstance(data.get("final"), dict)

    @property
    def is_run(self) -> bool:
        """Whether this looks like a training run folder (metrics or training results)."""
        return self.has_metrics or self.has_results

    # -- contents --------------------------------------------------------------------------------

    @property
    def config(self) -> TrainCommandConfig:
        """``config.yaml`` as the :class:`TrainCommandConfig` the run was made with.

        Raises:
            ConfigError: no ``config.yaml``, or one that is not valid YAML or holds an unknown
                option or a value of the wrong type (naming the file and the option).
        """
        if not self.has_config:
            raise ConfigError(f"{self.path} is not a training run folder (no config.yaml)")
        return load_saved_config(TrainCommandConfig, self.config_path)

    @property
    def config_dict(self) -> dict[str, Any]:
        """``config.yaml`` as written, a nested dict (``{}`` for an empty file).

        Raises:
            ConfigError: no ``config.yaml``, or one that is not YAML or not a mapping.
        """
        if not self.has_config:
            raise ConfigError(f"{self.path} is not a training run folder (no config.yaml)")
        try:
            data = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise ConfigError(f"{self.config_path}: cannot read the run config: {exc}") from exc
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ConfigError(f"{self.config_path}: a run config must be a mapping of options")
        return data

    @property
    def env(self) -> dict[str, Any]:
        """``env.json`` (versions, platform, git revision, seed).

        Raises:
            DataError: missing, unreadable, or not a JSON object.
        """
        return _read_json_object(self.env_path)

    @property
    def metrics(self) -> list[MetricsRow]:
        """The rows of ``metrics.jsonl``, in file order (``[]`` before the first evaluation).

        Raises:
            DataError: a malformed line (naming the file, line and field).
        """
        return read_metrics_rows(self.metrics_path)

    @property
    def results(self) -> dict[str, Any] | None:
        """``results.json`` (see ``factkeep.study.train.train_summary``), None while absent.

        Raises:
            DataError: the file exists but is not a JSON object.
        """
        if not self.results_path.exists():
            return None
        return _read_json_object(self.results_path)

    @property
    def sample_steps(self) -> list[int]:
        """The global steps that have a ``samples/step-NNNNNN.jsonl`` file, ascending."""
        if not self.samples_dir.is_dir():
            return []
        found = (_STEP_FILE.match(p.name) for p in self.samples_dir.iterdir() if p.is_file())
        return sorted(int(m.group(1)) for m in found if m)

    def samples(self, step: int) -> list[SampleRow]:
        """The per-fact answers of the evaluation at global ``step``, in file order.

        Raises:
            DataError: no such file, or a malformed line (naming the file, line and field).
        """
        path = self.sample_path(step)
        return [SampleRow.from_dict(row, path, line) for line, row in read_jsonl_objects(path)]

    @property
    def phases(self) -> list[str]:
        """The phases that saved something (``phases/<p>/`` or ``checkpoints/<p>/``), in order."""
        return [
            p for p in PHASE_ORDER if self.phase_dir(p).is_dir() or self.checkpoints_dir(p).is_dir()
        ]

    def phase_done(self, phase: str) -> bool:
        """Whether ``phase`` has finished (its ``done.json`` exists)."""
        return self.done_path(phase).is_file()

    def phase_steps(self, phase: str) -> int:
        """The optimiser steps of a finished phase, from its ``done.json``.

        Raises:
            DataError: no ``done.json``, or one without an integer ``steps``.
        """
        path = self.done_path(phase)
        steps = _read_json_object(path).get("steps")
        return _integer(steps, path, None, "steps")

    def checkpoints(self, phase: str) -> list[Checkpoint]:
        """The complete checkpoints of ``phase``, by step.

        A checkpoint without ``trainer_state.json`` was cut short and is left out. Its step is
        the state's ``global_step``, or the number in the folder's name if the state is
        unreadable.
        """
        folder = self.checkpoints_dir(phase)
        found: list[Checkpoint] = []
        for path in sorted(folder.glob("checkpoint-*")) if folder.is_dir() else []:
            step = _checkpoint_step(path)
            if step is not None:
                found.append(Checkpoint(phase, step, path))
        return sorted(found, key=lambda c: c.step)


def _checkpoint_step(folder: Path) -> int | None:
    state = folder / "trainer_state.json"
    if not folder.is_dir() or not state.is_file():
        return None
    try:
        return int(json.loads(state.read_text(encoding="utf-8"))["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        name = folder.name.rsplit("-", 1)[-1]
        return int(name) if name.isdigit() else None
