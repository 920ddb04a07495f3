"""Benchmark: facts/second of the batched SLiCK probe vs one ``generate`` call per prompt.

Both probe the same facts with the same model, protocol and exemplars in one run. The batched
probe is :func:`factkeep.probing.slick.probe_facts` (one greedy and one sampled
``generate_answers`` call per chunk of facts, length-sorted left-padded batches); the baseline is
the straightforward loop: for each fact, for each of its prompts, one greedy ``model.generate``
and then its samples, either with one ``model.generate(num_return_sequences=num_samples)``
("loop") or with one ``model.generate`` per sample ("loop, one call per answer").

``--no-sharing`` also times the batched probe with ``share_prefill=False`` (greedy answers and
samples from separate calls, each encoding every few-shot prompt), against the default (each
prompt encoded once for its greedy answer and all its samples).

The model is the synthetic world's default shape (``TinyModelConfig()``, random weights, which is
fine for timing: every answer runs to ``max_new_tokens``) with the world tokenizer, or
``--model DIR`` (e.g. ``runs/world/model``). The first line printed is the speed-up.

Run::

    PYTHONPATH=src python bench/probe_throughput.py --facts 32 --threads 1
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

import torch

from factkeep.data.facts import Fact
from factkeep.data.world import WorldSpec, build_world
from factkeep.probing.generation import newline_token_ids
from factkeep.probing.scoring import clean_generation
from factkeep.probing.slick import PRESETS, ExemplarPool, ProbeProtocol, build_prompts, probe_facts


def _model(path: str | None, world_texts: list[str]) -> tuple[Any, Any]:
    if path:
        from factkeep.models.loading import load_model_and_tokenizer

        return load_model_and_tokenizer(path, device="cpu")
    from factkeep.models.tiny import TinyModelConfig, build_tiny_model
    from factkeep.models.tokenizer import build_word_tokenizer

    tok = build_word_tokenizer(world_texts, model_max_length=TinyModelConfig().max_positions)
    return build_tiny_model(TinyModelConfig(), tok, seed=0).eval(), tok


def naive_probe(
    model: Any,
    tok: Any,
    facts: list[Fact],
    pool: ExemplarPool,
    protocol: ProbeProtocol,
    max_new_tokens: int,
    seed: int = 0,
    call_per_sample: bool = False,
) -> list[list[str]]:
    """The straightforward loop: one ``generate`` per prompt (greedy) plus its samples (one call
    with ``num_return_sequences``, or one call per sample). Returns the greedy answers."""
    stop = list(dict.fromkeys([tok.eos_token_id, *newline_token_ids(tok)]))
    common = {
        "max_new_tokens": max_new_tokens,
        "eos_token_id": stop,
        "pad_token_id": tok.pad_token_id,
    }
    greedy_answers = []
    torch.manual_seed(seed)
    with torch.inference_mode():
        for fact in facts:
            sets = pool.sample(fact, protocol.k_exemplars, protocol.n_prompts, seed)
            answers = []
            for prompt in build_prompts(fact, sets):
                enc = tok(prompt, return_tensors="pt")
                n = enc["input_ids"].shape[1]
                out = model.generate(**enc, do_sample=False, **common)
                answers.append(clean_generation(tok.decode(out[0, n:], skip_special_tokens=True)))
                calls, per_call = (
                    (protocol.num_samples, 1) if call_per_sample else (1, protocol.num_samples)
                )
                for _ in range(calls if protocol.num_samples else 0):
                    out = model.generate(
                        **enc,
                        do_sample=True,
                        temperature=protocol.temperature,
                        top_k=protocol.top_k,
                        num_return_sequences=per_call,
                        **common,
                    )
                    tok.batch_decode(out[:, n:], skip_special_tokens=True)
            greedy_answers.append(answers)
    return greedy_answers


def main() -> None:
    """Run the benchmark and print the speed-up first."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="HF model folder (default: random tiny)")
    parser.add_argument("--facts", type=int, default=32, help="facts probed by both")
    parser.add_argument("--preset", default="original", choices=sorted(PRESETS))
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--per-sample-loop", action="store_true", help="also time one generate call per answer"
    )
    parser.add_argument(
        "--no-sharing", action="store_true", help="also time the batched probe without sharing"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    world = build_world(WorldSpec())
    all_facts = world.facts()
    model, tok = _model(args.model, world.vocabulary_texts())
    model.generation_config.pad_token_id = tok.pad_token_id
    facts = all_facts[: args.facts]
    pool = ExemplarPool(all_facts)
    protocol = PRESETS[args.preset]

    def batched_probe(share: bool) -> tuple[list[list[str]], float]:
        t0 = time.perf_counter()
        answers = [
            probe.greedy_answers
            for _, _, probes in probe_facts(
                model,
                tok,
                facts,
                pool,
                protocol,
                batch_size=args.batch_size,
                max_new_tokens=args.max_new_tokens,
                chunk_size=args.chunk_size,
                share_prefill=share,
            )
            for probe in probes
        ]
        return answers, time.perf_counter() - t0

    batched, t_batched = batched_probe(True)
    if args.no_sharing:
        unshared, t_unshared = batched_probe(False)
        print(
            f"shared prefill {t_unshared / t_batched:.2f}x faster: {len(facts) / t_batched:.2f} "
            f"facts/s vs {len(facts) / t_unshared:.2f} without sharing "
            f"(greedy answers equal: {unshared == batched})"
        )
    t0 = time.perf_counter()
    naive = naive_probe(model, tok, facts, pool, protocol, args.max_new_tokens)
    t_naive = time.perf_counter() - t0

    t_each = float("nan")
    if args.per_sample_loop:
        t0 = time.perf_counter()
        naive_probe(model, tok, facts, pool, protocol, args.max_new_tokens, call_per_sample=True)
        t_each = time.perf_counter() - t0

    rate_b, rate_n, rate_e = (len(facts) / t for t in (t_batched, t_naive, t_each))
    same = sum(
        a == b for x, y in zip(batched, naive, strict=True) for a, b in zip(x, y, strict=True)
    )
    total = sum(len(x) for x in naive)
    print(
        f"speed-up {rate_b / rate_n:.1f}x: batched {rate_b:.2f} facts/s vs loop (one generate per "
        f"prompt, num_return_sequences for its samples) {rate_n:.3f} facts/s"
    )
    if args.per_sample_loop:
        print(
            f"speed-up {rate_b / rate_e:.1f}x vs loop with one generate per answer "
            f"{rate_e:.3f} facts/s"
        )
    print(
        f"{len(facts)} facts, preset {args.preset} ({protocol.generations_per_fact} generations "
        f"per fact), max_new_tokens {args.max_new_tokens}, batch_size {args.batch_size}, "
        f"chunk_size {args.chunk_size}, {torch.get_num_threads()} torch thread(s), "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters"
    )
    print(
        f"batched {t_batched:.1f} s, loop {t_naive:.1f} s, loop per answer {t_each:.1f} s; "
        f"greedy answers equal (batched vs loop): {same}/{total}"
    )


if __name__ == "__main__":
    main()
