"""``factkeep world``: build the synthetic world, pretrain its tiny model (cached), measure its QA.

Output folder (default ``runs/world``)::

    config.yaml, env.json     the resolved config and the environment
    facts.jsonl               every fact of the world; meta.population = qa | bio | unseen
    corpus_sample.txt         the first pretraining documents, for a person to read
    model/                    an ordinary HF model folder (safetensors + tokenizer)
    world_eval.json           zero-shot greedy QA accuracy per population and relation
    checkpoints/              Trainer checkpoints while pretraining (removed when it finishes)

Running it again with the same world, model and pretraining options reuses ``model/``; an
interrupted pretraining resumes from its last checkpoint.

Example::

    factkeep world out=runs/world pretrain.epochs=30
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from factkeep.cache import cache_key
from factkeep.config import help_field, nested
from factkeep.data.facts import Fact, write_facts
from factkeep.data.world import POPULATIONS, World, WorldSpec, build_world
from factkeep.models.loading import load_model_and_tokenizer
from factkeep.models.tiny import TinyModelConfig, build_tiny_model, kv_heads
from factkeep.models.tokenizer import build_word_tokenizer
from factkeep.probing.accuracy import accuracy, accuracy_by, answer_facts
from factkeep.rundir import atomic_write_json, atomic_write_text, write_run_metadata
from factkeep.training.pretrain import PretrainConfig, pack_documents, pretrain

log = logging.getLogger(__name__)

CACHE_FILE = "factkeep_world.json"


@dataclass
class WorldCommandConfig:
    """Options of ``factkeep world``."""

    out: str = help_field("runs/world", "Output folder (model, facts, evaluation).")
    world: WorldSpec = nested(WorldSpec, "The generated knowledge base.")
    model: TinyModelConfig = nested(TinyModelConfig, "Shape of the tiny model.")
    pretrain: PretrainConfig = nested(PretrainConfig, "Pretraining optimisation.")
    eval_every: int = help_field(
        500, "Log QA accuracy of bio-only people every N pretraining steps (0 = only at the end)."
    )
    force: bool = help_field(False, "Pretrain again even if a cached model matches the config.")
    threads: int = help_field(0, "CPU threads for torch (0 = torch's default).")


def world_key(cfg: WorldCommandConfig) -> str:
    """The :func:`~factkeep.cache.cache_key` of everything that determines the pretrained model."""
    return cache_key(
        {"world": asdict(cfg.world), "model": asdict(cfg.model), "pretrain": asdict(cfg.pretrain)}
    )


def cached_model_matches(out: Path, key: str) -> bool:
    """True if ``out/model`` holds a finished pretraining with this cache key."""
    marker = out / "model" / CACHE_FILE
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text())["cache_key"] == key
    except (OSError, ValueError, KeyError):
        return False


def world_facts_by_population(facts: list[Fact]) -> dict[str, list[Fact]]:
    """Group the world's facts by ``meta['population']``."""
    groups: dict[str, list[Fact]] = {p: [] for p in POPULATIONS}
    for f in facts:
        groups[f.meta["population"]].append(f)
    return groups


def qa_accuracy(model: Any, tokenizer: Any, facts: list[Fact], batch_size: int = 256) -> dict:
    """Zero-shot greedy exact-match accuracy overall and per relation."""
    samples = answer_facts(model, tokenizer, facts, batch_size=batch_size)
    return {
        "accuracy": accuracy(samples),
        "n": len(samples),
        "per_relation": accuracy_by(samples, facts, key=lambda f: f.relation),
    }


def _pretrain_model(cfg: WorldCommandConfig, world: World, out: Path, key: str) -> None:
    """Build tokenizer and model, pretrain (resuming if possible) and save ``out/model``."""

    tokenizer = build_word_tokenizer(
        world.vocabulary_texts(), model_max_length=cfg.model.max_positions
    )
    docs: list[str] = []
    for epoch in range(cfg.pretrain.epochs):
        docs.extend(world.pretraining_documents(epoch))
    blocks = pack_documents(tokenizer, docs, cfg.pretrain.block_size)
    log.info(
        "pretraining corpus: %d documents, %d blocks of %d tokens (%.2fM tokens), vocabulary %d",
        len(docs),
        blocks.shape[0],
        cfg.pretrain.block_size,
        blocks.numel() / 1e6,
        len(tokenizer),
    )
    model = build_tiny_model(cfg.model, tokenizer, seed=cfg.pretrain.seed)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model: %s, %.2fM parameters", cfg.model.family, n_params / 1e6)

    monitor = world_facts_by_population(world.facts())["bio"][:500]

    def on_eval(step: int) -> None:
        acc = qa_accuracy(model, tokenizer, monitor)["accuracy"]
        model.train()
        log.info("step %d: zero-shot QA accuracy of bio-only people %.3f", step, acc)

    ckpt_dir = out / "checkpoints"
    t0 = time.time()
    metrics = pretrain(
        model,
        tokenizer,
        blocks,
        cfg.pretrain,
        ckpt_dir,
        on_eval=on_eval if cfg.eval_every > 0 else None,
        eval_every=cfg.eval_every,
    )
    model_dir = out / "model"
    tmp_dir = out / ".model.tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    model.save_pretrained(tmp_dir)
    tokenizer.save_pretrained(tmp_dir)
    marker = {"cache_key": key, "pretrain_seconds": round(time.time() - t0, 1), **metrics}
    atomic_write_json(tmp_dir / CACHE_FILE, marker)
    shutil.rmtree(model_dir, ignore_errors=True)
    tmp_dir.rename(model_dir)
    shutil.rmtree(ckpt_dir, ignore_errors=True)


def run_world(cfg: WorldCommandConfig) -> int:
    """Run ``factkeep world``: returns the exit code."""

    kv_heads(cfg.model)  # a bad model shape fails before anything is written
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    t_start = time.time()
    world = build_world(cfg.world)
    facts = world.facts()
    write_run_metadata(out, cfg, seed=cfg.pretrain.seed)
    write_facts(out / "facts.jsonl", facts)
    atomic_write_text(
        out / "corpus_sample.txt", "\n\n".join(world.pretraining_documents(0)[:20]) + "\n"
    )
    key = world_key(cfg)
    if cached_model_matches(out, key) and not cfg.force:
        log.info("reusing the pretrained model in %s (same config)", out / "model")
    else:
        _pretrain_model(cfg, world, out, key)
    pretrain_seconds = json.loads((out / "model" / CACHE_FILE).read_text())["pretrain_seconds"]

    model, tokenizer = load_model_and_tokenizer(str(out / "model"))
    groups = world_facts_by_population(facts)
    results = {pop: qa_accuracy(model, tokenizer, fs) for pop, fs in groups.items()}
    report = {
        "pretrain_seconds": pretrain_seconds,
        "total_seconds": round(time.time() - t_start, 1),
        "populations": results,
    }
    atomic_write_json(out / "world_eval.json", report)
    print(f"\nZero-shot QA accuracy of the pretrained model ({out / 'model'}):")
    print(f"  {'population':<10} {'facts':>6} {'accuracy':>9}")
    for pop, r in results.items():
        print(f"  {pop:<10} {r['n']:>6} {r['accuracy']:>9.3f}")
    print(
        "  (qa: QA pairs were pretrained; bio: biographies only, needs knowledge extraction; "
        "unseen: never pretrained, chance level)"
    )
    print(f"Pretraining took {pretrain_seconds:.0f} s; results in {out / 'world_eval.json'}")
    return 0
