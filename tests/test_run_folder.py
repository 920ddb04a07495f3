"""Reading a run folder back: a real tiny SFT run, then hand-broken copies of its files, each
located by file, line and field."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from factkeep.cli import main
from factkeep.config import ConfigError, config_to_dict, resolve_config
from factkeep.errors import DataError
from factkeep.training.config import TrainCommandConfig
from factkeep.training.run_folder import (
    MetricsRow,
    RunFolder,
    SampleRow,
    read_metrics,
    read_metrics_rows,
    trim_metrics,
)

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "factkeep" / "configs"
FAST = ["optim.epochs=2", "optim.batch_size=8", "eval.max_new_tokens=3", "progress=false"]


@pytest.fixture(scope="module")
def trained(tiny_study) -> dict:
    """An SFT run of 2 epochs (6 steps each), its checkpoints kept, and the options it ran with."""
    study = tiny_study("run_folder")
    out = study["root"] / "sft"
    options = [f"model={study['model']}", f"data.splits={study['splits']}", f"out={out}", *FAST]
    options += ["keep_checkpoints=true", "save_total_limit=5"]
    assert main(["train", "--config", "sft", *options]) == 0
    return {"out": out, "options": options}


def _copy(trained: dict, tmp_path: Path, *names: str) -> RunFolder:
    folder = tmp_path / "run"
    folder.mkdir()
    for name in names:
        source = trained["out"] / name
        if source.is_dir():
            shutil.copytree(source, folder / name)
        else:
            shutil.copy(source, folder / name)
    return RunFolder(folder)


def test_config_comes_back_as_the_train_config_it_ran_with(trained) -> None:
    run = RunFolder(trained["out"])
    expected = resolve_config(TrainCommandConfig, CONFIGS / "sft.yaml", trained["options"])
    assert isinstance(run.config, TrainCommandConfig)
    assert run.config == expected
    assert run.config.loss.kl_weight == 0.0 and run.config.optim.epochs == 2.0
    assert run.config_dict == config_to_dict(expected)
    assert run.config_dict == yaml.safe_load(run.config_path.read_text())


def test_metrics_samples_results_and_models_of_a_real_run(trained) -> None:
    run = RunFolder(trained["out"])
    lines = run.metrics_path.read_text().splitlines()
    rows = run.metrics
    assert [(r.phase, r.step, r.phase_step, r.epoch) for r in rows] == [
        ("main", 0, 0, 0.0),
        ("main", 6, 6, 1.0),
        ("main", 12, 12, 2.0),
    ]
    assert [json.dumps(r.to_dict()) for r in rows] == lines  # the writer's exact lines
    assert [r.to_dict() for r in rows] == read_metrics(run.metrics_path)
    assert run.sample_steps == [0, 6, 12]
    for row in rows:
        samples = run.samples(row.step)
        assert all(isinstance(s, SampleRow) for s in samples)
        assert len(samples) == sum(row.n.values())
        for split, acc in row.acc.items():
            of_split = [s.correct for s in samples if s.split == split]
            assert len(of_split) == row.n[split]
            assert acc == pytest.approx(sum(of_split) / len(of_split), abs=1e-6)
    assert run.has_results and run.is_run
    results = run.results
    assert results is not None and results["final"] == rows[-1].acc
    assert "versions" in run.env
    assert run.phases == ["main"] and run.phase_done("main") and run.phase_steps("main") == 12
    assert [(c.phase, c.step) for c in run.checkpoints("main")] == [("main", 6), ("main", 12)]
    assert (run.model_dir / "config.json").is_file()


def test_a_folder_with_nothing_yet(tmp_path) -> None:
    run = RunFolder(tmp_path / "nothing")
    assert run.metrics == [] and run.results is None and run.sample_steps == []
    assert not run.has_results and not run.is_run and not run.has_config
    assert run.phases == [] and run.checkpoints("main") == []
    with pytest.raises(ConfigError, match=r"no config\.yaml"):
        run.config  # noqa: B018
    with pytest.raises(ConfigError, match=r"no config\.yaml"):
        run.config_dict  # noqa: B018


def test_a_bad_metrics_line_names_the_file_line_and_field(trained, tmp_path) -> None:
    run = _copy(trained, tmp_path, "metrics.jsonl")
    path = run.metrics_path
    good = path.read_text().splitlines()
    cases = {
        "acc.d_held": lambda row: row["acc"].update(d_held="high"),
        "phase_step": lambda row: row.pop("phase_step"),
        "n.d_known": lambda row: row["n"].update(d_known=2.5),
        "step": lambda row: row.update(step=True),
    }
    for name, breaks in cases.items():
        row = json.loads(good[1])
        breaks(row)
        path.write_text("\n".join([good[0], json.dumps(row), good[2]]) + "\n")
        with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:2: field '{name}':"):
            run.metrics  # noqa: B018
    path.write_text("\n".join([good[0], good[1], '{"phase": "main", ']) + "\n")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:3: invalid JSON"):
        run.metrics  # noqa: B018
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:3: invalid JSON"):
        read_metrics(path)
    path.write_text(good[0] + "\n[1, 2]\n")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:2: expected a JSON object"):
        read_metrics_rows(path)


def test_read_metrics_keeps_rows_with_fewer_fields(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 3, "acc": {"d_held": 1.0}}\n\n{"step": 4}\n')
    assert read_metrics(path) == [{"step": 3, "acc": {"d_held": 1.0}}, {"step": 4}]
    with pytest.raises(DataError, match=r":1: field 'phase': missing required field"):
        read_metrics_rows(path)


def test_metrics_row_round_trip_and_trimming(trained, tmp_path) -> None:
    run = _copy(trained, tmp_path, "metrics.jsonl")
    raw = read_metrics(run.metrics_path)
    assert [MetricsRow.from_dict(r).to_dict() for r in raw] == raw
    assert list(MetricsRow.from_dict(raw[0]).to_dict()) == list(raw[0])  # the same key order
    before = run.metrics_path.read_bytes()
    assert trim_metrics(run.metrics_path, lambda row: True) == 0
    assert run.metrics_path.read_bytes() == before
    assert trim_metrics(run.metrics_path, lambda row: row.step < 6) == 2
    assert [r.step for r in run.metrics] == [0]
    assert run.metrics_path.read_text() == before.decode().splitlines(keepends=True)[0]


def test_bad_config_yaml_is_named(trained, tmp_path) -> None:
    run = _copy(trained, tmp_path, "config.yaml")
    data = yaml.safe_load(run.config_path.read_text())
    data["optim"]["lrr"] = 0.1
    run.config_path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"config\.yaml: unknown option 'optim\.lrr'"):
        run.config  # noqa: B018
    assert run.config_dict["optim"]["lrr"] == 0.1  # the raw dict is read as written
    data["optim"] = {"lr": "fast"}
    run.config_path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(run.config_path))}: .*'optim\.lr'"):
        run.config  # noqa: B018
    run.config_path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(run.config_path))}: cannot read"):
        run.config_dict  # noqa: B018
    run.config_path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        run.config_dict  # noqa: B018


def test_bad_samples_results_and_done_files_are_named(trained, tmp_path) -> None:
    run = _copy(trained, tmp_path, "samples", "results.json", "phases")
    sample = run.sample_path(6)
    first = sample.read_text().splitlines(keepends=True)[0]
    sample.write_text(first + '{"split": "d_held", "id": "x", "prediction": "y"}\n')
    with pytest.raises(DataError, match=rf"^{re.escape(str(sample))}:2: field 'correct'"):
        run.samples(6)
    with pytest.raises(DataError, match="file not found"):
        run.samples(7)
    run.results_path.write_text("{not json")
    assert not run.has_results
    with pytest.raises(DataError, match=rf"^{re.escape(str(run.results_path))}: invalid JSON"):
        run.results  # noqa: B018
    run.results_path.write_text('{"metrics": {}}')  # e.g. what factkeep eval writes
    assert not run.has_results and run.results == {"metrics": {}}
    run.done_path("main").write_text('{"seconds": 1.0}')
    with pytest.raises(
        DataError, match=rf"^{re.escape(str(run.done_path('main')))}: field 'steps'"
    ):
        run.phase_steps("main")
