"""A trial fine-tune: the first steps of a planned SFT run, in process, for forecasting.

``factkeep audit`` forecasts which known facts a fine-tune will make the model forget by running
the start of that fine-tune and looking at how each known fact's answer log-probability moved
(docs/audit.md). The trial is a plain loop, not the Trainer: it costs a few seconds on a laptop
model, where the Trainer's start-up alone would use up the budget. It follows the planned run's
recipe where it matters for the first steps:

- the same examples (``prompt + answer + EOS``, loss on the answer, :mod:`.examples`), shuffled
  per epoch from ``seed``;
- AdamW with the plan's learning rate (times ``lr_scale``), weight decay, batch size (times
  gradient accumulation: one optimiser step per ``batch_size * grad_accum`` examples) and
  gradient clipping;
- the plan's mixed precision (``bf16`` autocast; ``fp16`` autocast with a gradient scaler).

It does not follow warm-up or the learning-rate schedule: the trial runs at the plan's full
learning rate. Example::

    steps = planned_steps(n_examples=500, epochs=8, batch_size=32)       # 128
    trial_fine_tune(model, tok, facts, TrialRecipe(steps=13, lr=3e-4, batch_size=32))
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from factkeep.data.facts import Fact
from factkeep.data.prompts import DEFAULT_TEMPLATE
from factkeep.methods.functional import masked_nll
from factkeep.training.examples import QACollator, QADataset

__all__ = ["TrialRecipe", "autocast_dtype", "planned_steps", "trial_fine_tune"]


@dataclass(frozen=True)
class TrialRecipe:
    """What a trial runs: ``steps`` optimiser steps of the plan's SFT recipe."""

    steps: int
    lr: float
    batch_size: int
    grad_accum: int = 1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    seed: int = 0
    template: str = DEFAULT_TEMPLATE

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"a trial needs at least one step, got {self.steps}")
        if self.lr <= 0 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("a trial needs lr > 0, batch_size >= 1 and grad_accum >= 1")


def planned_steps(n_examples: int, epochs: float, batch_size: int, grad_accum: int = 1) -> int:
    """The optimiser steps of an SFT run over ``n_examples`` (as the Trainer counts them)."""
    if n_examples < 1 or epochs <= 0:
        return 0
    per_epoch = max(1, math.ceil(math.ceil(n_examples / batch_size) / grad_accum))
    return math.ceil(epochs * per_epoch)


def _batches(n: int, batch_size: int, seed: int) -> Iterator[list[int]]:
    """Example indices, ``batch_size`` at a time, a fresh seeded shuffle each epoch."""
    rng = random.Random(f"{seed}-trial")
    while True:
        order = list(range(n))
        rng.shuffle(order)
        for start in range(0, n, batch_size):
            yield order[start : start + batch_size]


def autocast_dtype(mixed_precision: str) -> torch.dtype | None:
    """The autocast dtype of a ``mixed_precision`` option (None for ``no``)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)


def trial_fine_tune(
    model: Any, tokenizer: Any, facts: Sequence[Fact], recipe: TrialRecipe
) -> list[float]:
    """Train ``model`` in place for ``recipe.steps`` optimiser steps of SFT on ``facts``.

    Returns:
        The mean answer cross-entropy of each optimiser step.

    Raises:
        ValueError: no facts.
    """
    if not facts:
        raise ValueError("a trial needs training facts")
    device = next(model.parameters()).device
    data = QADataset.from_facts(tokenizer, facts, recipe.template)
    collate = QACollator.for_tokenizer(tokenizer)
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=recipe.mixed_precision == "fp16")
    batches = _batches(len(data), recipe.batch_size, recipe.seed)
    dtype = autocast_dtype(recipe.mixed_precision)
    losses: list[float] = []
    model.train()
    for _ in range(recipe.steps):
        total = 0.0
        for _ in range(recipe.grad_accum):
            batch = collate([data[i] for i in next(batches)])
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(
                    input_ids=batch["input_ids"].to(device),
                    attention_mask=batch["attention_mask"].to(device),
                ).logits  # (B, T, V)
            # Position t predicts token t+1.
            loss = masked_nll(logits[:, :-1], batch["labels"][:, 1:].to(device))
            scaler.scale(loss / recipe.grad_accum).backward()
            total += float(loss.detach()) / recipe.grad_accum
        if recipe.grad_clip > 0:
            scaler.unscale_(optimiser)
            torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
        scaler.step(optimiser)
        scaler.update()
        optimiser.zero_grad(set_to_none=True)
        losses.append(total)
    model.eval()
    return losses
