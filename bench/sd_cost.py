"""Benchmark: what self-distillation costs over plain SFT, in wall time and peak memory.

Every variant trains the same model on the same facts for the same number of steps through the
real ``factkeep.training.run.train`` (no evaluation, no format phase: the teacher is the starting
model, ``teacher.kind=base``, so the steps are equal), each in a fresh subprocess so that its peak
memory is its own. Variants:

- ``sft``: cross-entropy only;
- ``sd_exact``: + λτ²·KL to the teacher over the full vocabulary, teacher run on every batch;
- ``sd_chunked``: the same KL computed ``--chunk`` positions at a time with activation
  checkpointing (never holds full ``(N, V)`` float32 softmaxes of both models);
- ``sd_cached``: the teacher run once over the training set beforehand, its top-k tempered
  log-probs + tail mass stored (``teacher.cache_top_k``), no teacher forward while training, the
  KL's value and gradient computed in one fused pass (the cache build is included in the time).

Two model shapes: the synthetic world's (``TinyModelConfig()``, its ~1k-word vocabulary) and the
same shape with a realistic vocabulary (``--vocab``, default 32000; 128000 takes ~15 minutes), where
the ``(B, T, V)`` logits dominate. Memory is the peak resident set size of the training process
above what it held just before training (``ru_maxrss``; on CUDA, ``max_memory_allocated``).
Variants are interleaved over ``--repeats`` rounds and the median is reported. The ratio lines
come first.

Run (alone on the machine: two torch processes on two cores slow each other down)::

    PYTHONPATH=src python bench/sd_cost.py --threads 2
    PYTHONPATH=src python bench/sd_cost.py --vocab 32000 --repeats 1 --variants sft,sd_cached
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {
    "sft": [],
    "sd_exact": ["loss.kl_weight=1.0", "teacher.kind=base"],
    "sd_chunked": ["loss.kl_weight=1.0", "teacher.kind=base", "loss.kl_chunk_size={chunk}"],
    "sd_cached": ["loss.kl_weight=1.0", "teacher.kind=base", "teacher.cache_top_k={top_k}"],
}


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def build_setup(root: Path, vocab: int | None, n_facts: int) -> Path:
    """A model folder (world shape, random weights) and d_known / d_unknown split files."""
    from factkeep.data.facts import write_facts
    from factkeep.data.world import WorldSpec, build_world
    from factkeep.models.tiny import TinyModelConfig, build_tiny_model
    from factkeep.models.tokenizer import build_word_tokenizer

    world = build_world(WorldSpec())
    texts = world.vocabulary_texts()
    base = len(build_word_tokenizer(texts))
    if vocab is not None and vocab > base:
        texts = [*texts, " ".join(f"filler{i}" for i in range(vocab - base))]
    tok = build_word_tokenizer(texts, model_max_length=TinyModelConfig().max_positions)
    folder = root / f"v{len(tok)}"
    build_tiny_model(TinyModelConfig(), tok, seed=0).save_pretrained(folder / "model")
    tok.save_pretrained(folder / "model")
    facts = world.facts()
    by_pop: dict[str, list] = {}
    for f in facts:
        by_pop.setdefault(f.meta["population"], []).append(f)
    splits = folder / "splits"
    splits.mkdir()
    write_facts(splits / "d_known.jsonl", by_pop["qa"][: n_facts // 2])
    write_facts(splits / "d_unknown.jsonl", by_pop["unseen"][: n_facts // 2])
    return folder


def child(args: argparse.Namespace) -> None:
    """Run one variant in this process and print one JSON line."""
    import torch

    from factkeep.config import resolve_config
    from factkeep.training.config import TrainCommandConfig
    from factkeep.training.run import train

    torch.set_num_threads(args.threads)
    folder = Path(args.setup)
    extra = [o.format(top_k=args.top_k, chunk=args.chunk) for o in VARIANTS[args.child]]
    cfg = resolve_config(
        TrainCommandConfig,
        None,
        [
            f"model={folder / 'model'}",
            f"data.splits={folder / 'splits'}",
            "data.train=[d_known,d_unknown]",
            "data.eval=[]",
            "eval.each_epoch=false",
            "eval.at_start=false",
            f"optim.epochs={args.epochs}",
            f"optim.batch_size={args.batch_size}",
            f"device={args.device}",
            f"out={args.out}",
            "resume=false",
            "progress=false",
            "save_total_limit=1",
            "log_every_steps=1000",
            *extra,
        ],
    )
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before = _rss_kb()
    start = time.perf_counter()
    result = train(cfg)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    row = {
        "seconds": seconds,
        "peak_mb": (torch.cuda.max_memory_allocated() / 2**20) if cuda else (peak - before) / 1024,
        "rss_mb": peak / 1024,
        "steps": json.loads((Path(args.out) / "phases" / "main" / "done.json").read_text())[
            "steps"
        ],
        "teacher_forwards": result.teacher_forwards,
    }
    print(json.dumps(row))


def run_variant(args: argparse.Namespace, setup: Path, variant: str, out: Path) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        variant,
        "--setup",
        str(setup),
        "--out",
        str(out),
        *("--threads", str(args.threads), "--epochs", str(args.epochs)),
        *("--batch-size", str(args.batch_size), "--device", args.device),
        *("--top-k", str(args.top_k), "--chunk", str(args.chunk)),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", default="world,32000", help="vocabulary sizes")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--facts", type=int, default=256, help="training facts (half new)")
    parser.add_argument("--epochs", type=float, default=5.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--top-k", type=int, default=32)
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--setup", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    variants = args.variants.split(",")
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        setups = {}
        for v in args.vocab.split(","):
            folder = build_setup(root, None if v == "world" else int(v), args.facts)
            setups[folder.name[1:]] = folder
        for r in range(args.repeats):
            for vocab, folder in setups.items():
                for variant in variants:
                    row = run_variant(args, folder, variant, root / "runs" / f"{variant}-{r}")
                    results.setdefault((vocab, variant), []).append(row)
                    print(
                        f"# round {r + 1}/{args.repeats} V={vocab} {variant}: "
                        f"{row['seconds']:.2f} s, {row['peak_mb']:.0f} MB",
                        file=sys.stderr,
                        flush=True,
                    )
    med = {
        key: {m: statistics.median(r[m] for r in rows) for m in ("seconds", "peak_mb")}
        for key, rows in results.items()
    }
    lines, table = [], []
    for vocab in setups:
        sft = med.get((vocab, "sft"))
        for variant in variants:
            m = med[(vocab, variant)]
            rows = results[(vocab, variant)]
            table.append(
                f"{vocab:>8} {variant:<18} {m['seconds']:>8.2f} {m['peak_mb']:>9.0f} "
                f"{rows[0]['steps']:>6} {rows[0]['teacher_forwards']:>9}"
            )
            if sft and variant != "sft":
                lines.append(
                    f"V={vocab:<7} {variant} / sft: time {m['seconds'] / sft['seconds']:.2f}x, "
                    f"peak memory {m['peak_mb'] / sft['peak_mb']:.2f}x"
                )
    print("\n".join(lines))
    print()
    print(f"{'vocab':>8} {'variant':<18} {'seconds':>8} {'peak MB':>9} {'steps':>6} {'teacher':>9}")
    print("\n".join(table))
    device = args.device
    print(
        f"\n{args.facts} facts, {args.epochs:g} epochs, batch {args.batch_size}, "
        f"top-k {args.top_k}, chunk {args.chunk}, {args.threads} threads, {device}, "
        f"median of {args.repeats}; "
        "peak = max RSS above the RSS before training (CUDA: max allocated)"
    )


if __name__ == "__main__":
    main()
