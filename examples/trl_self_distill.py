"""Self-distillation fine-tuning from a TRL script, with factkeep's loss terms.

The paper's method (docs/method.md section 4) through ``trl.SFTTrainer``:

1. optional format phase: ``--format-epochs`` of cross-entropy on ``--format-facts`` (D_known),
   whose result is frozen as the teacher (the snapshot); without it the teacher is the starting
   model;
2. main phase: ``--epochs`` on ``--facts`` (D_known ∪ D_unknown) with
   ``NLL + λ·τ²·KL(p_teacher^τ ‖ p_student^τ)`` over every non-pad position.

Facts files are factkeep facts JSONL (or TRL prompt/completion JSONL in the ``Q: ...\\nA:``
format); they become prompt/completion rows, and TRL's completion-only loss keeps the prompt out
of the cross-entropy. The trained model and its tokenizer are saved to ``<output-dir>/model``.
Runs offline on a local model folder. Needs ``pip install 'factkeep[trl]'``.

Example, after ``factkeep demo`` wrote runs/demo (its runs train 8 epochs at lr 3e-4)::

    python examples/trl_self_distill.py --model runs/demo/world/model \\
        --facts runs/demo/split/d_known.jsonl runs/demo/split/d_unknown.jsonl \\
        --format-facts runs/demo/split/d_known.jsonl --lambda 1.0 --tau 0.5 --epochs 8 \\
        --lr 3e-4 --output-dir runs/trl_sd
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from factkeep.data.fact_sets import load_fact_set
from factkeep.data.facts import Fact
from factkeep.errors import FactkeepError
from factkeep.methods.terms import NLLTerm
from factkeep.models.loading import load_model_and_tokenizer

log = logging.getLogger("trl_self_distill")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description="Self-distillation fine-tuning through TRL's SFTTrainer and factkeep."
    )
    parser.add_argument("--model", required=True, help="a local model folder (or hub id)")
    parser.add_argument(
        "--facts", nargs="+", required=True, help="facts JSONL files of the main phase"
    )
    parser.add_argument(
        "--format-facts", nargs="*", default=[], help="facts of the format phase (e.g. D_known)"
    )
    parser.add_argument("--format-epochs", type=float, default=1.0, help="0 = no format phase")
    parser.add_argument(
        "--lambda", dest="kl_weight", type=float, default=1.0, help="λ, the KL weight"
    )
    parser.add_argument(
        "--tau", dest="temperature", type=float, default=0.5, help="τ, the temperature"
    )
    parser.add_argument("--epochs", type=float, default=3.0, help="epochs of the main phase")
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per step")
    parser.add_argument(
        "--cache-top-k", type=int, default=0, help="precompute the teacher's top-k (0 = full KL)"
    )
    parser.add_argument(
        "--freeze", default=None, help="freezing shorthand, e.g. mlp_only or attention_only"
    )
    parser.add_argument("--output-dir", required=True, help="where checkpoints and model/ go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (GPU)")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even with a GPU")
    return parser.parse_args(argv)


def _check(args: argparse.Namespace) -> None:
    if args.temperature <= 0:
        raise FactkeepError(f"--tau must be > 0, got {args.temperature}")
    if args.kl_weight < 0:
        raise FactkeepError(f"--lambda must be >= 0, got {args.kl_weight}")
    if args.epochs <= 0 or args.format_epochs < 0:
        raise FactkeepError("--epochs must be > 0 and --format-epochs >= 0")
    if args.batch_size < 1 or args.cache_top_k < 0:
        raise FactkeepError("--batch-size must be >= 1 and --cache-top-k >= 0")


def _facts(paths: Sequence[str]) -> list[Fact]:
    facts: list[Fact] = []
    for path in paths:
        if not path.endswith(".jsonl"):
            raise FactkeepError(f"facts files end in .jsonl: {path}")
        facts.extend(load_fact_set(path, ""))
    return facts


def _config(args: argparse.Namespace, out: Path, epochs: float) -> Any:
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(out),
        num_train_epochs=epochs,
        learning_rate=args.lr,
        per_device_train_batch_size=args.batch_size,
        lr_scheduler_type="constant",  # as factkeep train
        optim="adamw_torch",
        max_grad_norm=1.0,
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=args.seed,
        bf16=args.bf16,
        use_cpu=args.cpu or not torch.cuda.is_available(),
    )


def run(args: argparse.Namespace) -> dict[str, float]:
    """Train (format phase, then self-distillation) and save; returns the final term means."""
    # Imported here: a missing TRL is reported like any other bad input.
    from factkeep.integrations.trl import (
        FactkeepSFTTrainer,
        prompt_completion_dataset,
        self_distillation_terms,
        snapshot_teacher,
    )

    _check(args)
    main_data = prompt_completion_dataset(_facts(args.facts))
    format_facts = _facts(args.format_facts) if args.format_epochs > 0 else []
    out = Path(args.output_dir)
    model, tokenizer = load_model_and_tokenizer(args.model, device="cpu")
    if format_facts:
        log.info("format phase: %d facts, %g epochs", len(format_facts), args.format_epochs)
        FactkeepSFTTrainer(
            model,
            _config(args, out / "format", args.format_epochs),
            train_dataset=prompt_completion_dataset(format_facts),
            processing_class=tokenizer,
            loss_terms=[NLLTerm()],
        ).train()
    teacher = snapshot_teacher(model)  # the snapshot (the starting model without a format phase)
    trainer = FactkeepSFTTrainer(
        model,
        _config(args, out / "main", args.epochs),
        train_dataset=main_data,
        processing_class=tokenizer,
        loss_terms=self_distillation_terms(
            weight=args.kl_weight, temperature=args.temperature, cached=args.cache_top_k > 0
        ),
        teacher=teacher,
        cache_top_k=args.cache_top_k or 32,
        freeze=args.freeze,
    )
    log.info("main phase: %d examples, %g epochs", len(main_data), args.epochs)
    trainer.train()
    trainer.save_model(str(out / "model"))
    tokenizer.save_pretrained(out / "model")
    summary = trainer.state.log_history[-1]
    return {k: float(v) for k, v in summary.items() if k.startswith("train_loss")}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (1 on bad input, with the reason on stderr)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        summary = run(args)
    except FactkeepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name, value in summary.items():
        print(f"{name}: {value:.4f}")
    print(f"model saved to {Path(args.output_dir) / 'model'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
