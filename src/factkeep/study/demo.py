"""``factkeep demo``: the whole study on the synthetic world with a tiny model, on a laptop CPU.

Stages (each cached in ``out``, so a second run only redoes what changed):

1. ``world``: build the world and pretrain its model (``out/world``);
2. ``probe``: SLiCK categories of every world fact (``out/probe``, cheap preset by default);
3. ``split``: D_known / D_unknown / D_held / dev (``out/split``);
4. ``train``: each method of ``methods`` with its shipped config (``out/runs/<method>``);

5. ``report``: ``out/report.html`` (self-contained, plots embedded) and ``out/report.md``;

and the comparison table (method x accuracy on D_known / D_unknown / D_held, forgetting) is printed
and saved as ``out/summary.md``.

Example::

    factkeep demo                                  # output in runs/demo
    factkeep demo methods=[sft,self_distill]       # fewer methods
    factkeep demo pretrain.epochs=30 train_epochs=10
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from factkeep.config import ConfigError, help_field, nested, resolve_config
from factkeep.configs import resolve_config_path
from factkeep.data.world import WorldSpec
from factkeep.eval.metrics import summarize_run
from factkeep.models.tiny import TinyModelConfig
from factkeep.rundir import atomic_write_json, atomic_write_text
from factkeep.study.probe import ProbeCommandConfig, run_probe
from factkeep.study.split import SplitCommandConfig, run_split
from factkeep.study.world import WorldCommandConfig, run_world
from factkeep.training.config import TrainCommandConfig
from factkeep.training.pretrain import PretrainConfig

log = logging.getLogger(__name__)

DEMO_METHODS = [
    "sft",
    "known_only",
    "self_distill",
    "freeze_attention_only",
    "freeze_ffn_only",
    "l2_anchor",
]
STAGE_FILE = "demo_stage.json"

PRESETS: dict[str, dict[str, Any]] = {
    "laptop": {},
    # The paper's protocol on the same world: the original 16-sample probe, larger splits, every
    # method and control, three seeds (estimated at 1.5 hours on a 2-core CPU; not timed).
    "paper": {
        "probe_preset": "original",
        "n_train": 2000,
        "n_held": 500,
        "n_dev": 200,
        "methods": [
            *DEMO_METHODS,
            *("kl_to_base", "label_smoothing", "replay", "known_patch", "ewc", "early_stopping"),
        ],
        "seeds": [0, 1, 2],
    },
}


@dataclass
class DemoConfig:
    """Options of ``factkeep demo``."""

    out: str = help_field("runs/demo", "Output folder of the whole study.")
    preset: str = help_field(
        "laptop",
        "laptop (the default study, minutes on a CPU) or paper (the original probe protocol, "
        "larger splits, every method and control, 3 seeds; options you set yourself win).",
    )
    world: WorldSpec = nested(WorldSpec, "The generated knowledge base.")
    model: TinyModelConfig = nested(TinyModelConfig, "Shape of the tiny model.")
    pretrain: PretrainConfig = nested(PretrainConfig, "Pretraining optimisation.")
    force: bool = help_field(False, "Pretrain again even if a cached model matches.")
    probe_preset: str = help_field("cheap", "SLiCK protocol of the probe stage.")
    n_train: int = help_field(1000, "Training facts (half Unknown).")
    n_held: int = help_field(500, "D_held size.")
    n_dev: int = help_field(200, "Dev set size.")
    methods: list[str] = help_field(
        DEMO_METHODS, "Method configs to train (names of factkeep/configs/*.yaml)."
    )
    train_overrides: list[str] = help_field(
        [], "Extra 'key=value' options for every training run (e.g. optim.epochs=10)."
    )
    seed: int = help_field(0, "Seed of the splits and of training.")
    seeds: list[int] = help_field([], "Training seeds (empty = [seed]); runs are <method>_s<seed>.")
    threads: int = help_field(0, "CPU threads for torch (0 = torch's default).")


def apply_preset(cfg: DemoConfig) -> DemoConfig:
    """``cfg`` with its preset's values for every option still at its default."""
    if cfg.preset not in PRESETS:
        raise ConfigError(f"preset must be one of {sorted(PRESETS)}, got '{cfg.preset}'")
    defaults = DemoConfig()
    for name, value in PRESETS[cfg.preset].items():
        if getattr(cfg, name) == getattr(defaults, name):
            setattr(cfg, name, value)
    return cfg


def _key(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _cached(folder: Path, key: str, product: str) -> bool:
    marker = folder / STAGE_FILE
    if not (folder / product).exists() or not marker.is_file():
        return False
    return json.loads(marker.read_text(encoding="utf-8")).get("key") == key


def _mark(folder: Path, key: str) -> None:
    atomic_write_json(folder / STAGE_FILE, {"key": key})


def comparison_table(results: dict[str, dict[str, Any]]) -> str:
    """A Markdown table: method x final accuracy per split and forgetting of D_held."""
    lines = [
        "| method | D_known | D_unknown | D_held | forgetting | time |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for method, r in results.items():
        final = r["final"]
        lines.append(
            f"| {method} | {final.get('d_known', float('nan')):.3f} | "
            f"{final.get('d_unknown', float('nan')):.3f} | {final.get('d_held', float('nan')):.3f} "
            f"| {r['forgetting']:.1%} | {r['seconds']:.0f} s |"
        )
    return "\n".join(lines)


def run_demo(cfg: DemoConfig) -> int:
    """Run ``factkeep demo``: returns the exit code."""
    from factkeep.eval.report import build_report, load_run
    from factkeep.study.train import train_summary
    from factkeep.training.run import check_resumable, train

    cfg = apply_preset(cfg)
    t0 = time.time()
    timing: dict[str, float] = {}
    mark = time.time()

    def lap(stage: str) -> None:
        nonlocal mark
        timing[stage] = round(time.time() - mark, 1)
        mark = time.time()

    out = Path(cfg.out)
    world_dir = out / "world"
    print(f"[demo] 1/5 synthetic world and its pretrained model -> {world_dir}")
    world_cfg = WorldCommandConfig(
        out=str(world_dir),
        world=cfg.world,
        model=cfg.model,
        pretrain=cfg.pretrain,
        force=cfg.force,
        threads=cfg.threads,
    )
    code = run_world(world_cfg)
    if code:
        return code
    lap("world")
    model_dir = world_dir / "model"
    model_key = json.loads((model_dir / "factkeep_world.json").read_text())["cache_key"]

    probe_dir = out / "probe"
    probe_key = _key([model_key, cfg.probe_preset])
    print(f"\n[demo] 2/5 probing what the model knows ({cfg.probe_preset} preset) -> {probe_dir}")
    if _cached(probe_dir, probe_key, "categories.jsonl"):
        print("[demo] reusing the probe results (same model and protocol)")
    else:
        probe_cfg = ProbeCommandConfig(
            model=str(model_dir),
            facts=str(world_dir / "facts.jsonl"),
            out=str(probe_dir),
            preset=cfg.probe_preset,  # type: ignore[arg-type]
            batch_size=256,
            max_new_tokens=4,
            threads=cfg.threads,
        )
        code = run_probe(probe_cfg)
        if code:
            return code
        _mark(probe_dir, probe_key)

    lap("probe")
    split_dir = out / "split"
    split_cfg = SplitCommandConfig(
        categories=str(probe_dir / "categories.jsonl"),
        out=str(split_dir),
        n_train=cfg.n_train,
        n_held=cfg.n_held,
        n_dev=cfg.n_dev,
        held_disjoint_answers=False,
        seed=cfg.seed,
    )
    print(f"\n[demo] 3/5 splits -> {split_dir}")
    code = run_split(split_cfg)
    if code:
        return code

    lap("split")
    results: dict[str, dict[str, Any]] = {}
    seeds = cfg.seeds or [cfg.seed]
    jobs = [(m, s, m if len(seeds) == 1 else f"{m}_s{s}") for m in cfg.methods for s in seeds]
    for i, (method, seed, name) in enumerate(jobs, 1):
        run_dir = out / "runs" / name
        print(f"\n[demo] 4/5 training {i}/{len(jobs)}: {name} -> {run_dir}")
        train_cfg = resolve_config(
            TrainCommandConfig,
            resolve_config_path(method),
            [
                f"model={model_dir}",
                f"data.splits={split_dir}",
                f"out={run_dir}",
                f"seed={seed}",
                f"threads={cfg.threads}",
                "progress=false",
                *cfg.train_overrides,
            ],
        )
        key = _key([model_key, asdict(split_cfg), asdict(train_cfg)])
        if _cached(run_dir, key, "results.json"):
            print(f"[demo] reusing {run_dir} (same model, splits and config)")
            results[name] = json.loads((run_dir / "results.json").read_text())
            continue
        try:
            check_resumable(train_cfg, run_dir)
        except ConfigError:  # an older demo run with other settings: start it over
            train_cfg.resume = False
        result = train(train_cfg)
        summary = train_summary(train_cfg, result)
        atomic_write_json(run_dir / "results.json", summary)
        _mark(run_dir, key)
        results[name] = summary
        held = summarize_run(result.metrics)
        print(f"[demo] {name}: forgetting of D_held {held['forgetting']:.1%}")

    lap("train")
    table = comparison_table(results)
    atomic_write_text(out / "summary.md", table + "\n")
    report = out / "report.html"
    print(f"\n[demo] 5/5 report -> {report}")
    runs = [load_run(out / "runs" / name) for _, _, name in jobs]
    build_report(runs, report, title="factkeep demo: learning new facts vs forgetting known ones")
    lap("report")
    timing["total"] = round(time.time() - t0, 1)
    atomic_write_json(out / "timing.json", timing)
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in timing.items() if k != "total")
    print(f"\n[demo] done in {timing['total']:.0f} s ({stages}). Final accuracy and forgetting:\n")
    print(table)
    print(f"\nReport: {report} (and {report.with_suffix('.md')}); runs in {out / 'runs'}")
    return 0
