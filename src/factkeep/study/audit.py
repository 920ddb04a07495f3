"""``factkeep audit``: what a planned fine-tune will make the model forget, before running it.

Training on facts the model does not know (SLiCK ``Unknown``) is what makes it forget facts it
knew (docs/method.md section 1). The audit probes the proposed training set, reports its Unknown
share, and forecasts which of the facts to keep (``known=``) the fine-tune will make it forget::

    factkeep audit model=runs/demo/world/model splits=runs/demo/split \
        train=[d_known,d_unknown] known=d_held optim.epochs=8 optim.lr=3e-4 out=runs/audit

The planned fine-tune's options are ``optim.*`` and ``template=``, as ``factkeep train`` takes
them, or ``plan=`` (a run folder, a train config YAML or a shipped config name) to read them from.

Scoring (``score=``, docs/audit.md):

- ``trial`` (default): run the first ``trial.fraction`` of the planned SFT run's steps (its
  ``optim.*``, as ``factkeep train`` takes them, at ``trial.lr_scale`` times its learning rate)
  and rank the known facts by their answer log-probability afterwards, lowest first. The weights
  are restored; nothing is saved.
- ``confidence``: the answer log-probability before any training, lowest first.
- ``keys``: ``max_key_cosine``, the largest cosine similarity of a fact's subject key with an
  Unknown training subject's (or, with ``regression=PATH``, the fitted probability of being
  forgotten of ``factkeep analyze overlap``).

The report quotes how well the score forecast forgetting in validation (``bench/audit_forecast.py``)
and, with ``validate=RUN`` (a finished fine-tune of the same model on the same set), how well it
forecast that run. It lists the facts at risk, and recommends replaying them, only when the score
is not known to be weak.

Output folder (``out=``)::

    config.yaml, env.json    the resolved config and the environment
    audit.json               categories and shares, the scoring and its validation, top facts
    exposed.jsonl            every known fact with its measures, score and rank (1 = most at risk)
    at_risk.jsonl            the top ``at_risk`` share of the known facts, as facts (a replay pool)
    train_categories.jsonl   the probed training facts (as ``factkeep probe`` writes them)
    summary.md               the report (also printed)

The probe's options are the ``probe.*`` section, those of ``factkeep probe`` (see
:class:`~factkeep.study.probe.ProbeOptions`; default ``probe.preset=cheap``), e.g.
``probe.n_prompts=2 probe.batch_size=16``; ``probe.batch_size`` also sets the texts per forward
pass of the key measures.

Every input is read and checked before the model runs; nothing is written before the end.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from factkeep.analysis.audit import (
    DEFAULT_SCORE,
    category_shares,
    forecast_strength,
    format_summary,
    load_regression,
    nearest_keys,
    rank_by_score,
    recommendation,
    regression_probabilities,
    regression_relations,
    risky_training_keys,
    unfitted_relations,
)
from factkeep.analysis.forecast import forgotten_in_run, trial_forecast, validation
from factkeep.analysis.overlap import answer_log_probs, overlap_features
from factkeep.config import ConfigError, help_field, load_saved_config, nested
from factkeep.configs import resolve_config_path
from factkeep.data.fact_sets import load_fact_set
from factkeep.data.facts import CATEGORIES, UNKNOWN, Fact, check_unique_ids, write_facts
from factkeep.data.prompts import DEFAULT_TEMPLATE
from factkeep.errors import DataError
from factkeep.models.loading import ModelOptions, load_model_and_tokenizer
from factkeep.probing.slick import ExemplarPool, ProbeProtocol, probe_facts
from factkeep.rundir import (
    atomic_write_json,
    atomic_write_jsonl,
    atomic_write_text,
    write_run_metadata,
)
from factkeep.study.probe import ProbeOptions, category_counts, resolve_protocol
from factkeep.training.config import OptimConfig, TrainCommandConfig
from factkeep.training.run_folder import RunFolder
from factkeep.training.trial import TrialRecipe, autocast_dtype, planned_steps

__all__ = ["AuditCommandConfig", "TrialOptions", "run_audit"]

log = logging.getLogger(__name__)


@dataclass
class TrialOptions:
    """The trial fine-tune of ``score=trial``."""

    fraction: float = help_field(0.1, "Share of the planned run's optimiser steps the trial runs.")
    steps: int = help_field(0, "Trial steps (0 = fraction x the planned run's steps).")
    lr_scale: float = help_field(
        2.0, "The trial's learning rate in multiples of optim.lr (2 forecast best: docs/audit.md)."
    )
    seed: int = help_field(0, "Seed of the trial's example order.")
    measure_before: bool = help_field(
        False, "Also measure the known facts before the trial (their change goes in exposed.jsonl)."
    )


@dataclass
class AuditCommandConfig(ModelOptions):
    """Options of ``factkeep audit``."""

    trust_remote_code: bool = help_field(False, "Allow model code from the hub.")
    train: list[str] = help_field(
        [],
        "The proposed training set (required): facts or TRL prompt/completion JSONL files, or "
        "split names read from splits= (e.g. d_known,d_unknown).",
    )
    known: str = help_field(
        "", "Facts the model should keep (required): a JSONL file or a split name (e.g. d_held)."
    )
    splits: str = help_field("", "Split folder for split names in train=/known=/exemplars=.")
    out: str = help_field("runs/audit", "Output folder.")
    known_categories: list[str] = help_field(
        [], "Keep only known facts of these categories, e.g. HighlyKnown,MaybeKnown (default: all)."
    )
    score: Literal["trial", "confidence", "keys"] = help_field(
        "trial",
        "How known facts are ranked: a trial fine-tune (the validated forecast), the answer "
        "confidence before training, or the key-overlap measures (see docs/audit.md).",
    )
    plan: str = help_field(
        "",
        "The planned fine-tune as 'factkeep train' takes it: a run folder (its config.yaml), a "
        "train config YAML or a shipped config name (sft, ...). Its optim.* and data.template "
        "replace those options here (set one or the other).",
    )
    optim: OptimConfig = nested(
        OptimConfig,
        "The planned fine-tune, as 'factkeep train' takes it (optim.epochs, optim.lr, "
        "optim.batch_size, optim.mixed_precision, ...): score=trial runs its first steps.",
    )
    template: str = help_field(DEFAULT_TEMPLATE, "Prompt template of the planned fine-tune.")
    trial: TrialOptions = nested(TrialOptions, "The trial fine-tune of score=trial.")
    at_risk: float = help_field(
        0.1, "Share of the known facts, most at risk first, written to at_risk.jsonl."
    )
    validate: str = help_field(
        "",
        "A finished run folder (a fine-tune of this model on this set): report how well the "
        "ranking forecast which known facts it forgot.",
    )
    validate_reference: Literal["start", "all"] = help_field(
        "start",
        "Which known facts count in validate=: those right at the run's first evaluation, or all "
        "of them (for a model that learns the answer format in fine-tuning).",
    )
    against: Literal["unknown", "all"] = help_field(
        "unknown",
        "score=keys: measure exposure to the Unknown training facts, or to all training facts.",
    )
    regression: str = help_field(
        "",
        "score=keys: a regression.json of 'factkeep analyze overlap': rank by its fitted "
        "probability of being forgotten (default: rank by max_key_cosine). against=all "
        "measures as that command did (against the run's whole training set).",
    )
    top_n: int = help_field(20, "Most exposed known facts reported.")
    reuse_categories: bool = help_field(
        False, "Use the categories the training facts carry (e.g. split files) instead of probing."
    )
    exemplars: str = help_field(
        "train", "Few-shot exemplars of the probe: train, known, or a facts JSONL file/split name."
    )
    probe: ProbeOptions = nested(
        ProbeOptions,
        "How the training facts are probed, as in 'factkeep probe' (default preset: cheap); "
        "probe.batch_size also sets the texts per forward pass of the measures.",
        factory=lambda: ProbeOptions(preset="cheap"),
    )
    layer: int = help_field(-1, "Hidden-state index of the keys (0 = embeddings; -1 = middle).")
    threads: int = help_field(0, "CPU threads for torch (0 = torch's default).")


@dataclass
class _Inputs:
    """Everything the audit reads, checked before the model runs."""

    train: list[Fact]
    known: list[Fact]
    n_known_file: int
    pool: ExemplarPool | None
    protocol: ProbeProtocol
    coefficients: dict[str, float] | None
    fitted_relations: list[str] | None
    forgotten: dict[str, int] | None


@dataclass
class _Ranking:
    """The known facts ranked (most at risk first), with what the scoring adds to audit.json."""

    rows: list[dict[str, Any]]
    scoring: dict[str, Any]
    warnings: list[str]
    nearest_keys: bool = False


def _load(entry: str, splits: str, what: str) -> list[Fact]:
    """The facts of a JSONL file or split name (``what``: the option, named in errors)."""
    if not entry.endswith(".jsonl") and not splits:
        raise ConfigError(f"{what}: {entry!r} is not a .jsonl file; set splits= for split names")
    facts = load_fact_set(entry, splits)
    if not facts:
        raise DataError("no facts in the file", entry)
    return facts


def _check_options(cfg: AuditCommandConfig) -> None:
    """Raise :class:`~factkeep.config.ConfigError` on a missing or out-of-range option."""
    if not cfg.model:
        raise ConfigError("model= is required (a Hugging Face model folder or hub id)")
    if not cfg.train:
        raise ConfigError("train= is required (the proposed training set)")
    if not cfg.known:
        raise ConfigError("known= is required (the facts the model should keep)")
    if cfg.top_n < 1:
        raise ConfigError(f"top_n must be >= 1, got {cfg.top_n}")
    if not 0 < cfg.at_risk <= 1:
        raise ConfigError(f"at_risk must be in (0, 1], got {cfg.at_risk}")
    cfg.probe.validate_sizes("probe.")
    _check_trial(cfg)
    if cfg.regression and cfg.score != "keys":
        raise ConfigError("regression= ranks by the key measures: set score=keys with it")
    if cfg.layer < -1:
        raise ConfigError(f"layer must be >= 0, or -1 for the middle layer, got {cfg.layer}")
    if cfg.threads < 0:
        raise ConfigError(f"threads must be >= 0, got {cfg.threads}")
    bad = [c for c in cfg.known_categories if c not in CATEGORIES]
    if bad:
        raise ConfigError(f"known_categories: {bad} are not among {', '.join(CATEGORIES)}")


def _check_trial(cfg: AuditCommandConfig) -> None:
    """The trial's and the planned run's options."""
    trial, optim = cfg.trial, cfg.optim
    if not 0 < trial.fraction <= 1:
        raise ConfigError(f"trial.fraction must be in (0, 1], got {trial.fraction}")
    if trial.steps < 0:
        raise ConfigError(f"trial.steps must be >= 0, got {trial.steps}")
    if trial.lr_scale <= 0:
        raise ConfigError(f"trial.lr_scale must be > 0, got {trial.lr_scale}")
    if optim.lr <= 0 or optim.epochs <= 0:
        raise ConfigError(f"optim.lr and optim.epochs must be > 0, got {optim.lr}, {optim.epochs}")
    if optim.batch_size < 1 or optim.grad_accum < 1:
        raise ConfigError("optim.batch_size and optim.grad_accum must be >= 1")
    if cfg.score == "trial" and optim.optimizer != "adamw_torch":
        log.warning("the trial runs AdamW, not optim.optimizer=%s", optim.optimizer)


def _known_facts(cfg: AuditCommandConfig, all_known: list[Fact]) -> list[Fact]:
    """The known facts of ``known_categories`` (all of them without it)."""
    if not cfg.known_categories:
        return all_known
    missing = [f.id for f in all_known if f.category is None]
    if missing:
        raise ConfigError(
            f"known_categories= needs probed known facts; {len(missing)} fact(s) of "
            f"{cfg.known} have no category (first: {missing[0]!r})"
        )
    known = [f for f in all_known if f.category in cfg.known_categories]
    if not known:
        raise ConfigError(f"no fact of {cfg.known} is in {cfg.known_categories}")
    return known


def _exemplar_pool(
    cfg: AuditCommandConfig, train: list[Fact], all_known: list[Fact], protocol: ProbeProtocol
) -> ExemplarPool | None:
    """The probe's exemplar pool, checked against the training facts (None: nothing is probed,
    ``reuse_categories=true``)."""
    if cfg.reuse_categories:
        missing = [f.id for f in train if f.category is None]
        if missing:
            raise ConfigError(
                f"reuse_categories=true but {len(missing)} training fact(s) have no category "
                f"(first: {missing[0]!r}); leave it false to probe them"
            )
        return None
    if cfg.exemplars in ("train", "known"):
        source = f"{cfg.exemplars}= (the {cfg.exemplars} facts)"
        pool_facts = train if cfg.exemplars == "train" else all_known
    else:
        source, pool_facts = cfg.exemplars, _load(cfg.exemplars, cfg.splits, "exemplars")
    pool = ExemplarPool(pool_facts, source)
    pool.check(train, protocol.k_exemplars)
    return pool


def _forgotten(cfg: AuditCommandConfig, known: list[Fact]) -> dict[str, int] | None:
    """``validate=``: which known facts the finished run forgot (None without it)."""
    if not cfg.validate:
        return None
    if not RunFolder(cfg.validate).has_config:
        raise ConfigError(f"validate: {cfg.validate} is not a run folder (no config.yaml)")
    labels = forgotten_in_run(cfg.validate, [f.id for f in known], cfg.validate_reference)
    if not labels or sum(labels.values()) == 0:
        log.warning("validate: the run forgot none of the known facts; nothing to score")
    return labels


def _inputs(cfg: AuditCommandConfig) -> _Inputs:
    """Check the options and read every input (nothing is written)."""
    _check_options(cfg)
    protocol = resolve_protocol(cfg.probe)
    train = [fact for entry in cfg.train for fact in _load(entry, cfg.splits, "train")]
    check_unique_ids(((None, f) for f in train), ", ".join(cfg.train))
    all_known = _load(cfg.known, cfg.splits, "known")
    known = _known_facts(cfg, all_known)
    pool = _exemplar_pool(cfg, train, all_known, protocol)
    trained_ids = {f.id for f in train}
    overlap = sum(f.id in trained_ids for f in known)
    if overlap:
        log.warning("%d known fact(s) are also in the training set (same id)", overlap)
    return _Inputs(
        train=train,
        known=known,
        n_known_file=len(all_known),
        pool=pool,
        protocol=protocol,
        coefficients=load_regression(cfg.regression) if cfg.regression else None,
        fitted_relations=regression_relations(cfg.regression) if cfg.regression else None,
        forgotten=_forgotten(cfg, known),
    )


def _load_model(cfg: AuditCommandConfig) -> tuple[Any, Any]:
    """The model and tokenizer; checks ``layer`` against the model's depth."""
    log.info("loading %s", cfg.model)
    model, tok = load_model_and_tokenizer(
        cfg.model, cfg.dtype, cfg.device, cfg.gguf_file, cfg.trust_remote_code
    )
    n_layers = int(model.config.num_hidden_layers)
    if cfg.layer > n_layers:
        raise ConfigError(f"layer must be in [0, {n_layers}] for this model, got {cfg.layer}")
    return model, tok


def _categorised_train(cfg: AuditCommandConfig, model: Any, tok: Any, inp: _Inputs) -> list[Fact]:
    """The training facts with their SLiCK categories: probed, or as given with
    ``reuse_categories=true`` (no pool)."""
    if inp.pool is None:
        return list(inp.train)
    opts, protocol = cfg.probe, inp.protocol
    log.info(
        "probing %d training facts (%s preset: %d generations per fact)",
        len(inp.train),
        opts.preset,
        protocol.generations_per_fact,
    )
    probed: list[Fact] = []
    for _, chunk, results in probe_facts(
        model,
        tok,
        inp.train,
        inp.pool,
        protocol,
        seed=opts.seed,
        batch_size=opts.batch_size,
        max_new_tokens=opts.max_new_tokens,
        chunk_size=opts.chunk_size,
        share_prefill=opts.share_prefill,
        reuse_prefix=opts.reuse_prefix,
        progress=opts.progress,
    ):
        probed.extend(res.apply_to(fact) for fact, res in zip(chunk, results, strict=True))
    return probed


def _against_label(cfg: AuditCommandConfig) -> str:
    """What the known facts are measured against, in words."""
    return "training facts" if cfg.against == "all" else "Unknown training facts"


def _layer(cfg: AuditCommandConfig) -> int | None:
    """The hidden-state index of the keys (None: the middle layer)."""
    return None if cfg.layer == -1 else cfg.layer


def _base_rows(known: list[Fact]) -> list[dict[str, Any]]:
    """The identifying columns of each known fact's row."""
    return [
        {"id": f.id, "subject": f.subject, "relation": f.relation, "category": f.category}
        for f in known
    ]


def _recipe(cfg: AuditCommandConfig, n_train: int) -> tuple[TrialRecipe, int]:
    """The trial's recipe and the planned run's optimiser steps."""
    optim = cfg.optim
    planned = planned_steps(n_train, optim.epochs, optim.batch_size, optim.grad_accum)
    steps = cfg.trial.steps or max(1, round(cfg.trial.fraction * planned))
    recipe = TrialRecipe(
        steps=steps,
        lr=optim.lr * cfg.trial.lr_scale,
        batch_size=optim.batch_size,
        grad_accum=optim.grad_accum,
        weight_decay=optim.weight_decay,
        grad_clip=optim.grad_clip,
        mixed_precision=optim.mixed_precision,
        seed=cfg.trial.seed,
        template=cfg.template,
    )
    return recipe, planned


def _rank_trial(cfg: AuditCommandConfig, model: Any, tok: Any, inp: _Inputs) -> _Ranking:
    """``score=trial``: the known facts' answer log-probability after a trial fine-tune."""
    recipe, planned = _recipe(cfg, len(inp.train))
    log.info(
        "trial fine-tune: %d of the planned %d steps at lr %g, then %d known facts measured",
        recipe.steps,
        planned,
        recipe.lr,
        len(inp.known),
    )
    forecast = trial_forecast(
        model, tok, inp.known, inp.train, recipe, cfg.probe.batch_size, cfg.trial.measure_before
    )
    rows = _base_rows(inp.known)
    for i, row in enumerate(rows):
        row["log_prob_after"] = forecast.after[i]
        if forecast.before is not None:
            row["log_prob_before"] = forecast.before[i]
            row["log_prob_change"] = forecast.after[i] - forecast.before[i]
    scoring = {
        "score": "trial",
        "trial_steps": recipe.steps,
        "planned_steps": planned,
        "trial_share": recipe.steps / planned if planned else None,
        "trial_lr": recipe.lr,
        "trial_seed": recipe.seed,
        "trial_losses": [round(x, 4) for x in forecast.losses],
        "trial_seconds": round(forecast.seconds, 2),
        "measure": "minus the answer's mean token log-probability after the trial",
    }
    return _Ranking(rank_by_score(rows, forecast.risk), scoring, [])


def _rank_confidence(cfg: AuditCommandConfig, model: Any, tok: Any, inp: _Inputs) -> _Ranking:
    """``score=confidence``: the known facts' answer log-probability before training."""
    dtype = autocast_dtype(cfg.optim.mixed_precision)
    lp = answer_log_probs(model, tok, inp.known, cfg.template, cfg.probe.batch_size, dtype)
    rows = _base_rows(inp.known)
    for row, value in zip(rows, lp, strict=True):
        row["log_prob_before"] = value
    scoring = {"score": "confidence", "measure": "minus the answer's mean token log-probability"}
    return _Ranking(rank_by_score(rows, [-x for x in lp]), scoring, [])


def _rank_keys(
    cfg: AuditCommandConfig, model: Any, tok: Any, inp: _Inputs, against: list[Fact]
) -> _Ranking:
    """``score=keys``: every known fact's key measures against ``against``, scored by
    ``max_key_cosine`` or the regression."""
    known, layer, batch_size = inp.known, _layer(cfg), cfg.probe.batch_size
    log.info(
        "measuring %d known facts against %d %s", len(known), len(against), _against_label(cfg)
    )
    rows = overlap_features(model, tok, known, against, layer, batch_size=batch_size)
    nearest = nearest_keys(model, tok, known, against, layer, batch_size)
    for row, fact, (subject, _) in zip(rows, known, nearest, strict=True):
        row["category"], row["nearest_subject"] = fact.category, subject
    warnings: list[str] = []
    if inp.coefficients is None:
        scores = [float(r[DEFAULT_SCORE]) for r in rows]
        scoring: dict[str, Any] = {"score": "keys", "measure": DEFAULT_SCORE}
    else:
        scores = regression_probabilities(rows, inp.coefficients)
        scoring = {
            "score": "keys",
            "measure": "p_forgotten",
            "regression": cfg.regression,
            "coefficients": inp.coefficients,
            "fitted_relations": inp.fitted_relations,
        }
        unseen = unfitted_relations(rows, inp.fitted_relations or [])
        if inp.fitted_relations is not None and unseen:
            warnings.append(
                f"relation(s) {', '.join(unseen)} of the known facts were not in the "
                "regression's fit: their facts are scored as its baseline relation"
            )
            log.warning(warnings[-1])
    scoring["against"], scoring["against_label"] = cfg.against, _against_label(cfg)
    scoring["n_against"] = len(against)
    scoring["layer"] = "middle" if layer is None else layer
    return _Ranking(rank_by_score(rows, scores), scoring, warnings, nearest_keys=True)


def _rank(
    cfg: AuditCommandConfig, model: Any, tok: Any, inp: _Inputs, train: list[Fact]
) -> _Ranking:
    """The known facts ranked by ``cfg.score``."""
    if cfg.score == "trial":
        return _rank_trial(cfg, model, tok, inp)
    if cfg.score == "confidence":
        return _rank_confidence(cfg, model, tok, inp)
    against = train if cfg.against == "all" else [f for f in train if f.category == UNKNOWN]
    if not against:
        log.warning("no %s: nothing to measure the known facts against", _against_label(cfg))
        scoring = {"score": "keys", "against": cfg.against, "n_against": 0}
        scoring["against_label"] = _against_label(cfg)
        return _Ranking([], scoring, [], nearest_keys=True)
    return _rank_keys(cfg, model, tok, inp, against)


def _validation(cfg: AuditCommandConfig, inp: _Inputs, ranked: list[dict]) -> dict | None:
    """``validate=``: the ranking against what the run forgot, and the run's cost."""
    if inp.forgotten is None:
        return None
    doc = validation([r["id"] for r in ranked], [r["score"] for r in ranked], inp.forgotten)
    results = RunFolder(cfg.validate).results or {}
    costs = results.get("cost_seconds")
    seconds = sum(costs.values()) if isinstance(costs, dict) else results.get("seconds")
    doc.update(run=cfg.validate, reference=cfg.validate_reference, run_seconds=seconds)
    return doc


def _document(
    cfg: AuditCommandConfig,
    inp: _Inputs,
    train: list[Fact],
    ranking: _Ranking,
    seconds: dict[str, float],
) -> dict[str, Any]:
    """The content of audit.json."""
    counts, shares = category_shares(train)
    ranked = ranking.rows
    probe = None
    if inp.pool is not None:  # the training facts were probed
        probe = {
            "preset": cfg.probe.preset,
            "protocol": dataclasses.asdict(inp.protocol),
            "exemplars": inp.pool.source,
            "seed": cfg.probe.seed,
        }
    checked = _validation(cfg, inp, ranked)
    if checked is not None and checked.get("run_seconds"):
        checked["cost_share"] = seconds["forecast"] / float(checked["run_seconds"])
    strength = forecast_strength(cfg.score, checked)
    risky: list[dict[str, Any]] = []
    if ranking.nearest_keys:
        against = [f for f in train if cfg.against == "all" or f.category == UNKNOWN]
        risky = risky_training_keys(ranked[: cfg.top_n], against)
    n_at_risk = max(1, round(cfg.at_risk * len(ranked))) if ranked else 0
    return {
        "model": cfg.model,
        "train": list(cfg.train),
        "known": cfg.known,
        "n_train": len(train),
        "n_known": len(inp.known),
        "n_known_file": inp.n_known_file,
        "known_categories": list(cfg.known_categories),
        "probe": probe,
        "category_counts": counts,
        "category_shares": shares,
        "unknown_share": shares[UNKNOWN],
        "categories_by_relation": category_counts(train),
        "scoring": ranking.scoring,
        "validation": checked,
        "strength": strength,
        "top_n": cfg.top_n,
        "top_exposed": ranked[: cfg.top_n],
        "n_at_risk": n_at_risk,
        "nearest_training_keys": risky,
        "recommendation": recommendation(counts[UNKNOWN], strength, n_at_risk, cfg.known, cfg.out),
        "warnings": ranking.warnings,
        "seconds": seconds,
    }


def _write_outputs(
    cfg: AuditCommandConfig,
    doc: dict[str, Any],
    train: list[Fact],
    ranked: list[dict[str, Any]],
    known: list[Fact],
) -> None:
    """Write the output folder and print the report."""
    summary = format_summary(doc)
    out = Path(cfg.out)
    log.info("writing %s", out)
    by_id = {f.id: f for f in known}
    at_risk = [by_id[r["id"]] for r in ranked[: doc["n_at_risk"]]]
    write_run_metadata(out, cfg, seed=cfg.probe.seed)
    write_facts(out / "train_categories.jsonl", train)
    write_facts(out / "at_risk.jsonl", at_risk)
    atomic_write_jsonl(out / "exposed.jsonl", ranked)
    atomic_write_json(out / "audit.json", doc)
    atomic_write_text(out / "summary.md", summary)
    print(summary)
    for warning in doc["warnings"]:
        print(f"Warning: {warning}")
    print(
        f"Files in {out}: audit.json, exposed.jsonl, at_risk.jsonl, train_categories.jsonl, "
        "summary.md"
    )


def _apply_plan(cfg: AuditCommandConfig) -> AuditCommandConfig:
    """``cfg`` with ``plan=``'s optimiser options and prompt template (``cfg`` without it)."""
    if not cfg.plan:
        return cfg
    if cfg.optim != OptimConfig() or cfg.template != DEFAULT_TEMPLATE:
        raise ConfigError("plan= sets optim.* and template=: give them in one place, not both")
    path = Path(cfg.plan)
    if path.is_dir():
        path = RunFolder(path).config_path
        if not path.is_file():
            raise ConfigError(f"plan: {cfg.plan} is not a run folder (no config.yaml)")
    else:
        path = Path(resolve_config_path(cfg.plan))
        if not path.is_file():
            raise ConfigError(
                f"plan: {cfg.plan} is neither a run folder, a YAML file nor a shipped config"
            )
    planned = load_saved_config(TrainCommandConfig, path)
    return dataclasses.replace(cfg, optim=planned.optim, template=planned.data.template)


def run_audit(cfg: AuditCommandConfig) -> int:
    """Run ``factkeep audit``: returns the exit code."""
    cfg = _apply_plan(cfg)
    inp = _inputs(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    model, tok = _load_model(cfg)
    seconds: dict[str, float] = {}
    t0 = time.time()
    train = _categorised_train(cfg, model, tok, inp)
    seconds["probe"] = round(time.time() - t0, 2)
    t0 = time.time()
    ranking = _rank(cfg, model, tok, inp, train)
    seconds["forecast"] = round(time.time() - t0, 2)
    doc = _document(cfg, inp, train, ranking, seconds)
    _write_outputs(cfg, doc, train, ranking.rows, inp.known)
    return 0
