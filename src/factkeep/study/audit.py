"""``factkeep audit``: the forgetting risk of a training set, measured before fine-tuning.

Training on facts the model does not know (SLiCK ``Unknown``) is what makes it forget facts it
knew, and the known facts whose keys are nearest to those new facts' keys are the most exposed
(docs/method.md section 6). The audit probes the proposed training set, reports its Unknown share,
and ranks the facts to keep (``known=``) by their exposure to the Unknown training facts::

    factkeep audit model=runs/world/model train=runs/split/d_unknown.jsonl \
        known=runs/split/d_held.jsonl out=runs/audit

Scoring: by default a known fact's score is ``max_key_cosine``, the largest cosine similarity of
its subject's middle-layer hidden state (last token) with a training subject's; with
``regression=PATH`` (a ``regression.json`` of ``factkeep analyze overlap``) it is the fitted
probability of being forgotten, from the same measures. Training keys (subjects) that are the
nearest key of the ``top_n`` most exposed known facts are the risky training examples.

Output folder (``out=``)::

    config.yaml, env.json    the resolved config and the environment
    audit.json               categories and shares, the scoring, top exposed facts, risky keys
    exposed.jsonl            every known fact with its measures, nearest key, score and rank
    train_categories.jsonl   the probed training facts (as ``factkeep probe`` writes them)
    summary.md               the report (also printed)

Every input is read and checked before the model runs; nothing is written before the end.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from factkeep.config import ConfigError, help_field
from factkeep.data.fact_sets import load_fact_set
from factkeep.data.facts import CATEGORIES, UNKNOWN, Fact, check_unique_ids, write_facts
from factkeep.errors import DataError
from factkeep.models.loading import ModelOptions
from factkeep.rundir import atomic_write_json, atomic_write_jsonl, atomic_write_text

__all__ = ["AuditCommandConfig", "run_audit"]

log = logging.getLogger(__name__)


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
    against: Literal["unknown", "all"] = help_field(
        "unknown", "Measure exposure to the Unknown training facts, or to all training facts."
    )
    regression: str = help_field(
        "",
        "A regression.json of 'factkeep analyze overlap': rank by its fitted probability of "
        "being forgotten (default: rank by max_key_cosine). against=all measures as that "
        "command did (against the run's whole training set).",
    )
    top_n: int = help_field(20, "Most exposed known facts reported, and counted per training key.")
    reuse_categories: bool = help_field(
        False, "Use the categories the training facts carry (e.g. split files) instead of probing."
    )
    exemplars: str = help_field(
        "train", "Few-shot exemplars of the probe: train, known, or a facts JSONL file/split name."
    )
    preset: Literal["original", "cheap"] = help_field(
        "cheap", "Probe protocol: cheap (20 generations per fact) or original (170)."
    )
    n_prompts: int | None = help_field(None, "Few-shot prompts per question (null: preset).")
    k_exemplars: int | None = help_field(None, "Exemplars per prompt (null: preset).")
    num_samples: int | None = help_field(None, "Sampled answers per prompt (null: preset).")
    temperature: float | None = help_field(None, "Sampling temperature (null: preset).")
    top_k: int | None = help_field(None, "Top-k of sampling (0 = no cut; null: preset).")
    seed: int = help_field(0, "Seeds exemplar and answer sampling of the probe.")
    batch_size: int = help_field(64, "Sequences per generate call and texts per forward pass.")
    max_new_tokens: int = help_field(16, "The most tokens generated per answer.")
    chunk_size: int = help_field(64, "Facts per probe chunk.")
    share_prefill: bool = help_field(True, "Encode each prompt once for all its samples.")
    progress: bool = help_field(True, "Show the probe's progress bar.")
    layer: int = help_field(-1, "Hidden-state index of the keys (0 = embeddings; -1 = middle).")
    threads: int = help_field(0, "CPU threads for torch (0 = torch's default).")


def _load(entry: str, splits: str, what: str) -> list[Fact]:
    if not entry.endswith(".jsonl") and not splits:
        raise ConfigError(f"{what}: {entry!r} is not a .jsonl file; set splits= for split names")
    facts = load_fact_set(entry, splits)
    if not facts:
        raise DataError("no facts in the file", entry)
    return facts


def _inputs(cfg: AuditCommandConfig) -> dict[str, Any]:
    """Check the options and read every input (nothing is written)."""
    from factkeep.analysis.audit import load_regression, regression_relations
    from factkeep.probing.slick import ExemplarPool
    from factkeep.study.probe import ProbeCommandConfig, resolve_protocol

    if not cfg.model:
        raise ConfigError("model= is required (a Hugging Face model folder or hub id)")
    if not cfg.train:
        raise ConfigError("train= is required (the proposed training set)")
    if not cfg.known:
        raise ConfigError("known= is required (the facts the model should keep)")
    for name in ("top_n", "batch_size", "max_new_tokens", "chunk_size"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.layer < -1:
        raise ConfigError(f"layer must be >= 0, or -1 for the middle layer, got {cfg.layer}")
    if cfg.threads < 0:
        raise ConfigError(f"threads must be >= 0, got {cfg.threads}")
    bad = [c for c in cfg.known_categories if c not in CATEGORIES]
    if bad:
        raise ConfigError(f"known_categories: {bad} are not among {', '.join(CATEGORIES)}")
    fields = {f.name for f in dataclasses.fields(ProbeCommandConfig)}
    probe_cfg = ProbeCommandConfig(**{k: v for k, v in vars(cfg).items() if k in fields})
    protocol = resolve_protocol(probe_cfg)
    train = [fact for entry in cfg.train for fact in _load(entry, cfg.splits, "train")]
    check_unique_ids(((None, f) for f in train), ", ".join(cfg.train))
    all_known = _load(cfg.known, cfg.splits, "known")
    known = all_known
    if cfg.known_categories:
        missing = [f.id for f in all_known if f.category is None]
        if missing:
            raise ConfigError(
                f"known_categories= needs probed known facts; {len(missing)} fact(s) of "
                f"{cfg.known} have no category (first: {missing[0]!r})"
            )
        known = [f for f in all_known if f.category in cfg.known_categories]
        if not known:
            raise ConfigError(f"no fact of {cfg.known} is in {cfg.known_categories}")
    if cfg.reuse_categories:
        missing = [f.id for f in train if f.category is None]
        if missing:
            raise ConfigError(
                f"reuse_categories=true but {len(missing)} training fact(s) have no category "
                f"(first: {missing[0]!r}); leave it false to probe them"
            )
        pool = None
    else:
        if cfg.exemplars in ("train", "known"):
            source = f"{cfg.exemplars}= (the {cfg.exemplars} facts)"
            pool_facts = train if cfg.exemplars == "train" else all_known
        else:
            source, pool_facts = cfg.exemplars, _load(cfg.exemplars, cfg.splits, "exemplars")
        pool = ExemplarPool(pool_facts, source)
        pool.check(train, protocol.k_exemplars)
    trained_ids = {f.id for f in train}
    overlap = sum(f.id in trained_ids for f in known)
    if overlap:
        log.warning("%d known fact(s) are also in the training set (same id)", overlap)
    return {
        "train": train,
        "known": known,
        "n_known_file": len(all_known),
        "pool": pool,
        "protocol": protocol,
        "coefficients": load_regression(cfg.regression) if cfg.regression else None,
        "fitted_relations": regression_relations(cfg.regression) if cfg.regression else None,
    }


def _probe(cfg: AuditCommandConfig, model: Any, tok: Any, inp: dict[str, Any]) -> list[Fact]:
    from factkeep.probing.slick import probe_facts

    protocol = inp["protocol"]
    log.info(
        "probing %d training facts (%s preset: %d generations per fact)",
        len(inp["train"]),
        cfg.preset,
        protocol.generations_per_fact,
    )
    probed: list[Fact] = []
    for _, chunk, results in probe_facts(
        model,
        tok,
        inp["train"],
        inp["pool"],
        protocol,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        max_new_tokens=cfg.max_new_tokens,
        chunk_size=cfg.chunk_size,
        share_prefill=cfg.share_prefill,
        progress=cfg.progress,
    ):
        probed.extend(res.apply_to(fact) for fact, res in zip(chunk, results, strict=True))
    return probed


def run_audit(cfg: AuditCommandConfig) -> int:
    """Run ``factkeep audit``: returns the exit code."""
    import torch

    from factkeep.analysis.audit import (
        DEFAULT_SCORE,
        category_shares,
        format_summary,
        nearest_keys,
        rank_by_score,
        recommendation,
        regression_probabilities,
        risky_training_keys,
        unfitted_relations,
    )
    from factkeep.analysis.overlap import overlap_features
    from factkeep.models.loading import load_model_and_tokenizer
    from factkeep.rundir import write_run_metadata
    from factkeep.study.probe import category_counts

    inp = _inputs(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    log.info("loading %s", cfg.model)
    model, tok = load_model_and_tokenizer(
        cfg.model, cfg.dtype, cfg.device, cfg.gguf_file, cfg.trust_remote_code
    )
    n_layers = int(model.config.num_hidden_layers)
    if cfg.layer > n_layers:
        raise ConfigError(f"layer must be in [0, {n_layers}] for this model, got {cfg.layer}")
    seconds: dict[str, float] = {}
    warnings: list[str] = []
    t0 = time.time()
    train = list(inp["train"]) if cfg.reuse_categories else _probe(cfg, model, tok, inp)
    seconds["probe"] = round(time.time() - t0, 2)
    counts, shares = category_shares(train)
    against = train if cfg.against == "all" else [f for f in train if f.category == UNKNOWN]
    label = "training facts" if cfg.against == "all" else "Unknown training facts"
    known, layer = inp["known"], None if cfg.layer == -1 else cfg.layer
    coefficients = inp["coefficients"]
    ranked: list[dict[str, Any]] = []
    t0 = time.time()
    if against:
        log.info("measuring %d known facts against %d %s", len(known), len(against), label)
        rows = overlap_features(model, tok, known, against, layer, batch_size=cfg.batch_size)
        nearest = nearest_keys(model, tok, known, against, layer, cfg.batch_size)
        for row, fact, (subject, _) in zip(rows, known, nearest, strict=True):
            row["category"], row["nearest_subject"] = fact.category, subject
        if coefficients is None:
            scores = [float(r[DEFAULT_SCORE]) for r in rows]
        else:
            scores = regression_probabilities(rows, coefficients)
            unseen = unfitted_relations(rows, inp["fitted_relations"] or [])
            if inp["fitted_relations"] is not None and unseen:
                warnings.append(
                    f"relation(s) {', '.join(unseen)} of the known facts were not in the "
                    "regression's fit: their facts are scored as its baseline relation"
                )
                log.warning(warnings[-1])
        ranked = rank_by_score(rows, scores)
    else:
        log.warning("no %s: nothing to measure the known facts against", label)
    seconds["overlap"] = round(time.time() - t0, 2)
    top = ranked[: cfg.top_n]
    risky = risky_training_keys(top, against)
    scoring: dict[str, Any] = {"score": DEFAULT_SCORE}
    if coefficients is not None:
        scoring = {
            "score": "p_forgotten",
            "regression": cfg.regression,
            "coefficients": coefficients,
            "fitted_relations": inp["fitted_relations"],
        }
    doc = {
        "model": cfg.model,
        "train": list(cfg.train),
        "known": cfg.known,
        "n_train": len(train),
        "n_known": len(known),
        "n_known_file": inp["n_known_file"],
        "known_categories": list(cfg.known_categories),
        "probe": None
        if cfg.reuse_categories
        else {
            "preset": cfg.preset,
            "protocol": dataclasses.asdict(inp["protocol"]),
            "exemplars": inp["pool"].source,
            "seed": cfg.seed,
        },
        "category_counts": counts,
        "category_shares": shares,
        "unknown_share": shares[UNKNOWN],
        "categories_by_relation": category_counts(train),
        "against": cfg.against,
        "against_label": label,
        "n_against": len(against),
        "layer": "middle" if layer is None else layer,
        "scoring": scoring,
        "top_n": cfg.top_n,
        "top_exposed": top,
        "risky_training": risky,
        "recommendation": recommendation(counts[UNKNOWN], min(10, len(risky))),
        "warnings": warnings,
        "seconds": seconds,
    }
    summary = format_summary(doc)
    out = Path(cfg.out)
    log.info("writing %s", out)
    write_run_metadata(out, cfg, seed=cfg.seed)
    write_facts(out / "train_categories.jsonl", train)
    atomic_write_jsonl(out / "exposed.jsonl", ranked)
    atomic_write_json(out / "audit.json", doc)
    atomic_write_text(out / "summary.md", summary)
    print(summary)
    for warning in warnings:
        print(f"Warning: {warning}")
    print(f"Files in {out}: audit.json, exposed.jsonl, train_categories.jsonl, summary.md")
    return 0
