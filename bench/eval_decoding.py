"""Benchmark: facts/second of the evaluation along training, ``generate`` against factkeep's loop.

Every evaluation along training answers each fact of each evaluation set greedily (zero-shot
``Q: ...\\nA:``, up to 16 new tokens, stop at a newline or EOS). Two ways to do it, side by side in
one run on the same model and facts (the model loaded once, a short warm-up first):

- ``generate``: Hugging Face ``generate`` on left-padded batches sorted by length; a batch runs
  until its longest answer stops;
- ``loop``: the decoding loop of :mod:`factkeep.probing.prefix` with an empty prefix: one forward
  pass per token on the rows still generating (a row leaves the batch at its stop token).

It prints the ratio ``loop`` / ``generate`` in facts/s, then how many greedy answers agree (they
must all agree, up to floating-point ties: the two paths batch rows differently).

Run alone (two torch processes on two cores slow each other down), after ``make models``, on a
model that has learned the answer format (e.g. a run's ``phases/format/model``) and a split
folder::

    PYTHONPATH=src python bench/eval_decoding.py --model runs/demo-real/runs/sft/model \\
        --splits runs/demo-real/split --threads 2
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from factkeep.data.fact_sets import load_fact_set
from factkeep.data.prompts import DEFAULT_TEMPLATE, format_prompt
from factkeep.models.loading import load_model_and_tokenizer
from factkeep.probing.generation import GenerationSettings, greedy_answers
from factkeep.probing.prefix import shared_prefix_answers


def _timed(fn: Callable[[], list[str]]) -> tuple[list[str], float]:
    start = time.perf_counter()
    answers = fn()
    return answers, time.perf_counter() - start


def main() -> None:
    """Parse the options, time both paths, print the ratio and the agreement."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="model folder, hub id or name")
    parser.add_argument("--splits", required=True, help="a split folder (d_known.jsonl, ...)")
    parser.add_argument("--sets", default="d_known,d_unknown,d_held,dev")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model_and_tokenizer(args.model)
    facts = [f for name in args.sets.split(",") for f in load_fact_set(name, args.splits)]
    prompts = [format_prompt(f.question, DEFAULT_TEMPLATE) for f in facts]
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)

    def generate() -> list[str]:
        return greedy_answers(
            model, tok, prompts, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens
        )

    def loop() -> list[str]:
        return shared_prefix_answers(model, tok, [("", p) for p in prompts], settings)[0]

    greedy_answers(model, tok, prompts[:16], batch_size=16, max_new_tokens=4)  # warm-up
    by_generate, t_generate = _timed(generate)
    by_loop, t_loop = _timed(loop)
    n = len(prompts)
    same = sum(a == b for a, b in zip(by_generate, by_loop, strict=True))
    print(f"loop / generate: {t_generate / t_loop:.2f}x facts/s")
    print(f"identical greedy answers: {same}/{n}")
    print(f"generate: {n / t_generate:.1f} facts/s ({t_generate:.1f} s for {n} facts)")
    print(f"loop:     {n / t_loop:.1f} facts/s ({t_loop:.1f} s)")


if __name__ == "__main__":
    main()
