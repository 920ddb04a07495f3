"""``factkeep sweep``: a tiny grid, serial, in local workers and on a local Ray, resumed,
reported; bad grids."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from factkeep.cli import main
from factkeep.config import resolve_config
from factkeep.study.sweep import SweepCommandConfig, plan_trials

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["self_distill__seed=0", "self_distill__seed=1", "sft__seed=0", "sft__seed=1"]


@pytest.fixture(scope="module")
def files(tiny_study) -> dict[str, Path]:
    return tiny_study("sweep", n_known=8, n_unknown=8, n_held=8)


def _grid(files: dict[str, Path], out: Path, **extra: object) -> Path:
    grid = {
        "methods": ["sft", "self_distill"],
        "grid": [{"seed": [0, 1]}],
        "overrides": [
            {"model": str(files["model"]), "data.splits": str(files["splits"])},
            "optim.epochs=1",
            "optim.batch_size=8",
            "eval.max_new_tokens=3",
            "progress=false",
        ],
        "out": str(out),
        **extra,
    }
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(grid), encoding="utf-8")
    return path


def _trials(out: Path) -> dict[str, dict]:
    manifest = json.loads((out / "sweep.json").read_text())
    return {t["name"]: t for t in manifest["trials"]}


def _trace(folder: Path) -> list:
    """Accuracy rows of metrics.jsonl and the losses each phase logged (timings left out)."""
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    trace: list = [(r["phase"], r["step"], r["acc"]) for r in rows]
    for done in sorted(folder.glob("phases/*/done.json")):
        for entry in json.loads(done.read_text())["log_history"]:
            trace += [(done.parent.name, k, v) for k, v in sorted(entry.items()) if "loss" in k]
    return trace


@pytest.fixture(scope="module")
def serial(files: dict[str, Path]) -> Path:
    out = files["root"] / "serial"
    assert main(["sweep", "--config", str(_grid(files, out, backend="serial"))]) == 0
    return out


def test_serial_sweep_writes_run_folders_and_resumes(files, serial, capsys) -> None:
    trials = _trials(serial)
    assert sorted(trials) == NAMES
    for name, trial in trials.items():
        assert trial["status"] == "done" and trial["seconds"] > 0, name
        folder = Path(trial["folder"])
        assert folder == serial / name
        for product in ("config.yaml", "env.json", "metrics.jsonl", "results.json", "model"):
            assert (folder / product).exists(), (name, product)
        results = json.loads((folder / "results.json").read_text())
        assert results["method"] == trial["method"] and results["seed"] == trial["values"]["seed"]
    assert "seed=1" in trials["sft__seed=1"]["overrides"]
    stamps = {n: (serial / n / "results.json").stat().st_mtime_ns for n in NAMES}
    capsys.readouterr()
    assert main(["sweep", "--config", str(_grid(files, serial, backend="serial"))]) == 0
    table = capsys.readouterr().out
    assert all(name in table for name in NAMES) and "forgetting" in table
    assert {n: (serial / n / "results.json").stat().st_mtime_ns for n in NAMES} == stamps


def test_ray_sweep_matches_serial(files, serial) -> None:
    pytest.importorskip("ray")
    out = files["root"] / "ray"
    grid = _grid(files, out, backend="ray", num_cpus=2, cpus_per_trial=1, threads_per_trial=1)
    assert main(["sweep", "--config", str(grid)]) == 0
    trials = _trials(out)
    assert sorted(trials) == NAMES and {t["status"] for t in trials.values()} == {"done"}
    for name in NAMES:
        trace = _trace(out / name)
        assert any(key == "train_loss" for _, key, _ in trace) and trace == _trace(serial / name)


def test_local_sweep_in_worker_processes_matches_serial(files, serial) -> None:
    out = files["root"] / "local"
    grid = _grid(files, out, backend="local", max_concurrent=2, threads_per_trial=1)
    assert main(["sweep", "--config", str(grid)]) == 0
    trials = _trials(out)
    assert sorted(trials) == NAMES and {t["status"] for t in trials.values()} == {"done"}
    for name in NAMES:
        assert (out / name / "train.log").is_file()  # a worker's output goes to its run folder
        trace = _trace(out / name)
        assert any(key == "train_loss" for _, key, _ in trace) and trace == _trace(serial / name)


def test_report_of_a_sweep_covers_every_trial(serial, tmp_path, capsys) -> None:
    report = tmp_path / "report.html"
    assert main(["report", f"runs=[{serial}]", f"out={report}"]) == 0
    assert "4 runs" in capsys.readouterr().out
    markdown = report.with_suffix(".md").read_text()
    assert "sft" in markdown and "self_distill" in markdown


def test_failed_trials_are_recorded_and_exit_1(files, tmp_path) -> None:
    out = tmp_path / "broken"
    grid = _grid(files, out, backend="serial", methods=["sft"])
    text = grid.read_text().replace(str(files["splits"]), str(tmp_path / "no_splits"))
    grid.write_text(text)
    assert main(["sweep", "--config", str(grid)]) == 1
    trials = _trials(out)
    assert {t["status"] for t in trials.values()} == {"failed"}
    assert all("no_splits" in t["error"] for t in trials.values())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"grid": [{"loss.kl_weigth": [1, 3]}]}, "did you mean 'loss.kl_weight'"),
        ({"grid": ["seed=0,1", "out=[a, b]"]}, "'out' is set by the sweep"),
        ({"methods": ["sft", "no_such_method"]}, "no_such_method"),
        ({"grid": [{"loss.kl_weight": [1, 3]}]}, "trial 'sft__kl_weight=1'"),  # sft: no teacher
        ({"grid": [{"seed": ["x"]}]}, "expected an integer"),
    ],
)
def test_bad_grids_exit_2_and_write_nothing(files, tmp_path, capsys, change, message) -> None:
    out = tmp_path / "bad"
    assert main(["sweep", "--config", str(_grid(files, out, **change))]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_ray_missing_says_how_to_install_it(files, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # ``import ray`` raises ImportError
    out = tmp_path / "no_ray"
    assert main(["sweep", "--config", str(_grid(files, out))]) == 1
    assert "pip install 'factkeep[sweep]'" in capsys.readouterr().err
    assert not out.exists()


def test_plan_names_axes_per_method_and_reads_the_command_line_form(files) -> None:
    cfg = SweepCommandConfig(
        methods=["sft", "self_distill"],
        # ``grid=[loss.kl_weight=1,3]`` on the command line arrives split at the comma
        grid=[{"loss.kl_weight": [1, 3.5], "methods": ["self_distill"]}, "seed=0", "1"],
        overrides=[f"model={files['model']}", f"data.splits={files['splits']}"],
        out="runs/s",
    )
    trials = plan_trials(cfg)
    assert [t.name for t in trials] == [
        "sft__seed=0",
        "sft__seed=1",
        "self_distill__kl_weight=1__seed=0",
        "self_distill__kl_weight=1__seed=1",
        "self_distill__kl_weight=3.5__seed=0",
        "self_distill__kl_weight=3.5__seed=1",
    ]
    last = trials[-1]
    assert last.train.loss.kl_weight == 3.5 and last.train.seed == 1
    assert last.train.out == "runs/s/self_distill__kl_weight=3.5__seed=1"
    assert last.train.threads == 1 and last.values == {"loss.kl_weight": 3.5, "seed": 1}


def test_the_example_grid_plans_nine_trials(tmp_path, capsys) -> None:
    cfg = resolve_config(
        SweepCommandConfig, ROOT / "examples" / "sweep_grid.yaml", [f"out={tmp_path}"]
    )
    names = [t.name for t in plan_trials(cfg)]
    assert len(names) == 9 and "self_distill__kl_weight=3__seed=1" in names
    assert "sft__seed=2" in names and not any(n.startswith("sft__kl") for n in names)
    assert main(["sweep", "--help"]) == 0
    assert "threads_per_trial" in capsys.readouterr().out
