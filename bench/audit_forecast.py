"""Benchmark: does ``factkeep audit`` forecast what SFT forgets? And does replaying what it
forecasts help?

Reproduces the validation table of docs/audit.md from the commands a user runs:

1. **Validation.** For each SFT run of a demo folder (the demo's ``runs/sft``; with
   ``--seeds 0,1,2`` the other seeds are trained first with ``factkeep train``, the demo's SFT
   config and ``seed=N``), and for each score (``trial``, ``confidence``, ``keys``), it runs::

       factkeep audit model=<the run's model> plan=<the run> splits=<demo>/split \\
           train=[d_known,d_unknown] known=d_held score=<score> validate=<the run> \\
           reuse_categories=true

   and prints each score's AUC against "forgotten by that run", its top-decile forgetting rate over
   the base rate, and its cost over the run's (from the run's ``cost_seconds``). ``--reference
   all`` counts every D_held fact as known (the real-model study: the instruct model answers few
   of them in the bare Q/A format before fine-tuning, though the probe says it knows them all).

2. **Frontier** (``--frontier``). Forecast-guided replay against random replay in two settings,
   with the demo's SFT settings: replaying D_known while training on D_unknown (half the examples;
   the forecast's most-at-risk half of D_known, from ``factkeep audit train=[d_unknown]
   known=d_known``), and SFT replaying a tenth of D_held (the forecast's top 10%, from ``factkeep
   audit train=[d_known,d_unknown] known=d_held``, the ``forecast_replay`` config). Beside them
   ``sft``, ``self_distill`` and ``self_distill_nontarget`` (trained for seeds the demo did not
   train). It prints final D_unknown and D_held accuracy, the forgetting of D_held, and the
   accuracy on the D_held facts a run did not replay beside the same seed's SFT run's on the same
   facts, as the mean over seeds (with ``--reference all`` no forgetting column: it counts only
   the facts right at the start).

Everything it writes goes to ``<demo>/bench-audit`` (runs are reused when they finished). Run it
alone (two torch processes on two cores slow each other down), after ``factkeep demo``::

    python bench/audit_forecast.py --demo runs/demo --seeds 0,1,2 --frontier
    python bench/audit_forecast.py --demo runs/demo-real --reference all --frontier
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from factkeep.training.run_folder import RunFolder

SCORES = ("trial", "confidence", "keys")


def _factkeep(*args: str) -> None:
    """Run a factkeep command; stop the benchmark if it fails."""
    print("$ factkeep " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "factkeep", *args], check=True)


def _run_config(run: Path) -> dict[str, Any]:
    return yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))


def _finished(run: Path) -> bool:
    return (run / "results.json").is_file()


def _train(config: Path, out: Path, *overrides: str) -> Path:
    """``factkeep train --config config overrides out=out``, unless it finished already."""
    if not _finished(out):
        _factkeep("train", "--config", str(config), *overrides, f"out={out}", "resume=false")
    return out


def _sft_runs(demo: Path, seeds: list[int], bench: Path) -> dict[int, Path]:
    """The demo's SFT run for seed 0, new runs with the same config for the other seeds."""
    base = demo / "runs" / "sft"
    runs = {}
    for seed in seeds:
        if seed == int(_run_config(base)["seed"]):
            runs[seed] = base
        else:
            runs[seed] = _train(base / "config.yaml", bench / f"sft-{seed}", f"seed={seed}")
    return runs


def _plan_options(run: Path) -> list[str]:
    """The audit options that describe the run's fine-tune: its model, and ``plan=`` the run
    (its optimiser options and template)."""
    cfg = _run_config(run)
    model = [f"model={cfg['model']}", f"plan={run}"]
    if cfg.get("gguf_file"):
        model.append(f"gguf_file={cfg['gguf_file']}")
    return model


def _audit(out: Path, run: Path, splits: Path, *args: str) -> dict[str, Any]:
    """Run ``factkeep audit`` (unless ``out`` has its audit.json) and read audit.json."""
    if not (out / "audit.json").is_file():
        _factkeep(
            "audit", *_plan_options(run), f"splits={splits}", "reuse_categories=true",
            "threads=2", f"out={out}", *args,
        )  # fmt: skip
    return json.loads((out / "audit.json").read_text(encoding="utf-8"))


def _mean(values: list[float]) -> str:
    if not values:
        return "-"
    text = f"{statistics.fmean(values):.3f}"
    return text + (f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else "")


def validate(demo: Path, seeds: list[int], reference: str, bench: Path) -> None:
    """Step 1: every score against every SFT run; print the validation table."""
    runs = _sft_runs(demo, seeds, bench)
    rows = []
    for score in SCORES:
        found: dict[str, list[float]] = {"auc": [], "lift": [], "cost": [], "seconds": []}
        for seed, run in runs.items():
            doc = _audit(
                bench / f"audit-{score}-{seed}", run, demo / "split",
                "train=[d_known,d_unknown]", "known=d_held", f"score={score}",
                f"validate={run}", f"validate_reference={reference}",
            )  # fmt: skip
            checked = doc["validation"]
            found["auc"].append(checked["auc"])
            found["lift"].append(checked["top_decile_lift"])
            found["cost"].append(checked.get("cost_share") or 0.0)
            found["seconds"].append(doc["seconds"]["forecast"])
            base = checked["base_rate"]
            print(
                f"{score} vs seed {seed}: AUC {checked['auc']:.3f}, top decile "
                f"{checked['top_decile_lift']:.2f}x of base rate {100 * base:.1f}% "
                f"({checked['n_forgotten']}/{checked['n']}), cost {found['cost'][-1]:.3f}",
                flush=True,
            )
        rows.append((score, found))
    print(f"\nValidation on {demo} ({len(runs)} SFT run(s), seeds {seeds}; reference={reference})")
    print("| score | AUC | top decile / base rate | forecast s | cost / fine-tune |")
    print("|---|---:|---:|---:|---:|")
    for score, found in rows:
        print(
            f"| {score} | {_mean(found['auc'])} | {_mean(found['lift'])} | "
            f"{_mean(found['seconds'])} | {_mean(found['cost'])} |"
        )


def _final_held(run: Path) -> dict[str, bool]:
    """Whether each D_held fact is answered right at the run's last evaluation."""
    folder = RunFolder(run)
    rows = folder.samples(folder.sample_steps[-1])
    return {r.id: r.correct for r in rows if r.split == "d_held"}


def _outside(run: Path, sft: Path) -> tuple[float, float, int] | None:
    """Final accuracy on the D_held facts a replay run did not replay, SFT's on the same facts,
    and how many D_held facts it replayed (None: the run replays none of D_held)."""
    path = run / "replayed.json"
    if not path.is_file():
        return None
    replayed = set(json.loads(path.read_text(encoding="utf-8"))["ids"])
    final, base = _final_held(run), _final_held(sft)
    others = [i for i in final if i not in replayed]
    return (
        sum(final[i] for i in others) / len(others),
        sum(base[i] for i in others) / len(others),
        len(replayed & set(final)),
    )


def frontier(demo: Path, seeds: list[int], bench: Path, pools: list[str], reference: str) -> None:
    """Step 2: forecast-guided replay beside SFT, random replay and self-distillation.

    Two settings: replaying D_known (D_held stays held out), and replaying the 10% of D_held
    the forecast puts most at risk against a random 10% of it (``forecast_replay``'s config).
    """
    base = demo / "runs" / "sft"
    splits = demo / "split"
    pool_audit, held_audit = bench / "audit-pool", bench / "audit-held"
    if "d_known" in pools:
        _audit(pool_audit, base, splits, "train=[d_unknown]", "known=d_known")
    if "d_held" in pools:
        _audit(held_audit, base, splits, "train=[d_known,d_unknown]", "known=d_held")
    sft_seed = int(_run_config(base)["seed"])
    sft_config = base / "config.yaml"
    known_pool = ["data.train=[d_unknown]", "replay.fraction=0.5", "replay.pool=[d_known]"]
    held_pool = ["replay.fraction=0.1", "replay.pool=[d_held]"]
    variants: dict[str, list[str]] = {
        "replay (d_known, random)": ["method=replay", *known_pool],
        "forecast_replay (d_known, top 50%)": [
            "method=forecast_replay", *known_pool, f"replay.forecast={pool_audit}",
            "replay.forecast_share=0.5",
        ],
        "replay (d_held, random 10%)": ["method=replay", *held_pool],
        "forecast_replay (d_held, top 10%)": [
            "method=forecast_replay", *held_pool, f"replay.forecast={held_audit}",
            "replay.forecast_share=0.1",
        ],
    }  # fmt: skip
    results: dict[str, list[tuple[dict[str, Any], tuple[float, float, int] | None]]] = {}
    for seed in seeds:
        runs: dict[str, Path] = {}
        for method in ("sft", "self_distill", "self_distill_nontarget"):
            demo_run = demo / "runs" / method
            if seed == sft_seed and _finished(demo_run):
                runs[method] = demo_run
            elif (demo_run / "config.yaml").is_file():
                name = f"{method}-{seed}"
                runs[method] = _train(demo_run / "config.yaml", bench / name, f"seed={seed}")
        for name, overrides in variants.items():
            if not any(pool in name for pool in pools):
                continue
            folder = bench / (name.replace(" ", "_").replace(",", "").replace("(", "")
                              .replace(")", "").replace("%", "") + f"-{seed}")  # fmt: skip
            runs[name] = _train(sft_config, folder, f"seed={seed}", *overrides)
        for method, run in runs.items():
            result = json.loads((run / "results.json").read_text())
            outside = _outside(run, runs["sft"])
            results.setdefault(method, []).append((result, outside))
    print(f"\nFrontier on {demo} (seeds {seeds}; mean ± sd over seeds): final accuracy;")
    print("'not replayed': on the D_held facts a run did not replay, beside SFT's on those.")
    print("| method | runs | D_unknown | D_held | forgetting of D_held | D_held replayed | "
          "not replayed | SFT on those |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for method, found in results.items():
        unknown = [r["final"]["d_unknown"] for r, _ in found]
        held = [r["final"]["d_held"] for r, _ in found]
        # forgetting counts the facts right at the start: meaningless with reference=all
        forgetting = [r["forgetting"] for r, _ in found if r.get("forgetting") is not None]
        outside = [x for _, x in found if x is not None]
        print(
            f"| {method} | {len(found)} | {_mean(unknown)} | {_mean(held)} | "
            f"{_mean(forgetting) if reference == 'start' else '-'} | "
            f"{_mean([float(x[2]) for x in outside])} | {_mean([x[0] for x in outside])} | "
            f"{_mean([x[1] for x in outside])} |"
        )


def main() -> None:
    """Parse the options; validate, then (``--frontier``) place forecast-guided replay."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo", default="runs/demo", help="a factkeep demo output folder")
    parser.add_argument("--seeds", default="0", help="SFT training seeds, e.g. 0,1,2")
    parser.add_argument("--reference", choices=("start", "all"), default="start")
    parser.add_argument("--frontier", action="store_true", help="also run the replay frontier")
    parser.add_argument("--skip-validation", action="store_true")
    parser.add_argument(
        "--pools", default="d_known,d_held", help="replay pools of the frontier: d_known, d_held"
    )
    args = parser.parse_args()
    demo = Path(args.demo)
    bench = demo / "bench-audit"
    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.skip_validation:
        validate(demo, seeds, args.reference, bench)
    if args.frontier:
        frontier(demo, seeds, bench, args.pools.split(","), args.reference)


if __name__ == "__main__":
    main()
