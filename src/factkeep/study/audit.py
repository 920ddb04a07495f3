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
from factkeep.analysis.overlap import overlap_features
from factkeep.config import ConfigError, help_field, nested
from factkeep.data.fact_sets import load_fact_set
from factkeep.data.facts import CATEGORIES, UNKNOWN, Fact, check_unique_ids, write_facts
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
    probe: ProbeOptions = nested(
        ProbeOptions,
        "How the training facts are probed, as in 'factkeep probe' (default preset: cheap); "
        "probe.batch_size also sets the texts per forward pass of the key measures.",
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
    cfg.probe.validate_sizes("probe.")
    if cfg.layer < -1:
        raise ConfigError(f"layer must be >= 0, or -1 for the middle layer, got {cfg.layer}")
    if cfg.threads < 0:
        raise ConfigError(f"threads must be >= 0, got {cfg.threads}")
    bad = [c for c in cfg.known_categories if c not in CATEGORIES]
    if bad:
        raise ConfigError(f"known_categories: {bad} are not among {', '.join(CATEGORIES)}")


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


def _exposure(
    cfg: AuditCommandConfig, model: Any, tok: Any, inp: _Inputs, against: list[Fact]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Every known fact's measures against ``against``, scored and ranked (most exposed first),
    and the warnings of the scoring."""
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
    else:
        scores = regression_probabilities(rows, inp.coefficients)
        unseen = unfitted_relations(rows, inp.fitted_relations or [])
        if inp.fitted_relations is not None and unseen:
            warnings.append(
                f"relation(s) {', '.join(unseen)} of the known facts were not in the "
                "regression's fit: their facts are scored as its baseline relation"
            )
            log.warning(warnings[-1])
    return rank_by_score(rows, scores), warnings


def _scoring(cfg: AuditCommandConfig, inp: _Inputs) -> dict[str, Any]:
    """The ``scoring`` entry of audit.json: the score, and the regression if one is used."""
    if inp.coefficients is None:
        return {"score": DEFAULT_SCORE}
    return {
        "score": "p_forgotten",
        "regression": cfg.regression,
        "coefficients": inp.coefficients,
        "fitted_relations": inp.fitted_relations,
    }


def _document(
    cfg: AuditCommandConfig,
    inp: _Inputs,
    train: list[Fact],
    against: list[Fact],
    ranked: list[dict[str, Any]],
    warnings: list[str],
    seconds: dict[str, float],
) -> dict[str, Any]:
    """The content of audit.json."""
    counts, shares = category_shares(train)
    top = ranked[: cfg.top_n]
    risky = risky_training_keys(top, against)
    layer = _layer(cfg)
    probe = None
    if inp.pool is not None:  # the training facts were probed
        probe = {
            "preset": cfg.probe.preset,
            "protocol": dataclasses.asdict(inp.protocol),
            "exemplars": inp.pool.source,
            "seed": cfg.probe.seed,
        }
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
        "against": cfg.against,
        "against_label": _against_label(cfg),
        "n_against": len(against),
        "layer": "middle" if layer is None else layer,
        "scoring": _scoring(cfg, inp),
        "top_n": cfg.top_n,
        "top_exposed": top,
        "risky_training": risky,
        "recommendation": recommendation(counts[UNKNOWN], min(10, len(risky))),
        "warnings": warnings,
        "seconds": seconds,
    }


def _write_outputs(
    cfg: AuditCommandConfig, doc: dict[str, Any], train: list[Fact], ranked: list[dict[str, Any]]
) -> None:
    """Write the output folder and print the report."""
    summary = format_summary(doc)
    out = Path(cfg.out)
    log.info("writing %s", out)
    write_run_metadata(out, cfg, seed=cfg.probe.seed)
    write_facts(out / "train_categories.jsonl", train)
    atomic_write_jsonl(out / "exposed.jsonl", ranked)
    atomic_write_json(out / "audit.json", doc)
    atomic_write_text(out / "summary.md", summary)
    print(summary)
    for warning in doc["warnings"]:
        print(f"Warning: {warning}")
    print(f"Files in {out}: audit.json, exposed.jsonl, train_categories.jsonl, summary.md")


def run_audit(cfg: AuditCommandConfig) -> int:
    """Run ``factkeep audit``: returns the exit code."""
    inp = _inputs(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    model, tok = _load_model(cfg)
    seconds: dict[str, float] = {}
    t0 = time.time()
    train = _categorised_train(cfg, model, tok, inp)
    seconds["probe"] = round(time.time() - t0, 2)
    against = train if cfg.against == "all" else [f for f in train if f.category == UNKNOWN]
    ranked: list[dict[str, Any]] = []
    warnings: list[str] = []
    t0 = time.time()
    if against:
        ranked, warnings = _exposure(cfg, model, tok, inp, against)
    else:
        log.warning("no %s: nothing to measure the known facts against", _against_label(cfg))
    seconds["overlap"] = round(time.time() - t0, 2)
    doc = _document(cfg, inp, train, against, ranked, warnings, seconds)
    _write_outputs(cfg, doc, train, ranked)
    return 0
