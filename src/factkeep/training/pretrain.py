"""Causal-LM pretraining of a (tiny) model on a text corpus, with ``transformers.Trainer``.

Documents are tokenized, joined with EOS and packed into fixed-length blocks (no padding); the loss
is next-token cross-entropy on every token. The Trainer brings the progress bar, checkpoints every
``save_steps`` and resumption: calling :func:`pretrain` again on the same output folder continues
from the last checkpoint with the same data order, so an interrupted run ends where an
uninterrupted one would.

Example::

    pretrain(model, tokenizer, documents, PretrainConfig(epochs=1), "runs/world/checkpoints")
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback
from transformers import TrainingArguments as HFTrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from factkeep.config import help_field

log = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    """Optimisation settings of pretraining."""

    epochs: int = help_field(
        75, "Passes over the corpus, warm-up epochs included (each epoch samples fresh texts)."
    )
    lr: float = help_field(2e-3, "Peak learning rate (AdamW).")
    min_lr_ratio: float = help_field(
        0.05, "Final learning rate as a fraction of the peak (cosine)."
    )
    warmup_steps: int = help_field(30, "Linear warm-up steps.")
    weight_decay: float = help_field(0.01, "AdamW weight decay.")
    beta2: float = help_field(0.98, "AdamW beta2.")
    grad_clip: float = help_field(1.0, "Gradient-norm clipping.")
    batch_size: int = help_field(8, "Blocks per optimiser step.")
    block_size: int = help_field(128, "Tokens per packed block.")
    save_steps: int = help_field(500, "Checkpoint every N steps (for resuming an interrupted run).")
    seed: int = help_field(0, "Seed of initialisation and data order.")


class PackedBlocks(Dataset):
    """A ``(N, block_size)`` tensor of token ids served as causal-LM examples."""

    def __init__(self, blocks: torch.Tensor) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.blocks[i]
        return {"input_ids": ids, "labels": ids}


def pack_documents(
    tokenizer: PreTrainedTokenizerBase, documents: Sequence[str], block_size: int
) -> torch.Tensor:
    """Tokenize ``documents``, end each with EOS, concatenate and cut into full blocks.

    Returns:
        A ``(N, block_size)`` long tensor; the incomplete last block is dropped.
    """
    ids = tokenizer(list(documents), add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    flat: list[int] = []
    for doc in ids:
        flat.extend(doc)
        flat.append(eos)
    n = len(flat) // block_size
    return torch.tensor(flat[: n * block_size], dtype=torch.long).view(n, block_size)


class _EvalEvery(TrainerCallback):
    """Calls ``fn(step)`` every ``every`` optimiser steps and at the end of training."""

    def __init__(self, fn: Callable[[int], None], every: int) -> None:
        self.fn = fn
        self.every = every

    def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if self.every > 0 and state.global_step % self.every == 0:
            self.fn(state.global_step)

    def on_train_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if self.every > 0 and state.global_step % self.every != 0:
            self.fn(state.global_step)


def training_arguments(
    cfg: PretrainConfig, output_dir: str | Path, total_steps: int
) -> HFTrainingArguments:
    """The Hugging Face ``TrainingArguments`` of a pretraining run."""
    return HFTrainingArguments(
        output_dir=str(output_dir),
        max_steps=total_steps,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.lr,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": cfg.min_lr_ratio},
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        adam_beta2=cfg.beta2,
        max_grad_norm=cfg.grad_clip,
        logging_steps=max(1, total_steps // 20),
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=1,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=[],
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=False,
    )


def pretrain(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    blocks: torch.Tensor,
    cfg: PretrainConfig,
    output_dir: str | Path,
    on_eval: Callable[[int], None] | None = None,
    eval_every: int = 0,
) -> dict[str, float]:
    """Train ``model`` on packed ``blocks`` (all epochs in one pass), resuming if possible.

    Args:
        model: the causal LM (trained in place).
        tokenizer: its tokenizer (saved with checkpoints).
        blocks: ``(N, block_size)`` token ids of all epochs' texts (:func:`pack_documents`).
        cfg: optimisation settings; the run has ``ceil(N / batch_size)`` steps.
        output_dir: where checkpoints go; an existing checkpoint there is resumed.
        on_eval: optional ``fn(step)`` called every ``eval_every`` steps (e.g. to log QA accuracy).
        eval_every: period of ``on_eval`` in steps (0 = never).

    Returns:
        The Trainer's final training metrics (loss, runtime, ...).
    """
    total_steps = math.ceil(blocks.shape[0] / cfg.batch_size)
    args = training_arguments(cfg, output_dir, total_steps)
    callbacks: list[TrainerCallback] = []
    if on_eval is not None:
        callbacks.append(_EvalEvery(on_eval, eval_every))
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=PackedBlocks(blocks),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    last = get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None
    if last:
        log.info("resuming pretraining from %s", last)
    result = trainer.train(resume_from_checkpoint=last)
    return dict(result.metrics)
