"""Benchmark: forward + backward time of the loss kernels on one batch of logits.

Compares, on random ``(B, T, V)`` logits and top-k targets: the cached top-k KL through the fused
autograd function (value and analytic gradient in one pass), the same KL through autograd
(unchunked and chunked), the exact full-vocabulary tempered KL, and the answer-only cross-entropy
that SFT computes. Best of ``--repeats``; the ratio lines come first.

Run::

    PYTHONPATH=src python bench/kl_kernels.py --vocab 32000 --threads 2
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from factkeep.methods.functional import masked_nll, tempered_kl
from factkeep.methods.topk_kl import cached_topk_kl, topk_targets


def _best(
    fn: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...], repeats: int
) -> float:
    times = []
    for _ in range(repeats):
        student = torch.randn(shape, requires_grad=True)
        start = time.perf_counter()
        fn(student).backward()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=15)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--top-k", type=int, default=32)
    parser.add_argument("--answer-tokens", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = (args.batch, args.length, args.vocab)
    teacher = torch.randn(shape)
    targets = topk_targets(teacher, 0.5, args.top_k)
    mask = torch.ones(shape[:2], dtype=torch.bool)
    labels = torch.randint(0, args.vocab, shape[:2])
    labels[:, : args.length - args.answer_tokens] = -100
    kernels: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "cross-entropy (answer tokens, SFT)": lambda s: masked_nll(s, labels),
        "cached top-k KL, fused": lambda s: cached_topk_kl(s, targets, mask, 0.5),
        "cached top-k KL, autograd": lambda s: cached_topk_kl(s, targets, mask, 0.5, fused=False),
        "cached top-k KL, autograd, chunks of 128": lambda s: cached_topk_kl(
            s, targets, mask, 0.5, chunk_size=128, fused=False
        ),
        "exact KL": lambda s: tempered_kl(s, teacher, mask, 0.5),
    }
    results = {name: _best(fn, shape, args.repeats) for name, fn in kernels.items()}
    fused = results["cached top-k KL, fused"]
    for name, seconds in results.items():
        if name != "cached top-k KL, fused":
            print(f"{name} / fused cached KL: {seconds / fused:.2f}x")
    print()
    for name, seconds in results.items():
        print(f"{name:<44} {seconds * 1000:8.1f} ms")
    print(f"\nlogits {shape}, top-{args.top_k}, {args.threads} threads, best of {args.repeats}")


if __name__ == "__main__":
    main()
