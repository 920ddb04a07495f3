"""Benchmark: SFT training throughput on this CPU, against this CPU's measured matmul peak.

Two measurements, side by side in one run:

1. **Matmul peak.** Square ``--matmul-size`` matmuls (default 2048: 2048x2048 @ 2048x2048), best
   of ``--matmul-repeats`` after warm-up, in float32 and in bfloat16, with
   ``torch.set_num_threads(--threads)``; GFLOP/s = 2·M·N·K / seconds. Then the matmuls a training
   step actually runs: for every distinct ``nn.Linear`` shape of the model (for SmolLM2-135M:
   576→576, 576→192, 576→1536, 1536→576 and the LM head 576→49152), with T = the mean number of
   positions (batch x padded length) per training step, the forward ``x @ Wᵀ`` (T x in @ in x out)
   and the two backward matmuls (``dY @ W`` and ``dYᵀ @ x``). Weighted by how often each shape
   occurs in the model, they give the *model-shape ceiling*: the GFLOP/s a training step would
   reach if it did nothing but its linear layers' matmuls at these speeds.
2. **Training.** ``factkeep train`` through its Python API (``factkeep.training.run.train``, config
   from ``resolve_config(TrainCommandConfig, None, overrides)``), one fresh subprocess per variant,
   all on the same facts: a seeded sample of ``--facts`` EntityQuestions train facts of P17, P36,
   P176 and P495 (written as d_known + d_unknown halves; the names are labels only, nothing is
   probed), ``--epochs`` epochs at ``--batch-size``, the same data order, no checkpoints
   (``save_total_limit=0``), no evaluation during training. Variants:

   - ``fp32``: float32 weights, ``optim.mixed_precision=no``;
   - ``bf16_autocast``: float32 weights, ``optim.mixed_precision=bf16`` (the Trainer's bf16
     autocast, which it accepts on the CPU); a forward hook records the dtype the first linear
     layer really computes in, so a silently inactive autocast shows up as ``float32``;
   - ``bf16_weights``: pure bfloat16 weights (``dtype=bfloat16``; gradients and AdamW states in
     bfloat16 too), no autocast.

   Time is the training steps only: a Trainer callback times every optimiser step from
   ``on_step_begin`` to ``on_step_end`` (forward, backward, clipping, optimiser step; model loading,
   data loading, the final evaluation and saving are outside), and tokens/s is taken over the steps
   after the first (whose one-off kernel set-up is excluded). Tokens are the non-pad input tokens
   of every step's batches (the sum of the attention masks, counted as the batches go in; with
   whole epochs it is ``epochs`` x the sum of the facts' tokenized ``Q: ...\\nA: answer<eos>``
   lengths). Achieved GFLOP/s uses the standard *estimate* 6 · parameters · tokens for forward +
   backward; the parameter count includes the 49k x 576 embedding, which stands for the LM head's
   matmul because SmolLM2 ties the two (the embedding lookup itself costs nothing); attention's
   score and value products, norms, the loss and the optimiser are not counted. Padding is not
   counted either: the hardware also computes the padded positions, so a batch of uneven lengths
   lowers the achieved figure (the footer gives the non-pad share of the positions). The fraction
   of peak compares with the square matmul peak of the dtype the linear layers compute in.

   The effect on results: each variant's training loss (first step, and the mean over the last
   epoch, i.e. every fact once) from the Trainer's log history, and the exact-match accuracy on the
   trained facts after training (the run's ``metrics.jsonl``; ``--no-eval`` skips it). Use enough
   epochs for the loss to fall clearly; bf16 weights can lose small AdamW updates to rounding,
   which shows as a higher final loss.

The ratio lines come first, then the tables. With the defaults (128 facts, batch 16, 3 epochs =
24 steps, all three variants) the whole run should take about 5 to 8 minutes on 2 idle cores.

Run alone on the machine: with more torch threads than idle cores, every small element-wise op
(the optimiser step is hundreds of them) waits for a descheduled thread, and steps get several
times slower (``--threads 1`` next to one other busy process)::

    PYTHONPATH=src python bench/train_throughput.py --threads 2
    PYTHONPATH=src python bench/train_throughput.py --variants fp32,bf16_autocast --epochs 5 \\
        --json train_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

# optim.mixed_precision is "no" unless set (a bare `no` override would parse as YAML false).
VARIANTS = {
    "fp32": ["dtype=float32"],
    "bf16_autocast": ["dtype=float32", "optim.mixed_precision=bf16"],
    "bf16_weights": ["dtype=bfloat16"],
}
COMPUTE_DTYPE = {"fp32": "float32", "bf16_autocast": "bfloat16", "bf16_weights": "bfloat16"}
RELATIONS = ("P17", "P36", "P176", "P495")
RESULT = "RESULT "


# ---------------------------------------------------------------------------------------------
# setup


def build_splits(folder: Path, n_facts: int, seed: int, eq_root: str | None) -> None:
    """A seeded sample of EntityQuestions train facts as d_known.jsonl + d_unknown.jsonl."""
    from factkeep.data.entityquestions import load_entityquestions
    from factkeep.data.facts import write_facts

    facts = load_entityquestions(eq_root, splits=("train",), relations=RELATIONS)
    sample = random.Random(seed).sample(facts, min(n_facts, len(facts)))
    half = len(sample) // 2
    folder.mkdir(parents=True)
    write_facts(folder / "d_known.jsonl", sample[:half])
    write_facts(folder / "d_unknown.jsonl", sample[half:])


# ---------------------------------------------------------------------------------------------
# children


def child_train(args: argparse.Namespace) -> dict[str, Any]:
    """Train one variant in this process; returns its result row."""
    import torch
    from torch import nn
    from transformers import TrainerCallback

    from factkeep.config import resolve_config
    from factkeep.training import run as run_module
    from factkeep.training.config import TrainCommandConfig

    torch.set_num_threads(args.threads)

    class StepClock(TrainerCallback):
        """Seconds and tokens of every optimiser step."""

        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.optimizer_seconds: list[float] = []
            self.tokens: list[int] = []
            self.positions: list[int] = []
            self._start = self._optimizer_start = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            self.tokens.append(0)
            self.positions.append(0)
            self._start = time.perf_counter()
            return control

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            self._optimizer_start = time.perf_counter()
            return control

        def on_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            self.optimizer_seconds.append(time.perf_counter() - self._optimizer_start)
            return control

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            self.seconds.append(time.perf_counter() - self._start)
            return control

    clock = StepClock()
    linear_dtype: list[str] = []

    def record_dtype(module: Any, inputs: Any, output: Any) -> None:
        if not linear_dtype:
            linear_dtype.append(str(output.dtype).removeprefix("torch."))

    linear_shapes: Counter[tuple[int, int]] = Counter()

    class TimedTrainer(run_module.FactTrainer):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self.add_callback(clock)
            linears = [m for m in self.model.modules() if isinstance(m, nn.Linear)]
            linear_shapes.update((m.in_features, m.out_features) for m in linears)
            if linears:
                linears[0].register_forward_hook(record_dtype)

        def training_step(self, model: Any, inputs: Any, *a: Any, **kw: Any) -> Any:
            mask = inputs["attention_mask"]
            clock.tokens[-1] += int(mask.sum())
            clock.positions[-1] += int(mask.numel())
            return super().training_step(model, inputs, *a, **kw)

    run_module.FactTrainer = TimedTrainer  # type: ignore[misc]
    evals = "[]" if args.no_eval else "[d_known,d_unknown]"
    cfg = resolve_config(
        TrainCommandConfig,
        None,
        [
            f"model={args.model}",
            f"data.splits={args.setup}",
            "data.train=[d_known,d_unknown]",
            f"data.eval={evals}",
            "eval.at_start=false",
            "eval.each_epoch=false",
            f"optim.epochs={args.epochs}",
            f"optim.batch_size={args.batch_size}",
            f"optim.lr={args.lr}",
            f"seed={args.seed}",
            "device=cpu",
            f"threads={args.threads}",
            f"out={args.out}",
            "resume=false",
            "progress=false",
            "save_total_limit=0",
            "log_every_steps=1",
            *VARIANTS[args.child],
        ],
    )
    start = time.perf_counter()
    try:
        result = run_module.train(cfg)
    except Exception as exc:  # reported as this variant's outcome, not a crash of the bench
        return {"error": f"{type(exc).__name__}: {exc}".strip()}
    done = json.loads((Path(args.out) / "phases" / "main" / "done.json").read_text())
    history = done["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    summary = next((h for h in history if "train_runtime" in h), {})
    per_epoch = -(-_count_facts(args.setup) // args.batch_size)  # steps per epoch
    acc = None
    if result.metrics and result.metrics[-1]["n"]:
        row = result.metrics[-1]
        acc = sum(row["acc"][k] * row["n"][k] for k in row["n"]) / sum(row["n"].values())
    return {
        "steps": done["steps"],
        "step_seconds": clock.seconds,
        "optimizer_seconds": clock.optimizer_seconds,
        "train_call_seconds": time.perf_counter() - start,
        "step_tokens": clock.tokens,
        "step_positions": clock.positions,
        "train_runtime": summary.get("train_runtime"),
        "parameters": result.trainable_parameters,
        "linear_dtype": linear_dtype[0] if linear_dtype else None,
        "linear_shapes": [[i, o, n] for (i, o), n in sorted(linear_shapes.items())],
        "loss_first": losses[0] if losses else None,
        "loss_last_epoch": sum(losses[-per_epoch:]) / len(losses[-per_epoch:]) if losses else None,
        "losses": losses,
        "accuracy": acc,
        "accuracy_n": sum(result.metrics[-1]["n"].values()) if acc is not None else 0,
    }


def _count_facts(splits: str) -> int:
    return sum(
        1
        for name in ("d_known", "d_unknown")
        for line in (Path(splits) / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    )


def child_matmul(args: argparse.Namespace) -> dict[str, Any]:
    """Matmul GFLOP/s: square peak and the model's linear shapes (forward and backward)."""
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = json.loads(Path(args.setup).read_text())
    t, shapes = int(spec["positions"]), spec["shapes"]

    def best(fn: Any, repeats: int) -> float:
        for _ in range(2):
            fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    out: dict[str, Any] = {"size": args.matmul_size, "positions": t}
    with torch.inference_mode():
        for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            n = args.matmul_size
            a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
            peak = 2 * n**3 / best(lambda a=a, b=b: a @ b, args.matmul_repeats) / 1e9
            rows, step_flops, step_seconds = [], 0.0, 0.0
            for fan_in, fan_out, count in shapes:
                x = torch.randn(t, fan_in, dtype=dtype)
                w = torch.randn(fan_out, fan_in, dtype=dtype)
                dy = torch.randn(t, fan_out, dtype=dtype)
                flops = 2 * t * fan_in * fan_out
                repeats = max(3, args.matmul_repeats // 2)
                fwd = best(lambda x=x, w=w: x @ w.t(), repeats)
                dx = best(lambda dy=dy, w=w: dy @ w, repeats)
                dw = best(lambda dy=dy, x=x: dy.t() @ x, repeats)
                rows.append(
                    {
                        "in": fan_in,
                        "out": fan_out,
                        "count": count,
                        "fwd_gflops": flops / fwd / 1e9,
                        "fwd_bwd_gflops": 3 * flops / (fwd + dx + dw) / 1e9,
                    }
                )
                step_flops += count * 3 * flops
                step_seconds += count * (fwd + dx + dw)
            out[name] = {
                "peak_gflops": peak,
                "shapes": rows,
                "model_shape_gflops": step_flops / step_seconds / 1e9 if step_seconds else None,
            }
    return out


# ---------------------------------------------------------------------------------------------
# parent


def _child(args: argparse.Namespace, kind: str, setup: Path, out: Path) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        *("--child", kind, "--setup", str(setup), "--out", str(out)),
        *("--threads", str(args.threads), "--model", args.model, "--seed", str(args.seed)),
        *("--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr)),
        *("--matmul-size", str(args.matmul_size), "--matmul-repeats", str(args.matmul_repeats)),
        *(["--no-eval"] if args.no_eval else []),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    found = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        return {"error": f"exit status {proc.returncode}:\n  " + "\n  ".join(tail)}
    return json.loads(found[-1][len(RESULT) :])


def _steady(row: dict[str, Any]) -> tuple[float, float]:
    """Tokens and seconds of the steps after the first (all steps if there is only one)."""
    skip = 1 if len(row["step_seconds"]) > 1 else 0
    return sum(row["step_tokens"][skip:]), sum(row["step_seconds"][skip:])


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--facts", type=int, default=128, help="training facts (seeded sample)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--matmul-repeats", type=int, default=10)
    parser.add_argument("--no-eval", action="store_true", help="skip the accuracy after training")
    parser.add_argument("--eq-root", default=None, help="EntityQuestions folder")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--setup", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        row = child_matmul(args) if args.child == "matmul" else child_train(args)
        print(RESULT + json.dumps(row), flush=True)
        return
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        splits = root / "splits"
        build_splits(splits, args.facts, args.seed, args.eq_root)
        for variant in variants:
            start = time.perf_counter()
            row = _child(args, variant, splits, root / "runs" / variant)
            shutil.rmtree(root / "runs" / variant, ignore_errors=True)
            rows[variant] = row
            if "error" in row:
                msg = f"FAILED ({row['error']})"
            else:
                tokens, seconds = _steady(row)
                msg = (
                    f"{row['steps']} steps, {tokens / seconds:.0f} tokens/s, train() "
                    f"{row['train_call_seconds']:.0f} s"
                )
            wall = time.perf_counter() - start
            print(f"# {variant}: {msg} [{wall:.0f} s]", file=sys.stderr, flush=True)
        ok = [r for r in rows.values() if "error" not in r]
        if ok:
            base = ok[0]
            positions = sum(base["step_positions"]) / len(base["step_positions"])
            shapes = base["linear_shapes"]
        else:  # nothing trained: time the square matmuls and the LM head of a typical batch
            positions, shapes = args.batch_size * 24, [[576, 49152, 1]]
        spec = root / "matmul.json"
        spec.write_text(json.dumps({"positions": round(positions), "shapes": shapes}))
        start = time.perf_counter()
        matmul = _child(args, "matmul", spec, root / "matmul")
        print(f"# matmul [{time.perf_counter() - start:.0f} s]", file=sys.stderr, flush=True)
    if "error" in matmul:
        raise SystemExit(f"matmul benchmark failed: {matmul['error']}")

    for variant, row in rows.items():
        if "error" in row:
            continue
        tokens, seconds = _steady(row)
        row["tokens"] = sum(row["step_tokens"])
        row["tokens_per_s"] = tokens / seconds
        row["gflops"] = 6 * row["parameters"] * tokens / seconds / 1e9
        mm = matmul[row["linear_dtype"] or COMPUTE_DTYPE[variant]]
        row["fraction_of_peak"] = row["gflops"] / mm["peak_gflops"]
        ceiling = mm["model_shape_gflops"]
        row["fraction_of_model_shapes"] = row["gflops"] / ceiling if ceiling else None
        row["nonpad_share"] = row["tokens"] / max(1, sum(row["step_positions"]))
        skip = 1 if len(row["step_seconds"]) > 1 else 0
        row["seconds_per_step"] = seconds / len(row["step_seconds"][skip:])
        row["optimizer_share"] = sum(row["optimizer_seconds"][skip:]) / seconds

    lines = []
    fp32 = rows.get("fp32", {})
    for variant, row in rows.items():
        if "error" in row:
            lines.append(f"{variant}: FAILED, see below")
            continue
        if variant != "fp32" and "tokens_per_s" in fp32:
            lines.append(
                f"{variant} / fp32 tokens/s: {row['tokens_per_s'] / fp32['tokens_per_s']:.2f}x"
            )
    for variant, row in rows.items():
        if "error" in row:
            continue
        dtype = row["linear_dtype"] or COMPUTE_DTYPE[variant]
        short = "fp32" if dtype == "float32" else "bf16"
        shape_part = ""
        if row["fraction_of_model_shapes"] is not None:
            shape_part = f" (of its model-shape matmuls: {row['fraction_of_model_shapes']:.0%})"
        lines.append(
            f"{variant} training / {short} matmul peak: {row['fraction_of_peak']:.0%}{shape_part}"
        )
    lines.append(
        "bf16 / fp32 matmul peak: "
        f"{matmul['bfloat16']['peak_gflops'] / matmul['float32']['peak_gflops']:.2f}x"
    )
    print("\n".join(lines))

    print()
    print(
        f"{'variant':<14} {'computes':<9} {'steps':>5} {'tokens':>7} {'s/step':>7} "
        f"{'optim':>6} {'tokens/s':>9} {'GFLOP/s':>8} {'%peak':>6} {'%shapes':>8} "
        f"{'loss 1st':>8} {'loss end':>8} {'acc':>6}"
    )
    for variant, row in rows.items():
        if "error" in row:
            print(f"{variant:<14} FAILED: {row['error']}")
            continue
        print(
            f"{variant:<14} {row['linear_dtype'] or '?':<9} {row['steps']:>5} "
            f"{row['tokens']:>7} {row['seconds_per_step']:>7.2f} {row['optimizer_share']:>6.0%} "
            f"{row['tokens_per_s']:>9.0f} {row['gflops']:>8.1f} {row['fraction_of_peak']:>6.0%} "
            f"{_fmt(row['fraction_of_model_shapes'], '.0%'):>8} "
            f"{_fmt(row['loss_first'], '.3f'):>8} {_fmt(row['loss_last_epoch'], '.3f'):>8} "
            f"{_fmt(row['accuracy'], '.3f'):>6}"
        )

    print()
    n, t = matmul["size"], matmul["positions"]
    fp32_mm, bf16_mm = matmul["float32"], matmul["bfloat16"]
    print(
        f"{f'matmul GFLOP/s (best of {args.matmul_repeats})':<34} {'fp32 fwd':>9} "
        f"{'fp32 f+b':>9} {'bf16 fwd':>9} {'bf16 f+b':>9}"
    )
    print(
        f"{f'{n}x{n} @ {n}x{n} (peak)':<34} {fp32_mm['peak_gflops']:>9.1f} {'-':>9} "
        f"{bf16_mm['peak_gflops']:>9.1f} {'-':>9}"
    )
    for a, b in zip(fp32_mm["shapes"], bf16_mm["shapes"], strict=True):
        name = f"{t}x{a['in']} @ {a['in']}x{a['out']} (x{a['count']})"
        print(
            f"{name:<34} {a['fwd_gflops']:>9.1f} {a['fwd_bwd_gflops']:>9.1f} "
            f"{b['fwd_gflops']:>9.1f} {b['fwd_bwd_gflops']:>9.1f}"
        )
    print(
        f"{'model-shape ceiling':<34} {'-':>9} {_fmt(fp32_mm['model_shape_gflops'], '.1f'):>9} "
        f"{'-':>9} {_fmt(bf16_mm['model_shape_gflops'], '.1f'):>9}"
    )

    share = next((r["nonpad_share"] for r in rows.values() if "error" not in r), None)
    print(
        f"\n{args.model}, {args.facts} facts ({', '.join(RELATIONS)}), batch {args.batch_size}, "
        f"{args.epochs:g} epochs, lr {args.lr:g}, {args.threads} threads.\n"
        "computes: the dtype of the first linear layer's output; s/step, tokens/s: over the steps "
        "after the first;\noptim: share of the step in the optimiser step; tokens: non-pad input "
        "tokens; GFLOP/s = 6 x parameters x tokens / s (an estimate);\n%peak: of the square "
        "matmul peak of that dtype; %shapes: of the model-shape ceiling (all linear layers, "
        f"fwd+bwd, T = {t} positions per step"
        + (f", {share:.0%} of them non-pad" if share is not None else "")
        + ");\nloss 1st: first step; loss end: mean over the last epoch; acc: exact match on "
        "the trained facts after training."
    )
    if args.json:
        payload = {"args": vars(args), "ratios": lines, "matmul": matmul, "variants": rows}
        Path(args.json).write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()
