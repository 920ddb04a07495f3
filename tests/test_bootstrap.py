"""Bootstrap intervals over facts and seeds (factkeep.eval.bootstrap)."""

from __future__ import annotations

import json
from pathlib import Path

from factkeep.eval.bootstrap import bootstrap_intervals, correctness_matrix


def _run(root: Path, name: str, held_right: list[int], n: int = 100) -> Path:
    """A run folder whose D_held facts are right at the first evaluation, then ``held_right[i]``
    of them at evaluation i + 1 (D_unknown: all wrong, then all right)."""
    run = root / name
    (run / "samples").mkdir(parents=True)
    steps = [n, *held_right]
    for e, right in enumerate(steps):
        rows = [{"split": "d_held", "id": f"h{i}", "correct": i < right} for i in range(n)]
        rows += [{"split": "d_unknown", "id": f"u{i}", "correct": e > 0} for i in range(20)]
        text = "".join(json.dumps(r) + "\n" for r in rows)
        (run / "samples" / f"step-{10 * e:06d}.jsonl").write_text(text)
    return run


def test_matrix_follows_the_evaluations(tmp_path) -> None:
    ids, matrix = correctness_matrix(_run(tmp_path, "a", [90, 80]), "d_held")
    assert len(ids) == 100 and matrix.shape == (3, 100)
    assert matrix.mean(axis=1).tolist() == [1.0, 0.9, 0.8]
    assert correctness_matrix(tmp_path / "a", "nope")[1].size == 0


def test_one_run_interval_covers_the_estimate_with_binomial_width(tmp_path) -> None:
    ci = bootstrap_intervals([_run(tmp_path, "a", [80])])
    low, high = ci["forgetting"]
    assert low < 0.2 < high
    assert 0.10 < high - low < 0.22  # about 2 x 1.96 x sqrt(0.2 x 0.8 / 100) = 0.157
    assert ci["d_held"][0] < 0.8 < ci["d_held"][1]
    assert ci["d_unknown"] == (1.0, 1.0)  # every fact right: no uncertainty


def test_seeds_widen_the_interval_and_resampling_is_seeded(tmp_path) -> None:
    one = bootstrap_intervals([_run(tmp_path, "a", [90])])
    two = bootstrap_intervals([tmp_path / "a", _run(tmp_path, "b", [70])])
    assert two["forgetting"][0] < 0.2 < two["forgetting"][1]  # the mean of 0.1 and 0.3
    assert two["forgetting"][1] - two["forgetting"][0] > one["forgetting"][1] - one["forgetting"][0]
    assert bootstrap_intervals([tmp_path / "a"]) == one
    assert bootstrap_intervals([tmp_path / "a"], seed=1) != one
    assert bootstrap_intervals([tmp_path / "missing"]) == {}


def test_report_rows_carry_the_intervals(tmp_path) -> None:
    from factkeep.eval.report import comparison_rows, load_run, table_cells

    runs = []
    for name, right in (("a", 90), ("b", 70)):
        run = _run(tmp_path, name, [right])
        final = {"d_held": right / 100, "d_unknown": 1.0}
        results = {"method": "sft", "seed": len(runs), "final": final}
        results["forgetting"] = 1 - right / 100
        (run / "results.json").write_text(json.dumps(results))
        (run / "config.yaml").write_text(f"method: sft\nseed: {len(runs)}\n")
        runs.append(load_run(run))
    (row,) = comparison_rows(runs)
    low, high = row.intervals["forgetting"]
    assert low < 0.2 < high
    cells = table_cells(row)
    assert cells[4] == f"20.0 ± 14.1 [{100 * low:.1f}, {100 * high:.1f}]"  # forgetting column


def test_paired_difference_is_narrower_than_the_two_intervals(tmp_path) -> None:
    from factkeep.eval.bootstrap import paired_difference

    # b keeps the same 70 facts as a (and those only): a fact-by-fact subset, 20 points fewer.
    a, b = _run(tmp_path, "a", [90]), _run(tmp_path, "b", [70])
    diff, (low, high) = paired_difference([a], [b], "d_held")
    assert abs(diff - 0.2) < 1e-9 and low < 0.2 < high
    width_a, width_b = (
        ci[1] - ci[0] for ci in (bootstrap_intervals([run])["d_held"] for run in (a, b))
    )
    unpaired = (width_a**2 + width_b**2) ** 0.5  # the two runs' intervals taken as independent
    assert high - low < 0.8 * unpaired  # paired: the facts both get right cancel out
    assert paired_difference([a], [b], "nope") is None


def test_report_lists_the_differences_from_sft(tmp_path) -> None:
    from factkeep.eval.report import comparison_rows, load_run, paired_rows

    runs = []
    for name, method, right in (("a", "sft", 70), ("b", "known_only", 90)):
        run = _run(tmp_path, name, [right])
        results = {"method": method, "seed": 0, "final": {"d_held": right / 100}}
        results["forgetting"] = 1 - right / 100
        (run / "results.json").write_text(json.dumps(results))
        (run / "config.yaml").write_text(f"method: {method}\nseed: 0\n")
        runs.append(load_run(run))
    (row,) = paired_rows(comparison_rows(runs))
    assert row[0] == "known_only" and row[2].startswith("+20.0 [")
    assert paired_rows(comparison_rows(runs[1:])) == []  # no sft row: no paired table
