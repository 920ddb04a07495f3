"""Benchmark: facts/second of SLiCK probing with the few-shot prefix reused, on a real model.

Three ways to probe the same EntityQuestions facts with the same model, side by side in one run
(one process, the model loaded once, a short warm-up first):

- ``cheap``: the ``cheap`` preset as the probe ran before prefix reuse (each fact draws its own
  exemplars; each prompt encoded once for its greedy answer and its samples through ``generate``);
- ``fast, whole prompts``: the ``fast`` preset (4 prompts x 4 exemplars, 1 greedy + 4 samples, as
  ``cheap``, but exemplar sets fixed per relation and prompt index) with ``reuse_prefix=False``:
  every prompt encoded whole;
- ``fast``: the same with ``reuse_prefix=True``: each shared prefix encoded once per batch group,
  each fact only its own question.

The first lines printed are the ratios: ``fast`` over ``cheap`` (what a user gains by switching
preset) and ``fast`` over ``fast, whole prompts`` (what the reuse itself gains), then whether
``fast`` and ``fast, whole prompts`` gave identical answers (they must, up to floating-point
ties: the reused prefix is computed in a batch of one rather than of many) and how often ``cheap``
and ``fast`` agree on the category (different exemplars, so not identical).

Run alone (two torch processes on two cores slow each other down), after ``make models``::

    PYTHONPATH=src python bench/probe_prefix.py --per-relation 32 --threads 2
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from typing import Any

import torch

from factkeep.data.entityquestions import load_entityquestions
from factkeep.data.facts import Fact
from factkeep.models.loading import load_model_and_tokenizer
from factkeep.probing.slick import PRESETS, ExemplarPool, FactProbe, ProbeProtocol, probe_facts


def _sample(facts: list[Fact], per_relation: int, seed: int) -> list[Fact]:
    by_relation: dict[str, list[Fact]] = {}
    for fact in facts:
        by_relation.setdefault(fact.relation, []).append(fact)
    chosen: list[Fact] = []
    for relation in sorted(by_relation):
        items = by_relation[relation]
        chosen += random.Random(f"{seed}-{relation}").sample(items, min(per_relation, len(items)))
    return chosen


def _probe(
    model: Any,
    tok: Any,
    facts: list[Fact],
    pool: ExemplarPool,
    protocol: ProbeProtocol,
    args: argparse.Namespace,
    reuse: bool = True,
) -> tuple[list[FactProbe], float]:
    start = time.perf_counter()
    results: list[FactProbe] = []
    for _, _, chunk in probe_facts(
        model,
        tok,
        facts,
        pool,
        protocol,
        seed=args.seed,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        chunk_size=args.chunk_size,
        reuse_prefix=reuse,
    ):
        results += chunk
    return results, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="model folder or catalog name")
    parser.add_argument("--gguf-file", default=None)
    parser.add_argument("--eq-root", default=None, help="EntityQuestions copy (default: found)")
    parser.add_argument("--relations", default="P17,P36,P176,P495")
    parser.add_argument("--per-relation", type=int, default=32, help="facts per relation")
    parser.add_argument("--batch-size", type=int, default=64, help="the probe command's default")
    parser.add_argument("--chunk-size", type=int, default=64, help="the probe command's default")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    relations = args.relations.split(",")
    facts = _sample(load_entityquestions(args.eq_root, ["train"], relations), args.per_relation, 0)
    pool = ExemplarPool(load_entityquestions(args.eq_root, ["dev"], relations), source="dev")
    model, tok = load_model_and_tokenizer(args.model, gguf_file=args.gguf_file, device="cpu")
    _probe(model, tok, facts[:4], pool, PRESETS["fast"], args)  # warm-up

    cheap, t_cheap = _probe(model, tok, facts, pool, PRESETS["cheap"], args)
    whole, t_whole = _probe(model, tok, facts, pool, PRESETS["fast"], args, reuse=False)
    fast, t_fast = _probe(model, tok, facts, pool, PRESETS["fast"], args, reuse=True)

    n = len(facts)
    same = sum(a.to_meta() == b.to_meta() for a, b in zip(fast, whole, strict=True))
    agree = sum(a.category == b.category for a, b in zip(fast, cheap, strict=True))
    print(f"fast / cheap facts/s: {t_cheap / t_fast:.2f}x")
    print(f"fast / fast with whole prompts facts/s: {t_whole / t_fast:.2f}x")
    print(f"fast vs whole prompts, identical answers: {same}/{n} facts")
    print(f"cheap vs fast, same category: {agree}/{n} facts")
    print()
    print(f"{n} facts ({args.per_relation} per relation of {args.relations}), model {args.model}")
    print(f"{'variant':<24}{'seconds':>9}{'facts/s':>9}  categories")
    for name, results, seconds in (
        ("cheap", cheap, t_cheap),
        ("fast, whole prompts", whole, t_whole),
        ("fast", fast, t_fast),
    ):
        counts: dict[str, int] = {}
        for r in results:
            counts[r.category] = counts.get(r.category, 0) + 1
        shown = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        print(f"{name:<24}{seconds:>9.1f}{n / seconds:>9.2f}  {shown}")


if __name__ == "__main__":
    main()
