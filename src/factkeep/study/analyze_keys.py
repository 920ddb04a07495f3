"""``factkeep analyze keys``: does forgetting depend on what new facts' keys look like?

The key-type experiment of docs/method.md section 6. For each key type (``name_like``: pieces of
known names recombined; ``uuid``: random hex strings), value kind and scale (number of new
facts), it fine-tunes the model on synthetic new facts of one relation (an ordinary
``factkeep train`` run, default method ``sft``) and measures the forgetting of held-out known
facts of the same relation and of the other relations, plus how many new facts were learned.

What the three hypotheses predict: *capacity*, forgetting that grows with the scale whatever the
keys; *behaviour cloning*, forgetting whenever unknown facts are trained, whatever the keys;
*localised interference*, forgetting that depends on the keys' overlap with stored entities
(name-like >> UUID at equal scale). The paper measured 38-41% vs 0-4% at 10^6 facts.

Output folder (``out=``)::

    config.yaml, env.json
    sets/held_same.jsonl, sets/held_other.jsonl       the held facts, by relation
    runs/<key>-<value>-n<scale>-s<seed>/             one training run per condition
    keys.json        one row per condition: forgetting (same / other relation / all), learned
    keys.png         forgetting of held facts vs scale, one line per key type and value kind
    keys.md          the table

Example (synthetic world; the model and splits of ``factkeep demo``)::

    factkeep analyze keys model=runs/demo/world/model held=runs/demo/split/d_held.jsonl \\
        pieces_from=[runs/demo/world/facts.jsonl] scales=[100,300,1000] out=runs/analyze/keys
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from factkeep.analysis.keys import KEY_TYPES, VALUE_KINDS, new_facts
from factkeep.analysis.summary import AnalysisFigure, AnalysisSummary, AnalysisTable, write_summary
from factkeep.config import ConfigError, help_field, resolve_config
from factkeep.configs import resolve_config_path
from factkeep.data.facts import Fact, read_facts, write_facts
from factkeep.eval.document import md_table
from factkeep.eval.plots import figure_png, style_axes
from factkeep.models.loading import ModelOptions, load_model_and_tokenizer
from factkeep.rundir import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    write_run_metadata,
)
from factkeep.training.config import TrainCommandConfig
from factkeep.training.run import train
from factkeep.training.summary import forgetting

__all__ = ["KeysCommandConfig", "keys_png", "keys_summary", "keys_table", "run_keys"]

log = logging.getLogger(__name__)

PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {"scales": [100, 300, 1000, 3000]},
    "paper": {"scales": [1000, 10000, 100000, 1000000]},
}


@dataclass
class KeysCommandConfig(ModelOptions):
    """Options of ``factkeep analyze keys``."""

    held: str = help_field(
        "", "Required. Held-out known facts (JSONL) whose forgetting is measured."
    )
    pieces_from: list[str] = help_field(
        [],
        "Facts files whose subjects give the name pieces and may not be reused as keys (default: "
        "the held facts). For the synthetic world, its facts.jsonl (every person).",
    )
    relation: str = help_field("", "Relation of the new facts (default: the commonest in held).")
    key_types: list[str] = help_field(list(KEY_TYPES), "Key types: name_like, uuid.")
    value_kinds: list[str] = help_field(["relation"], "Value kinds: relation, random.")
    preset: str = help_field("cpu", "Scales preset: cpu (10^2..3·10^3) or paper (10^3..10^6).")
    scales: list[int] = help_field([], "Numbers of new facts (overrides the preset).")
    seeds: list[int] = help_field([0], "Seeds (facts and training).")
    method: str = help_field("sft", "Training config (a shipped name or a YAML path).")
    epochs: float = help_field(10.0, "Epochs over the new facts (at least; see min_steps).")
    min_steps: int = help_field(
        200,
        "At least this many optimiser steps per run (small sets get more epochs, so that every "
        "scale is trained long enough to learn its facts).",
    )
    lr: float = help_field(1e-4, "Learning rate.")
    batch_size: int = help_field(32, "Batch size.")
    train: list[str] = help_field([], "Extra train options (key=value) for every run.")
    eval_new: int = help_field(200, "New facts evaluated per run (a fixed subsample; 0 = all).")
    out: str = help_field("runs/analyze/keys", "Output folder.")
    threads: int = help_field(0, "CPU threads for torch (0 = torch's default).")
    progress: bool = help_field(False, "Show the training progress bars.")

    def resolved_scales(self) -> list[int]:
        """The scales to run."""
        if self.scales:
            return list(self.scales)
        if self.preset not in PRESETS:
            raise ConfigError(f"preset must be one of {sorted(PRESETS)}, got '{self.preset}'")
        return list(PRESETS[self.preset]["scales"])


def _check(cfg: KeysCommandConfig) -> None:
    """Raise :class:`~factkeep.config.ConfigError` on a missing or invalid option."""
    if not cfg.model:
        raise ConfigError("model= is required")
    if not cfg.held:
        raise ConfigError("held= is required: the known facts whose forgetting is measured")
    bad = [k for k in cfg.key_types if k not in KEY_TYPES]
    bad += [v for v in cfg.value_kinds if v not in VALUE_KINDS]
    if bad or not cfg.key_types or not cfg.value_kinds:
        raise ConfigError(
            f"key_types must be among {KEY_TYPES} and value_kinds among {VALUE_KINDS}; got {bad}"
        )
    if any(s < 1 for s in cfg.resolved_scales()):
        raise ConfigError("scales must be positive")


def run_epochs(cfg: KeysCommandConfig, scale: int) -> float:
    """Epochs of a run on ``scale`` facts: ``epochs``, or more to reach ``min_steps``."""
    return max(cfg.epochs, cfg.min_steps * cfg.batch_size / scale)


def _train_config(
    cfg: KeysCommandConfig, run: Path, sets: dict[str, Path], seed: int, scale: int
) -> TrainCommandConfig:
    """The checked train config of one condition's run (``sets``: its data files)."""
    overrides = [
        f"model={cfg.model}",
        f"dtype={cfg.dtype}",
        f"device={cfg.device}",
        f"data.train=[{sets['new']}]",
        f"data.eval=[{sets['held_same']},{sets['held_other']},{sets['new_eval']}]",
        f"out={run}",
        f"seed={seed}",
        f"threads={cfg.threads}",
        f"progress={str(cfg.progress).lower()}",
        "eval.each_epoch=false",
        "save_total_limit=1",
        f"optim.epochs={run_epochs(cfg, scale):.4g}",
        f"optim.lr={cfg.lr}",
        f"optim.batch_size={cfg.batch_size}",
        *cfg.train,
    ]
    if cfg.gguf_file:
        overrides.append(f"gguf_file={cfg.gguf_file}")
    train_cfg = resolve_config(TrainCommandConfig, resolve_config_path(cfg.method), overrides)
    train_cfg.validate()
    return train_cfg


def _row(name: str, key: str, value: str, scale: int, seed: int, metrics: list[dict]) -> dict:
    """One condition's row of keys.json, from its run's evaluations (``metrics``)."""

    def curve(split: str) -> list[float]:
        return [r["acc"][split] for r in metrics if split in r["acc"]]

    same, other = curve("held_same"), curve("held_other")
    n_same, n_other = metrics[0]["n"]["held_same"], metrics[0]["n"]["held_other"]
    both = [
        (a * n_same + b * n_other) / (n_same + n_other) for a, b in zip(same, other, strict=True)
    ]
    return {
        "run": name,
        "key_type": key,
        "value_kind": value,
        "scale": scale,
        "seed": seed,
        "forgetting_same": forgetting(same),
        "forgetting_other": forgetting(other),
        "forgetting": forgetting(both),
        "held_start": both[0],
        "held_final": both[-1],
        "new_learned": curve("new_eval")[-1],
    }


def keys_table(rows: list[dict]) -> str:
    """Markdown table: mean over seeds per key type, value kind and scale."""
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["key_type"], r["value_kind"], r["scale"]), []).append(r)
    header = [
        *("keys", "values", "new facts", "forgetting (same rel.)", "forgetting (other rel.)"),
        *("forgetting (all held)", "new facts learned", "seeds"),
    ]
    cells = []
    for (key, value, scale), rs in sorted(groups.items()):

        def mean(field: str, rs: list[dict] = rs) -> float:
            return sum(r[field] for r in rs) / len(rs)

        cells.append(
            [key, value, str(scale)]
            + [f"{mean(k):.1%}" for k in ("forgetting_same", "forgetting_other", "forgetting")]
            + [f"{mean('new_learned'):.1%}", str(len(rs))]
        )
    return md_table(header, cells)


def keys_summary(rows: list[dict], relation: str) -> AnalysisSummary:
    """The report section of the experiment (one table row per condition, the plot)."""
    columns = [
        *("key type", "values", "new facts", "seed", "forgetting, same relation"),
        *("forgetting, other relations", "forgetting, all held", "new facts learned"),
    ]
    cells = [
        [r["key_type"], r["value_kind"], r["scale"], r["seed"]]
        + [f"{r[k]:.1%}" for k in ("forgetting_same", "forgetting_other", "forgetting")]
        + [f"{r['new_learned']:.1%}"]
        for r in rows
    ]
    return AnalysisSummary(
        kind="keys",
        title="Key types: forgetting vs number of new facts",
        description=(
            f"The model was fine-tuned on synthetic new facts of relation '{relation}' whose keys "
            "are recombined pieces of known names (name_like) or random hex strings (uuid). "
            "Forgetting is the relative decline of held-out known facts' accuracy. Interference "
            "predicts name-like keys forget more at equal scale; capacity predicts forgetting "
            "growing with scale for both; behaviour cloning predicts forgetting for both."
        ),
        tables=[AnalysisTable("One training run per row", columns, cells)],
        figures=[AnalysisFigure("keys.png", "Forgetting of held facts vs new facts trained.")],
    )


def keys_png(rows: list[dict]) -> bytes:
    """Forgetting of held facts vs number of new facts (log scale), per key type / value kind."""
    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    colors = {"name_like": "#c0392b", "uuid": "#2471a3"}
    series: dict[tuple[str, str], dict[int, list[float]]] = {}
    for r in rows:
        series.setdefault((r["key_type"], r["value_kind"]), {}).setdefault(r["scale"], []).append(
            100 * r["forgetting"]
        )
    for (key, value), by_scale in sorted(series.items()):
        xs = sorted(by_scale)
        ys = [sum(by_scale[x]) / len(by_scale[x]) for x in xs]
        style = "-" if value == "relation" else "--"
        ax.plot(
            xs,
            ys,
            style,
            marker="o" if value == "relation" else "s",
            markerfacecolor="white" if value == "random" else None,
            color=colors.get(key, "#555555"),
            label=f"{key} keys, {value} values",
        )
    ax.set_xscale("log")
    ax.set_xlabel("new facts trained (log scale)")
    ax.set_ylabel("forgetting of held facts (%)")
    ax.set_title("Forgetting of held facts by the key type of the new facts")
    style_axes(ax)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return figure_png(fig)


@dataclass
class _Plan:
    """One condition of the experiment: its facts, data files and train config."""

    name: str
    key: str
    value: str
    scale: int
    seed: int
    facts: list[Fact]
    sets: dict[str, Path]
    train_cfg: TrainCommandConfig


def _read_inputs(cfg: KeysCommandConfig) -> tuple[list[Fact], list[Fact], str]:
    """The held facts, the facts giving the name pieces, and the relation of the new facts."""
    held = read_facts(cfg.held)
    pieces = [f for path in cfg.pieces_from for f in read_facts(path)] or held
    relation = cfg.relation or Counter(f.relation for f in held).most_common(1)[0][0]
    if relation not in {f.relation for f in pieces} or relation not in {f.relation for f in held}:
        raise ConfigError(f"relation '{relation}': no facts of it in {cfg.held} or pieces_from")
    if all(f.relation == relation for f in held):
        raise ConfigError(
            f"{cfg.held}: every held fact is of '{relation}': none of another relation"
        )
    return held, pieces, relation


def _held_sets(out: Path) -> dict[str, Path]:
    """The files of the held facts, of the same relation and of the others."""
    return {
        "held_same": out / "sets" / "held_same.jsonl",
        "held_other": out / "sets" / "held_other.jsonl",
    }


def _plans(
    cfg: KeysCommandConfig, out: Path, pieces: list[Fact], relation: str, tokenizer: Any
) -> list[_Plan]:
    """Every condition's new facts and train config (nothing is written)."""
    conditions = [
        (k, v, n, s)
        for k in cfg.key_types
        for v in cfg.value_kinds
        for n in cfg.resolved_scales()
        for s in cfg.seeds
    ]
    plans = []
    for key, value, scale, seed in conditions:
        rng = random.Random(f"{seed}-{key}-{value}-{scale}")
        try:
            facts = new_facts(
                key,  # type: ignore[arg-type]
                value,  # type: ignore[arg-type]
                scale,
                pieces,
                relation,
                tokenizer,
                rng,
                exclude_subjects=[f.subject for f in pieces],
            )
        except ValueError as exc:
            raise ConfigError(f"cannot make {scale} {key} facts: {exc}") from exc
        name = f"{key}-{value}-n{scale}-s{seed}"
        data = out / "sets" / name
        sets = {**_held_sets(out), "new": data / "new.jsonl", "new_eval": data / "new_eval.jsonl"}
        train_cfg = _train_config(cfg, out / "runs" / name, sets, seed, scale)
        train_cfg.method = f"keys_{key}_{value}"
        plans.append(_Plan(name, key, value, scale, seed, facts, sets, train_cfg))
    return plans


def _run_plans(cfg: KeysCommandConfig, out: Path, plans: list[_Plan], relation: str) -> list[dict]:
    """Train every condition in turn; keys.json is rewritten after each. Returns the rows."""
    rows: list[dict] = []
    start = time.perf_counter()
    for i, plan in enumerate(plans, 1):
        write_facts(plan.sets["new"], plan.facts)
        n_eval = min(cfg.eval_new or len(plan.facts), len(plan.facts))
        write_facts(plan.sets["new_eval"], random.Random(plan.seed).sample(plan.facts, n_eval))
        log.info("[%d/%d] %s: %d new facts of %s", i, len(plans), plan.name, plan.scale, relation)
        result = train(plan.train_cfg)
        row = _row(plan.name, plan.key, plan.value, plan.scale, plan.seed, result.metrics)
        rows.append(row)
        log.info(
            "[%d/%d] %s: forgetting %.1f%% (same relation %.1f%%, other %.1f%%), new learned "
            "%.1f%%, %.0f s elapsed",
            i, len(plans), plan.name, 100 * row["forgetting"], 100 * row["forgetting_same"],
            100 * row["forgetting_other"], 100 * row["new_learned"], time.perf_counter() - start,
        )  # fmt: skip
        atomic_write_json(out / "keys.json", {"relation": relation, "rows": rows})
    return rows


def run_keys(cfg: KeysCommandConfig) -> int:
    """Run ``factkeep analyze keys``: returns the exit code."""
    _check(cfg)
    held, pieces, relation = _read_inputs(cfg)
    _, tokenizer = load_model_and_tokenizer(
        cfg.model, dtype=cfg.dtype, device="cpu", gguf_file=cfg.gguf_file
    )
    out = Path(cfg.out)
    # Every condition's facts and train config are built before anything is written.
    plans = _plans(cfg, out, pieces, relation, tokenizer)
    write_run_metadata(out, cfg)
    sets = _held_sets(out)
    write_facts(sets["held_same"], [f for f in held if f.relation == relation])
    write_facts(sets["held_other"], [f for f in held if f.relation != relation])
    rows = _run_plans(cfg, out, plans, relation)
    table = keys_table(rows)
    atomic_write_text(out / "keys.md", table + "\n")
    atomic_write_bytes(out / "keys.png", keys_png(rows))
    write_summary(out, keys_summary(rows, relation))
    print(f"\nKey-type experiment: new facts of relation '{relation}' ({len(held)} held facts)\n")
    print(table)
    print(f"\nWrote {out / 'keys.json'}, {out / 'keys.md'} and {out / 'keys.png'}")
    return 0
