"""``report_to``: what the Trainer's trackers receive (read back from TensorBoard event files)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from transformers import TrainerCallback, TrainerControl, TrainerState

from factkeep.cli import main
from factkeep.training.callbacks import GlobalStepTracker

FAST = ["optim.batch_size=8", "eval.max_new_tokens=3", "progress=false", "log_every_steps=1"]
SPLITS = ("d_known", "d_unknown", "d_held")


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the event files in ``folder``: tag -> [(step, value)], in step order."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {
        tag: sorted((e.step, e.value) for e in acc.Scalars(tag)) for tag in acc.Tags()["scalars"]
    }


@pytest.fixture(scope="module")
def three_phases(tiny_study, tmp_path_factory) -> dict[str, Any]:
    """A format -> main -> patch run (self-distillation and a known patch) with TensorBoard."""
    pytest.importorskip("tensorboard")
    study = tiny_study("trackers")
    out = tmp_path_factory.mktemp("tb") / "run"
    args = [
        "train",
        "--config",
        "self_distill",
        f"model={study['model']}",
        f"data.splits={study['splits']}",
        f"out={out}",
        "optim.epochs=1",
        "replay.patch_epochs=1",
        "report_to=tensorboard",
        *FAST,
    ]
    assert main(args) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    results = json.loads((out / "results.json").read_text())
    return {"out": out, "rows": rows, "results": results, "scalars": _scalars(out / "tensorboard")}


def test_the_loss_terms_arrive_at_global_steps(three_phases) -> None:
    scalars = three_phases["scalars"]
    # 24 known facts / 8 = 3 format steps, 48 facts / 8 = 6 main steps, then 3 patch steps.
    assert [r["phase"] for r in three_phases["rows"]] == ["format", "format", "main", "patch"]
    assert [step for step, _ in scalars["train/loss_nll"]] == list(range(1, 13))
    assert [step for step, _ in scalars["train/loss"]] == list(range(1, 13))
    # the KL to the teacher is a term of the main phase only: steps 4..9
    assert [step for step, _ in scalars["train/loss_kl_to_teacher"]] == list(range(4, 10))
    assert all(value >= 0 for _, value in scalars["train/loss_kl_to_teacher"])


def test_every_evaluation_arrives_at_its_step(three_phases) -> None:
    scalars, rows = three_phases["scalars"], three_phases["rows"]
    assert [r["step"] for r in rows] == [0, 3, 9, 12]
    for split in SPLITS:
        logged = scalars[f"eval/acc_{split}"]
        assert [step for step, _ in logged] == [r["step"] for r in rows]
        assert [v for _, v in logged] == pytest.approx([r["acc"][split] for r in rows])


def test_the_final_summary_arrives_at_the_end(three_phases) -> None:
    scalars, results = three_phases["scalars"], three_phases["results"]
    forgetting = scalars["eval/final_forgetting_d_held"]
    assert forgetting == [(12, pytest.approx(results["forgetting"]))]
    decline = scalars["eval/final_decline_d_held"]
    assert decline == [(12, pytest.approx(results["held_decline"]))]
    for split in SPLITS:
        assert scalars[f"eval/final_acc_{split}"] == [(12, pytest.approx(results["final"][split]))]


def test_tracker_files_outlive_the_checkpoints(three_phases) -> None:
    out = three_phases["out"]
    assert not (out / "checkpoints").exists() or not list((out / "checkpoints").rglob("events.*"))
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 3  # one per phase
    # the accuracies went through Trainer.log: the Trainer's own log history has them too
    done = json.loads((out / "phases" / "main" / "done.json").read_text())
    assert any("eval_acc_d_held" in h for h in done["log_history"])


def test_a_run_without_trackers_logs_no_accuracies(tiny_study, tmp_path) -> None:
    study = tiny_study("no_trackers")
    out = tmp_path / "run"
    args = ["train", "--config", "sft", f"model={study['model']}"]
    args += [f"data.splits={study['splits']}", f"out={out}", "optim.epochs=1", *FAST]
    assert main(args) == 0
    assert not (out / "tensorboard").exists()
    done = json.loads((out / "phases" / "main" / "done.json").read_text())
    assert not any(key.startswith("eval_") for h in done["log_history"] for key in h)


class _Recorder(TrainerCallback):
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    def on_train_begin(self, args, state, control, **kwargs):
        assert "logs" not in kwargs
        self.events.append(("begin", state.global_step))

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.events.append(("log", state.global_step))

    def on_step_end(self, args, state, control, **kwargs):
        self.events.append(("step", state.global_step))

    def on_train_end(self, args, state, control, **kwargs):
        self.events.append(("end", state.global_step))


def test_global_step_tracker_offsets_steps_and_begins_before_the_first_log() -> None:
    inner = _Recorder()
    tracker = GlobalStepTracker(inner, step_offset=30)
    state, control, args = TrainerState(), TrainerControl(), SimpleNamespace()
    tracker.on_log(args, state, control, logs={"eval_acc_d_held": 0.5}, model=None)
    tracker.on_train_begin(args, state, control, model=None)  # already begun: not sent twice
    state.global_step = 2
    tracker.on_step_end(args, state, control)
    tracker.on_log(args, state, control, logs={"loss": 1.0})
    tracker.on_train_end(args, state, control)
    assert inner.events == [("begin", 30), ("log", 30), ("step", 32), ("log", 32), ("end", 32)]
    assert state.global_step == 2  # the Trainer's own state is left alone
