"""``factkeep report``: transitions, run discovery, the comparison table and the report files.

The run folders are written by hand: sft and self_distill (λ=1) with two seeds each, and
self_distill with λ=5, each evaluated at steps 0, 10 and 20 on 10 facts per split. The analysis
folders (``analysis.json`` and a PNG) are written by hand too.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from factkeep.analysis.summary import (
    AnalysisFigure,
    AnalysisSummary,
    AnalysisTable,
    read_summary,
    write_summary,
)
from factkeep.cli import main
from factkeep.errors import DataError
from factkeep.eval.report import build_report, comparison_rows, discover_runs, load_run
from factkeep.eval.transitions import (
    read_samples,
    run_sample_files,
    run_transitions,
    transition_counts,
)
from factkeep.training.summary import summarize_run

STEPS = (0, 10, 20)
SPLITS = ("d_known", "d_unknown", "d_held")
N = 10  # facts per split

# folder: (method, seed, λ, accuracy at each step on d_known, d_unknown, d_held)
RUNS = {
    "sft_s0": ("sft", 0, 0.0, [1, 1, 1], [0, 0.5, 0.9], [0.9, 0.8, 0.5]),
    "sft_s1": ("sft", 1, 0.0, [1, 0.9, 1], [0, 0.6, 1], [0.9, 0.7, 0.6]),
    "sd_s0": ("self_distill", 0, 1.0, [1, 1, 1], [0, 0.4, 0.8], [0.9, 0.8, 0.7]),
    "sd_s1": ("self_distill", 1, 1.0, [1, 1, 1], [0.1, 0.5, 0.9], [1, 0.9, 0.8]),
    "sweep/sd_l5": ("self_distill", 0, 5.0, [1, 1, 1], [0, 0.3, 0.6], [0.9, 0.9, 0.8]),
}


def write_run(
    folder: Path,
    method: str,
    seed: int,
    kl_weight: float,
    acc: dict[str, list[float]],
    finished: bool = True,
) -> None:
    """A run folder as ``factkeep train`` writes it: config, metrics, samples, results."""
    folder.mkdir(parents=True)
    config = {"method": method, "seed": seed, "loss": {"kl_weight": kl_weight, "temperature": 0.5}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    rows = []
    for i, step in enumerate(STEPS):
        phase = "format" if method == "self_distill" and step == 0 else "main"
        values = {split: series[i] for split, series in acc.items()}
        rows.append(
            {
                "phase": phase,
                "step": step,
                "phase_step": step,
                "epoch": float(i),
                "acc": values,
                "n": dict.fromkeys(acc, N),
            }
        )
        samples = [
            {"split": split, "id": f"{split}-{k}", "prediction": "x", "correct": k < round(v * N)}
            for split, v in values.items()
            for k in range(N)
        ]
        (folder / "samples").mkdir(exist_ok=True)
        lines = "".join(json.dumps(s) + "\n" for s in samples)
        (folder / "samples" / f"step-{step:06d}.jsonl").write_text(lines)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if finished:
        results = {
            "method": method,
            "model": "m",
            "seed": seed,
            **summarize_run(rows),
            "trainable_parameters": 900,
            "total_parameters": 1000,
            "teacher_forwards": 0,
            "stopped_early_at": None,
            "phases": sorted({r["phase"] for r in rows}),
            "seconds": 1.5,
            "model_dir": str(folder / "model"),
        }
        (folder / "results.json").write_text(json.dumps(results))


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    for name, (method, seed, kl, *series) in RUNS.items():
        write_run(root / name, method, seed, kl, dict(zip(SPLITS, series, strict=True)))
    (root / "world" / "model").mkdir(parents=True)  # not a run
    (root / "eval").mkdir()
    (root / "eval" / "results.json").write_text('{"metrics": {}}')  # an eval output, not a run
    return root


@pytest.fixture(scope="module")
def report(runs_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    build_report([load_run(p) for p in discover_runs([runs_root])], out, "<Forgetting & co>")
    return out


def _write_samples(path: Path, rows: list[tuple[str, str, bool]]) -> None:
    lines = [{"split": s, "id": i, "prediction": "", "correct": c} for s, i, c in rows]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_transition_counts_of_two_sample_files(tmp_path: Path) -> None:
    before, after = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    held_before = [True, True, False, False, True]
    held_after = [True, False, True, False, False]
    _write_samples(
        before,
        [("d_held", str(k), c) for k, c in enumerate(held_before)]
        + [("d_unknown", "1", False), ("d_unknown", "2", False), ("d_held", "gone", True)],
    )
    _write_samples(
        after,
        [("d_held", str(k), c) for k, c in enumerate(held_after)]
        + [("d_unknown", "1", True), ("d_unknown", "2", False), ("d_unknown", "new", True)],
    )
    assert read_samples(before)[("d_held", "1")] is True
    counts = transition_counts(read_samples(before), read_samples(after))
    assert counts == {
        "d_held": {
            "stable_right": 1,
            "known_to_forgotten": 2,
            "unknown_to_learned": 1,
            "stable_wrong": 1,
        },
        "d_unknown": {
            "stable_right": 0,
            "known_to_forgotten": 0,
            "unknown_to_learned": 1,
            "stable_wrong": 1,
        },
    }


def test_run_transitions_first_last_and_chosen_steps(runs_root: Path, tmp_path: Path) -> None:
    run = runs_root / "sft_s0"
    assert [step for step, _ in run_sample_files(run)] == [0, 10, 20]
    held = run_transitions(run)["d_held"]  # 9 right -> 5 right
    assert held == {
        "stable_right": 5,
        "known_to_forgotten": 4,
        "unknown_to_learned": 0,
        "stable_wrong": 1,
    }
    assert run_transitions(run, start_step=10, end_step=20)["d_unknown"]["unknown_to_learned"] == 4
    with pytest.raises(FileNotFoundError, match="step 7"):
        run_transitions(run, start_step=7)
    assert run_transitions(tmp_path) == {}


def test_discover_runs_finds_nested_runs_once(runs_root: Path) -> None:
    found = discover_runs([runs_root, runs_root / "sft_s0", runs_root / "missing"])
    names = sorted(p.relative_to(runs_root).as_posix() for p in found)
    assert names == ["sd_s0", "sd_s1", "sft_s0", "sft_s1", "sweep/sd_l5"]
    assert discover_runs([runs_root / "sweep"]) == [runs_root / "sweep" / "sd_l5"]


def test_comparison_rows_group_by_method_and_lambda(runs_root: Path) -> None:
    rows = comparison_rows([load_run(p) for p in discover_runs([runs_root])])
    assert [r.label for r in rows] == ["sft", "self_distill", "self_distill (λ=5)"]
    assert [len(r.runs) for r in rows] == [2, 2, 1]
    sft, sd, sd5 = (r.cells for r in rows)
    assert sft["d_known"].mean == 1.0 and sft["d_known"].sd == 0.0
    assert sft["d_unknown"].mean == pytest.approx(0.95)
    assert sft["d_unknown"].sd == pytest.approx(0.1 / math.sqrt(2))
    assert sft["d_held"].mean == pytest.approx(0.55)
    assert sft["forgetting"].mean == pytest.approx(7 / 18)  # (4/9 + 3/9) / 2
    assert sft["forgetting"].sd == pytest.approx((1 / 9) / math.sqrt(2))
    assert sd["d_held"].mean == pytest.approx(0.75)
    assert sd["forgetting"].mean == pytest.approx((2 / 9 + 0.2) / 2)
    assert sd5["d_held"].mean == pytest.approx(0.8) and sd5["d_held"].sd is None
    assert sd5["forgetting"].percent() == "11.1"
    assert sft["d_held"].percent() == "55.0 ± 7.1"


def test_unfinished_run_is_summarised_from_its_metrics(tmp_path: Path) -> None:
    acc = dict(zip(SPLITS, RUNS["sft_s0"][3:], strict=True))
    write_run(tmp_path / "sft_live", "sft", 0, 0.0, acc, finished=False)
    run = load_run(tmp_path / "sft_live")
    assert not run.complete and run.method == "sft"
    assert run.results["final"]["d_held"] == 0.5
    assert run.results["forgetting"] == pytest.approx(4 / 9)
    (row,) = comparison_rows([run])
    assert row.cells["d_held"].mean == 0.5


def test_report_html_is_self_contained_with_markdown_twin(report: Path) -> None:
    html = report.read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == 3
    assert 'src="http' not in html and "<script" not in html and "<link" not in html
    assert "&lt;Forgetting &amp; co&gt;" in html and "<Forgetting" not in html
    for text in ("self_distill (λ=5)", "55.0 ± 7.1", "forgetting", "sft_s1", "sweep/sd_l5"):
        assert text in html
    md = report.with_suffix(".md").read_text(encoding="utf-8")
    assert "| self_distill (λ=5) |" in md
    for name in ("frontier.png", "learning_curves.png", "transitions.png"):
        assert f"](report_files/{name})" in md
        png = report.parent / "report_files" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_report(runs_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r" / "index.html"
    assert main(["report", f"runs=[{runs_root}]", f"out={out}", "title=sweep"]) == 0
    text = capsys.readouterr().out
    assert "| self_distill (λ=5) |" in text and str(out) in text
    assert out.is_file() and (tmp_path / "r" / "index.md").is_file()
    assert (tmp_path / "r" / "index_files" / "frontier.png").is_file()


def test_cli_report_without_runs_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = f"out={tmp_path / 'r.html'}"
    assert main(["report", f"runs=[{tmp_path / 'nowhere'}]", out]) != 0
    assert "nowhere" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", f"runs=[{tmp_path / 'empty'}]", out]) != 0
    err = capsys.readouterr().err
    assert "no run folders" in err and "empty" in err
    assert main(["report", out]) != 0
    assert "runs" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_report_renders_in_chromium(report: Path, tmp_path: Path) -> None:
    from PIL import Image

    png = tmp_path / "shot.png"
    command = [
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--screenshot={png}",
        "--window-size=1200,2400",
        report.resolve().as_uri(),
    ]
    subprocess.run(command, capture_output=True, timeout=60, check=False)
    assert png.is_file()
    with Image.open(png) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200  # text, tables and plots, not a blank page


# --- analyses (analysis.json) ------------------------------------------------------------------


def _png() -> bytes:
    """A small PNG drawn with matplotlib."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.0, 0.8))
    FigureCanvasAgg(fig)
    fig.subplots().plot([0, 1, 2], [0.0, 0.3, 0.2])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=40)
    return buffer.getvalue()


def _summary(kind: str, figure: str) -> AnalysisSummary:
    return AnalysisSummary(
        kind=kind,
        title=f"The {kind} analysis <&>",
        description=f"What the {kind} analysis measures; higher is more.",
        tables=[
            AnalysisTable(
                f"{kind} per run",
                ["method", "run", "distance", "steps"],
                [["sft", "runs/sft", 0.123456, 20], ["self_distill", "runs/sd", None, 30]],
            )
        ],
        figures=[AnalysisFigure(figure, f"The {kind} figure.")],
    )


def _write_analysis(folder: Path, kind: str, png: bytes) -> AnalysisSummary:
    folder.mkdir(parents=True)
    (folder / f"{kind}.png").write_bytes(png)
    summary = _summary(kind, f"{kind}.png")
    write_summary(folder, summary)
    return summary


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``demo/runs/sft_s0`` (a run), ``demo/analyze/drift`` and ``extra/keys`` (analyses)."""
    root = tmp_path_factory.mktemp("study")
    method, seed, kl, *series = RUNS["sft_s0"]
    acc = dict(zip(SPLITS, series, strict=True))
    write_run(root / "demo" / "runs" / "sft_s0", method, seed, kl, acc)
    png = _png()
    _write_analysis(root / "demo" / "analyze" / "drift", "drift", png)
    _write_analysis(root / "extra" / "keys", "keys", png)
    return {"root": root, "demo": root / "demo", "extra": root / "extra"}


def test_summary_round_trip(tmp_path: Path) -> None:
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "a.png").write_bytes(_png())
    summary = _summary("drift", "plots/a.png")
    summary.tables[0].rows.append(["sd", "x", float("nan"), 1])
    path = write_summary(tmp_path, summary)
    assert path == tmp_path / "analysis.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert set(doc) == {"kind", "title", "description", "tables", "figures"}
    assert doc["tables"][0]["rows"][2] == ["sd", "x", None, 1]  # NaN is written as null
    assert doc["figures"] == [{"file": "plots/a.png", "caption": "The drift figure."}]
    summary.tables[0].rows[2][2] = None
    assert read_summary(tmp_path) == summary


def test_write_summary_checks_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"field 'figures\[0\]\.file': no such file"):
        write_summary(tmp_path, _summary("drift", "drift.png"))
    (tmp_path / "drift.png").write_bytes(_png())
    bad = _summary("drift", "drift.png")
    bad.tables[0].rows[0].pop()
    with pytest.raises(ValueError, match=r"'tables\[0\]\.rows\[0\]': has 3 cells for 4 columns"):
        write_summary(tmp_path, bad)
    assert not (tmp_path / "analysis.json").exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("title"), "analysis.json: field 'title': missing"),
        (lambda d: d.update(kind=3), "analysis.json: field 'kind': must be a non-empty string"),
        (lambda d: d.update(figure=[]), "analysis.json: field 'figure': unknown field"),
        (
            lambda d: d["tables"][0]["rows"][1].append(1),
            "analysis.json: field 'tables[0].rows[1]': has 5 cells for 4 columns",
        ),
        (
            lambda d: d["tables"][0]["rows"][0].__setitem__(2, [0.1]),
            "field 'tables[0].rows[0][2]': must be a string, a number or null, got list",
        ),
        (
            lambda d: d["figures"][0].update(file="gone.png"),
            "analysis.json: field 'figures[0].file': no such file",
        ),
        (
            lambda d: d["figures"][0].update(file="../drift.png"),
            "field 'figures[0].file': must be a path inside the analysis folder",
        ),
        (None, "analysis.json:1: not valid JSON"),
    ],
)
def test_cli_report_rejects_a_bad_analysis_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: Any, message: str
) -> None:
    folder = tmp_path / "an" / "drift"
    _write_analysis(folder, "drift", _png())
    path = folder / "analysis.json"
    if edit is None:
        path.write_text("{not json")
    else:
        doc = json.loads(path.read_text(encoding="utf-8"))
        edit(doc)
        path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"analysis\.json"):
        read_summary(folder)
    out = tmp_path / "r" / "report.html"
    assert main(["report", f"analyses=[{tmp_path / 'an'}]", f"out={out}"]) == 1
    err = capsys.readouterr().err
    assert message in err and str(path) in err
    assert not (tmp_path / "r").exists()


def test_cli_report_with_runs_and_analyses(
    study: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.html"
    args = [f"runs=[{study['demo']}]", f"analyses=[{study['extra']}]", f"out={out}"]
    assert main(["report", *args]) == 0
    printed = capsys.readouterr().out
    assert "| sft |" in printed and "The drift analysis" in printed and "2 analyses" in printed
    html = out.read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == 5  # 3 run figures + 1 per analysis
    assert html.index("<h2>Runs</h2>") < html.index("<h2>The keys analysis &lt;&amp;&gt;</h2>")
    assert html.index("The keys analysis") < html.index("The drift analysis")  # analyses= first
    for text in (
        "What the drift analysis measures; higher is more.",
        "<caption>drift per run</caption>",
        "<td>runs/sd</td>",
        '<td class="num">0.1235</td>',
        '<td class="num">—</td>',
        "<figcaption>The keys figure.</figcaption>",
    ):
        assert text in html
    md = out.with_suffix(".md").read_text(encoding="utf-8")
    assert "## The drift analysis <&>" in md and "_drift per run_" in md
    assert "| sft | runs/sft | 0.1235 | 20 |" in md
    for name, source in (("drift-drift.png", study["demo"] / "analyze" / "drift" / "drift.png"),
                         ("keys-keys.png", study["extra"] / "keys" / "keys.png")):  # fmt: skip
        assert f"](report_files/{name})" in md
        assert (tmp_path / "report_files" / name).read_bytes() == source.read_bytes()


def test_cli_report_finds_analyses_under_runs(
    study: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.html"
    assert main(["report", f"runs=[{study['root']}]", f"out={out}"]) == 0
    html = out.read_text(encoding="utf-8")
    assert "The drift analysis" in html and "The keys analysis" in html
    assert "<h2>Comparison</h2>" in html and "1 runs" in capsys.readouterr().out


def test_cli_report_of_analyses_only(
    study: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "an.html"
    assert main(["report", f"analyses=[{study['demo'] / 'analyze'}]", f"out={out}"]) == 0
    html = out.read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == 1
    assert "The drift analysis" in html and "Comparison" not in html and "1 analysis ·" in html
    assert (tmp_path / "an_files" / "drift-drift.png").is_file()
    assert "1 analysis. Report:" in capsys.readouterr().out
    # an analyses folder holding no analysis.json, or nothing at all, is a config error
    assert main(["report", f"analyses=[{study['demo'] / 'runs'}]", f"out={out}"]) == 2
    assert "analyses: no analysis.json in" in capsys.readouterr().err
    assert main(["report", "runs=[]", "analyses=[]", f"out={tmp_path / 'none.html'}"]) == 2
    assert "runs= or analyses= is required" in capsys.readouterr().err
    assert not (tmp_path / "none.html").exists()


def test_phase_lines_sit_where_the_next_phase_begins() -> None:
    from factkeep.eval.plots import _phase_starts

    rows = [
        {"phase": "format", "step": 0},
        {"phase": "format", "step": 8},  # the format phase ends at step 8
        {"phase": "main", "step": 40},  # first evaluation of the main phase (every 2 epochs)
        {"phase": "main", "step": 72},
        {"phase": "patch", "step": 80},
    ]
    assert _phase_starts(rows) == [8, 72]
    assert _phase_starts(rows[2:4]) == []


def test_a_change_every_run_shares_is_named_once(tmp_path: Path) -> None:
    for name, method, kl in (
        ("a", "sft", 0.0),
        ("b", "self_distill", 1.0),
        ("c", "self_distill", 5.0),
    ):
        write_run(tmp_path / name, method, 0, kl, {s: [1, 0.5, 0.5] for s in SPLITS})
        config = yaml.safe_load((tmp_path / name / "config.yaml").read_text())
        config["optim"] = {"lr": 3e-4, "epochs": 8.0}
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump(config))
    runs = [load_run(tmp_path / name) for name in "abc"]
    rows = comparison_rows(runs)
    assert [r.label for r in rows] == ["sft", "self_distill", "self_distill (λ=5)"]
    assert rows[0].shared == {"optim.epochs": 8.0, "optim.lr": 3e-4}
    build_report(runs, tmp_path / "r.html", "shared")
    assert "Every run here uses epochs=8, lr=0.0003 instead of" in (tmp_path / "r.md").read_text()
    alone = comparison_rows(runs[:1])  # one method: nothing is factored out
    assert alone[0].label == "sft (epochs=8, lr=0.0003)" and alone[0].shared == {}
