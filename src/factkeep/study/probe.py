"""``factkeep probe``: SLiCK categories of every fact for a model (docs/method.md section 2).

Output folder (``out=``, default ``runs/probe``)::

    config.yaml, env.json      the resolved config (preset filled in) and the environment
    categories.jsonl           the facts with ``category`` set and ``meta.probe`` = {p_greedy,
                               p_sample, greedy_answers, sampled_answers}; ``read_facts`` reads it
    summary.json               counts per relation x category, protocol, timing
    categories.partial.jsonl   while running: finished chunks (removed at the end)
    categories.partial.json    while running: the settings fingerprint the partial file belongs to

Presets: ``preset=original`` (default; 10 prompts x (1 greedy + 16 samples)) or ``preset=cheap``
(4 prompts x (1 greedy + 4 samples) = 20 generations). The protocol options (``n_prompts``,
``k_exemplars``, ``num_samples``, ``temperature``, ``top_k``) default to ``null``, meaning "the
preset's value"; any option given explicitly wins over the preset. ``config.yaml`` records the
resolved values.

``facts=`` (and ``exemplars=``) take a facts JSONL file or a Hugging Face dataset source
(``hub:owner/name:split``, a ``save_to_disk`` folder, a Parquet/JSON/CSV file; its columns mapped by
``columns.*`` or ``#field=column``: :mod:`factkeep.data.hf_facts`, docs/datasets.md).

Exemplars come from ``exemplars=FILE`` (e.g. a dev split) or, by default, from the facts file
itself; never the probed fact, nor a fact with the same subject or question.

Resuming: results are appended per chunk of ``chunk_size`` facts (flushed and fsync'ed). Running the
same command again after an interruption skips the finished chunks; the final ``categories.jsonl``
is byte-identical to an uninterrupted run's. A partial run made with other settings is refused
(``resume=false`` discards it).

Example::

    factkeep probe model=runs/world/model facts=runs/world/facts.jsonl out=runs/probe preset=cheap
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from factkeep.config import ConfigError, help_field, nested
from factkeep.data.fact_sets import read_fact_source
from factkeep.data.facts import CATEGORIES, Fact, write_facts
from factkeep.data.hf_facts import ColumnMap
from factkeep.data.prompts import DEFAULT_TEMPLATE
from factkeep.errors import DataError, FactkeepError
from factkeep.models.loading import ModelOptions, load_model_and_tokenizer, resolve_device
from factkeep.probing.slick import PRESETS, ExemplarPool, ProbeProtocol, probe_facts
from factkeep.rundir import atomic_write_json, atomic_write_text, write_run_metadata

__all__ = [
    "ProbeCommandConfig",
    "ProbeOptions",
    "category_counts",
    "fingerprint",
    "format_category_table",
    "ground_truth_counts",
    "load_partial",
    "resolve_protocol",
    "run_probe",
    "select_facts",
]

log = logging.getLogger(__name__)

PARTIAL_FILE = "categories.partial.jsonl"
STATE_FILE = "categories.partial.json"
OUTPUT_FILE = "categories.jsonl"

_PROTOCOL_FIELDS = tuple(f.name for f in dataclasses.fields(ProbeProtocol))


@dataclass
class ProbeOptions:
    """How facts are probed: the SLiCK protocol (a preset, and options that override it) and the
    generation settings. ``factkeep probe`` takes them as its own options, ``factkeep audit`` as
    its ``probe.*`` section."""

    preset: Literal["original", "cheap", "fast"] = help_field(
        "original",
        "original: 10 prompts x 4 exemplars, 1 greedy + 16 samples per prompt (170 generations); "
        "cheap: 4 prompts x 4 exemplars, 1 greedy + 4 samples per prompt (20 generations); "
        "fast: cheap with exemplar sets fixed per relation and prompt index (their encoding is "
        "reused across facts). Protocol options given explicitly override the preset.",
    )
    n_prompts: int | None = help_field(None, "Few-shot prompts per question (N_ex; null: preset).")
    k_exemplars: int | None = help_field(None, "Exemplars per prompt (k; null: preset).")
    num_samples: int | None = help_field(
        None, "Sampled answers per prompt (0 = greedy only; null: preset)."
    )
    temperature: float | None = help_field(None, "Sampling temperature (null: preset).")
    top_k: int | None = help_field(None, "Top-k of sampling (0 = no cut; null: preset).")
    exemplar_sets: Literal["per_fact", "per_relation"] | None = help_field(
        None,
        "per_fact: each fact draws its own exemplars; per_relation: prompt i of every fact of a "
        "relation shows the same exemplars (never the fact itself) (null: preset).",
    )
    seed: int = help_field(0, "Seeds exemplar sampling (per fact) and answer sampling (per chunk).")
    batch_size: int = help_field(64, "Sequences per generate call (samples count each).")
    max_new_tokens: int = help_field(16, "The most tokens generated per answer.")
    chunk_size: int = help_field(64, "Facts per chunk: the unit of batching and of resuming.")
    share_prefill: bool = help_field(
        True, "Encode each prompt once for all its samples (same answers, faster)."
    )
    reuse_prefix: bool = help_field(
        True,
        "With per_relation exemplar sets, encode each shared exemplar prefix once and reuse its "
        "key/value cache (same answers, faster).",
    )
    progress: bool = help_field(True, "Show a progress bar (facts/s).")

    def validate_sizes(self, prefix: str = "") -> None:
        """Raise :class:`~factkeep.config.ConfigError` if a size option is below 1 (``prefix``:
        the options' section in the message, e.g. ``probe.``)."""
        for name in ("batch_size", "max_new_tokens", "chunk_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{prefix}{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class _ProbeInputs(ModelOptions):
    """The model and facts of ``factkeep probe`` (a base class of :class:`ProbeCommandConfig`, so
    that ``--help`` and ``config.yaml`` list them before the :class:`ProbeOptions`)."""

    trust_remote_code: bool = help_field(False, "Allow model code from the hub.")
    facts: str = help_field(
        "",
        "Facts to probe (required): a facts JSONL file or a Hugging Face dataset (a save_to_disk "
        "folder, .parquet/.json/.csv, hf:PATH, hub:owner/name[:split]; docs/datasets.md).",
    )
    out: str = help_field("runs/probe", "Output folder.")
    exemplars: str | None = help_field(
        None,
        "Facts of few-shot exemplars (e.g. a dev split; a JSONL file or a dataset, as facts); "
        "default: the facts themselves (never the probed fact, nor one with the same subject or "
        "question).",
    )
    relations: list[str] = help_field([], "Probe only these relations (default: all).")
    limit: int = help_field(0, "Probe only the first N facts (after the relation filter; 0 = all).")
    columns: ColumnMap = nested(
        ColumnMap, "Dataset columns of the fact fields (Hugging Face dataset sources only)."
    )


@dataclass
class ProbeCommandConfig(ProbeOptions, _ProbeInputs):
    """Options of ``factkeep probe``: the model and facts, the :class:`ProbeOptions`, and
    resuming."""

    resume: bool = help_field(True, "Continue a partial run in out (false: start over).")
    threads: int = help_field(0, "CPU threads for torch (0 = torch's default).")


def resolve_protocol(cfg: ProbeOptions) -> ProbeProtocol:
    """The protocol of ``cfg``: the preset, with every explicitly set (non-null) option on top."""
    if cfg.preset not in PRESETS:
        raise ConfigError(f"unknown preset {cfg.preset!r}; choose one of {sorted(PRESETS)}")
    chosen = {name: getattr(cfg, name) for name in _PROTOCOL_FIELDS}
    overrides = {k: v for k, v in chosen.items() if v is not None}
    return dataclasses.replace(PRESETS[cfg.preset], **overrides)


def select_facts(cfg: ProbeCommandConfig) -> tuple[list[Fact], list[Fact]]:
    """Read the facts file; returns (all facts, the facts to probe after filter and limit).

    Raises:
        DataError: unreadable facts, an unknown relation in the filter, or nothing to probe.
    """
    all_facts = read_fact_source(cfg.facts, cfg.columns)
    if not all_facts:
        raise DataError("no facts in the file", cfg.facts)
    selected = all_facts
    if cfg.relations:
        available = sorted({f.relation for f in all_facts})
        unknown = [r for r in cfg.relations if r not in available]
        if unknown:
            raise DataError(
                f"unknown relation(s) {', '.join(map(repr, unknown))} in relations=; the file "
                f"has: {', '.join(available)}",
                cfg.facts,
            )
        wanted = set(cfg.relations)
        selected = [f for f in all_facts if f.relation in wanted]
    if cfg.limit < 0:
        raise ConfigError(f"limit must be >= 0, got {cfg.limit}")
    if cfg.limit:
        selected = selected[: cfg.limit]
    return all_facts, selected


def _digest(facts: list[Fact]) -> str:
    """A short hash of the facts' identity and content (id, question, answers, relation,
    subject)."""
    h = hashlib.sha256()
    for fact in facts:
        row = [fact.id, fact.question, fact.answers, fact.relation, fact.subject]
        h.update(json.dumps(row, ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()[:16]


def fingerprint(
    cfg: ProbeCommandConfig, protocol: ProbeProtocol, facts: list[Fact], pool: list[Fact]
) -> dict[str, Any]:
    """Everything that determines the results; a partial run resumes only if it matches."""
    return {
        "model": cfg.model,
        "gguf_file": cfg.gguf_file,
        "dtype": cfg.dtype,
        "device": str(resolve_device(cfg.device)),
        "protocol": dataclasses.asdict(protocol),
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "max_new_tokens": cfg.max_new_tokens,
        "chunk_size": cfg.chunk_size,
        "share_prefill": cfg.share_prefill,
        "template": DEFAULT_TEMPLATE,
        "facts": _digest(facts),
        "n_facts": len(facts),
        "exemplars": _digest(pool),
    }


def load_partial(out: Path, expected: dict[str, Any], facts: list[Fact]) -> list[list[dict]]:
    """The finished chunks of a partial run in ``out`` (a prefix of the chunk list).

    A truncated last line or an incomplete last chunk (crash while writing) is dropped, and the
    partial file is rewritten with the complete chunks only, ready for appending.

    Raises:
        FactkeepError: the partial run was made with other settings.
    """
    partial, state = out / PARTIAL_FILE, out / STATE_FILE
    if not partial.is_file() or not state.is_file():
        return []
    try:
        saved = json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        saved = None
    if saved != expected:
        changed = sorted(
            k for k in expected if not isinstance(saved, dict) or saved.get(k) != expected[k]
        )
        raise FactkeepError(
            f"{out} holds a partial probe run with other settings ({', '.join(changed)} "
            "differ); pass resume=false to discard it, or choose another out="
        )
    size = expected["chunk_size"]
    chunks: list[list[dict]] = []
    current: list[dict] = []
    for raw in partial.read_bytes().split(b"\n"):
        try:
            row = json.loads(raw)
        except ValueError:
            break  # a truncated line: everything after it is lost
        if not isinstance(row, dict) or not isinstance(row.get("fact"), dict):
            break
        index = len(chunks)
        want = facts[index * size : (index + 1) * size]
        if row.get("chunk") != index or len(current) >= len(want):
            break
        if row["fact"].get("id") != want[len(current)].id:
            break
        current.append(row["fact"])
        if len(current) == len(want):
            chunks.append(current)
            current = []
    lines = [
        json.dumps({"chunk": i, "fact": rec}, ensure_ascii=False) + "\n"
        for i, chunk in enumerate(chunks)
        for rec in chunk
    ]
    atomic_write_text(partial, "".join(lines))
    return chunks


def _append_chunk(path: Path, index: int, records: list[dict]) -> None:
    """Append a finished chunk's records to the partial file, flushed and fsync'ed."""
    with path.open("a", encoding="utf-8") as handle:
        for rec in records:
            handle.write(json.dumps({"chunk": index, "fact": rec}, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def category_counts(
    facts: list[Fact], key: Callable[[Fact], str] = lambda f: f.relation
) -> dict[str, dict[str, int]]:
    """Counts per group (``key``, default the relation; sorted) and category (CATEGORIES order)."""
    counts: dict[str, dict[str, int]] = {}
    for fact in facts:
        row = counts.setdefault(key(fact), dict.fromkeys(CATEGORIES, 0))
        if fact.category is not None:
            row[fact.category] += 1
    return {rel: counts[rel] for rel in sorted(counts)}


def ground_truth_counts(facts: list[Fact]) -> dict[str, dict[str, int]] | None:
    """Synthetic-world facts only: category counts per ground-truth population, else None.

    The world's facts carry ``meta["population"]`` (``qa``/``bio``: pretrained, ``unseen``: never
    seen), so this is the confusion matrix of probed category vs what the model was taught.
    """
    if not facts or not all("population" in f.meta for f in facts):
        return None
    return category_counts(facts, key=lambda f: str(f.meta["population"]))


def format_category_table(counts: dict[str, dict[str, int]], label: str = "relation") -> str:
    """A plain-text table group x category with counts and percentages, plus a total row."""
    total = dict.fromkeys(CATEGORIES, 0)
    for row in counts.values():
        for cat, n in row.items():
            total[cat] += n
    rows = [*counts.items(), ("all", total)]
    width = max(8, *(len(rel) for rel, _ in rows))
    head = f"{label:<{width}} " + " ".join(f"{c:>17}" for c in CATEGORIES) + f" {'facts':>6}"
    lines = [head, "-" * len(head)]
    for rel, row in rows:
        n = sum(row.values())
        cells = " ".join(f"{row[c]:>7} ({100 * row[c] / max(1, n):5.1f}%)" for c in CATEGORIES)
        lines.append(f"{rel:<{width}} {cells} {n:>6}")
    return "\n".join(lines)


def _check_options(cfg: ProbeCommandConfig) -> None:
    """Raise :class:`~factkeep.config.ConfigError` on a missing or out-of-range option."""
    if not cfg.model:
        raise ConfigError("model= is required (a Hugging Face model folder or hub id)")
    if not cfg.facts:
        raise ConfigError("facts= is required (a facts JSONL file or a dataset source)")
    cfg.validate_sizes()


def _exemplar_pool(
    cfg: ProbeCommandConfig, all_facts: list[Fact], facts: list[Fact], protocol: ProbeProtocol
) -> tuple[ExemplarPool, list[Fact]]:
    """The exemplar pool (``exemplars=`` or the facts file) and its facts, checked against
    ``facts``."""
    if cfg.exemplars:
        pool_facts, source = read_fact_source(cfg.exemplars, cfg.columns), str(cfg.exemplars)
    else:
        pool_facts, source = all_facts, f"{cfg.facts} (the facts file)"
    pool = ExemplarPool(pool_facts, source)
    pool.check(facts, protocol.k_exemplars)
    return pool, pool_facts


def _finished_chunks(
    cfg: ProbeCommandConfig, out: Path, expected: dict[str, Any], facts: list[Fact]
) -> list[list[dict]]:
    """The chunks a partial run in ``out`` finished (none with ``resume=false``: its files go)."""
    if not cfg.resume:
        for name in (PARTIAL_FILE, STATE_FILE):
            (out / name).unlink(missing_ok=True)
    return load_partial(out, expected, facts)


def _start_run(
    cfg: ProbeCommandConfig,
    protocol: ProbeProtocol,
    out: Path,
    expected: dict[str, Any],
    done_chunks: list[list[dict]],
) -> list[dict]:
    """Write the run's metadata and settings state; returns the records already probed."""
    resolved = dataclasses.replace(cfg, **dataclasses.asdict(protocol))
    write_run_metadata(out, resolved, seed=cfg.seed)
    atomic_write_json(out / STATE_FILE, expected)
    if not done_chunks:  # a stale partial file without (matching) state is not continued
        atomic_write_text(out / PARTIAL_FILE, "")
    return [rec for chunk in done_chunks for rec in chunk]


def _probe_remaining(
    cfg: ProbeCommandConfig,
    model: Any,
    tokenizer: Any,
    facts: list[Fact],
    pool: ExemplarPool,
    protocol: ProbeProtocol,
    start_chunk: int,
    records: list[dict],
    out: Path,
) -> int:
    """Probe the chunks from ``start_chunk`` on, appending each to the partial file in ``out``
    and its records to ``records``; returns the number of facts probed."""
    partial = out / PARTIAL_FILE
    chunks = probe_facts(
        model,
        tokenizer,
        facts,
        pool,
        protocol,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        max_new_tokens=cfg.max_new_tokens,
        chunk_size=cfg.chunk_size,
        start_chunk=start_chunk,
        share_prefill=cfg.share_prefill,
        reuse_prefix=cfg.reuse_prefix,
        progress=cfg.progress,
    )
    probed = 0
    for index, chunk, results in chunks:
        new = [res.apply_to(fact).to_dict() for fact, res in zip(chunk, results, strict=True)]
        _append_chunk(partial, index, new)
        records.extend(json.loads(json.dumps(rec, ensure_ascii=False)) for rec in new)
        probed += len(chunk)
    return probed


def _log_plan(facts: list[Fact], n_done: int, protocol: ProbeProtocol) -> None:
    """Log what is resumed and what is probed."""
    if n_done:
        log.info("resuming: %d of %d facts already probed", n_done, len(facts))
    log.info(
        "probing %d facts: %d prompts x %d exemplars, 1 greedy + %d samples (T=%g, top-k %d) "
        "per prompt = %d generations per fact",
        len(facts),
        protocol.n_prompts,
        protocol.k_exemplars,
        protocol.num_samples,
        protocol.temperature,
        protocol.top_k,
        protocol.generations_per_fact,
    )


def _summary(
    cfg: ProbeCommandConfig,
    protocol: ProbeProtocol,
    exemplars: str,
    categorized: list[Fact],
    probed_now: int,
    seconds: float,
) -> dict[str, Any]:
    """The content of ``summary.json``."""
    counts = category_counts(categorized)
    return {
        "model": cfg.model,
        "gguf_file": cfg.gguf_file,
        "facts_file": cfg.facts,
        "exemplars": exemplars,
        "n_facts": len(categorized),
        "preset": cfg.preset,
        "protocol": dataclasses.asdict(protocol),
        "generations_per_fact": protocol.generations_per_fact,
        "seed": cfg.seed,
        "counts": counts,
        "totals": {c: sum(row[c] for row in counts.values()) for c in CATEGORIES},
        "by_ground_truth": ground_truth_counts(categorized),
        "probed_in_this_run": probed_now,
        "resumed_facts": len(categorized) - probed_now,
        "seconds": round(seconds, 2),
        "facts_per_second": round(probed_now / seconds, 3) if seconds > 0 else None,
    }


def _write_results(out: Path, categorized: list[Fact], summary: dict[str, Any]) -> None:
    """Write ``categories.jsonl`` and ``summary.json``; remove the partial run's files."""
    write_facts(out / OUTPUT_FILE, categorized)
    atomic_write_json(out / "summary.json", summary)
    (out / PARTIAL_FILE).unlink(missing_ok=True)
    (out / STATE_FILE).unlink(missing_ok=True)


def _print_results(
    cfg: ProbeCommandConfig, summary: dict[str, Any], seconds: float, out: Path
) -> None:
    """Print the category tables and the timing."""
    print(f"\nSLiCK categories of {summary['n_facts']} facts ({cfg.model}, preset {cfg.preset}):")
    print(format_category_table(summary["counts"]))
    if summary["by_ground_truth"] is not None:
        print("\nCategory vs ground truth (qa, bio: pretrained; unseen: never pretrained):")
        print(format_category_table(summary["by_ground_truth"], label="population"))
    probed_now, rate = summary["probed_in_this_run"], summary["facts_per_second"]
    print(f"Probed {probed_now} facts in {seconds:.1f} s ({rate} facts/s); results in {out}")


def run_probe(cfg: ProbeCommandConfig) -> int:
    """Run ``factkeep probe``: returns the exit code.

    All input is checked (facts, relation filter, exemplars, partial run, model) before anything
    is written.
    """
    _check_options(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    protocol = resolve_protocol(cfg)
    all_facts, facts = select_facts(cfg)
    pool, pool_facts = _exemplar_pool(cfg, all_facts, facts, protocol)
    out = Path(cfg.out)
    expected = fingerprint(cfg, protocol, facts, pool_facts)
    done_chunks = _finished_chunks(cfg, out, expected, facts)
    model, tokenizer = load_model_and_tokenizer(
        cfg.model, cfg.dtype, cfg.device, cfg.gguf_file, cfg.trust_remote_code
    )

    records = _start_run(cfg, protocol, out, expected, done_chunks)
    _log_plan(facts, len(records), protocol)
    t0 = time.time()
    probed_now = _probe_remaining(
        cfg, model, tokenizer, facts, pool, protocol, len(done_chunks), records, out
    )
    seconds = time.time() - t0

    categorized = [Fact.from_dict(rec) for rec in records]
    summary = _summary(cfg, protocol, pool.source, categorized, probed_now, seconds)
    _write_results(out, categorized, summary)
    _print_results(cfg, summary, seconds, out)
    return 0
