"""The options of ``factkeep train``: one typed, nested config for every method.

A method is a setting of these options, shipped as a YAML file in ``factkeep/configs/`` (``sft``,
``known_only``, ``self_distill``, ``freeze_attention_only``, ...). Training runs in up to three
phases:

1. ``format`` (``format_phase.epochs > 0``): cross-entropy on D_known, the task-format phase of
   self-distillation; its final model is the ``snapshot`` teacher.
2. ``main``: the method's loss on ``data.train`` (+ replayed facts), with the teacher, freezing,
   LoRA and early stopping it asks for.
3. ``patch`` (``replay.patch_epochs > 0``): a late "known patch", cross-entropy on D_known.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from factkeep.config import ConfigError, help_field, nested
from factkeep.data.hf_facts import ColumnMap
from factkeep.data.prompts import DEFAULT_TEMPLATE
from factkeep.models.loading import ModelOptions

__all__ = ["TrainCommandConfig"]


@dataclass
class DataConfig:
    """Where the facts come from."""

    splits: str = help_field(
        "", "Folder written by 'factkeep split' (d_known.jsonl, d_unknown.jsonl, d_held.jsonl)."
    )
    train: list[str] = help_field(
        ["d_known", "d_unknown"],
        "Training sets of the main phase: split names in 'splits', JSONL paths (facts or "
        "TRL prompt/completion) or Hugging Face dataset sources (docs/datasets.md).",
    )
    eval: list[str] = help_field(
        ["d_known", "d_unknown", "d_held"], "Sets evaluated along training (names or paths)."
    )
    template: str = help_field(DEFAULT_TEMPLATE, "Prompt template; the answer follows it.")
    columns: ColumnMap = nested(
        ColumnMap, "Dataset columns of the fact fields (Hugging Face dataset sources only)."
    )


@dataclass
class OptimConfig:
    """Optimiser and schedule of every phase."""

    optimizer: str = help_field(
        "adamw_torch", "Optimiser: a Trainer 'optim' name (adamw_torch, sgd, adafactor, ...)."
    )
    epochs: float = help_field(20.0, "Epochs of the main phase.")
    lr: float = help_field(1e-4, "Learning rate.")
    batch_size: int = help_field(32, "Examples per device per step.")
    grad_accum: int = help_field(1, "Gradient accumulation steps.")
    weight_decay: float = help_field(0.0, "Weight decay.")
    warmup_ratio: float = help_field(0.0, "Fraction of each phase's steps spent warming up.")
    scheduler: str = help_field("constant", "Learning-rate schedule (a Trainer lr_scheduler_type).")
    grad_clip: float = help_field(1.0, "Gradient-norm clipping (0 = off).")
    mixed_precision: Literal["no", "bf16", "fp16"] = help_field(
        "no",
        "Mixed precision (autocast; float32 weights): bf16 also runs on CPUs with bf16 "
        "instructions (1.66x faster SFT of SmolLM2-135M on an AVX512-BF16 CPU, same accuracy: "
        "docs/real-models.md); fp16 needs a GPU.",
    )


@dataclass
class FormatPhaseConfig:
    """The task-format phase (self-distillation's phase 1)."""

    epochs: float = help_field(0.0, "Epochs of cross-entropy on 'data' first (0 = no phase).")
    data: list[str] = help_field(["d_known"], "Training sets of the phase.")
    lr: float = help_field(0.0, "Learning rate of the phase (0 = optim.lr).")


@dataclass
class LossConfig:
    """Weights and settings of the loss terms (0 turns a term off)."""

    label_smoothing: float = help_field(0.0, "Label smoothing of the cross-entropy.")
    kl_weight: float = help_field(0.0, "lambda of lambda*tau^2*KL to the teacher (0 = off).")
    temperature: float = help_field(0.5, "tau: softmax temperature of the KL.")
    kl_positions: Literal["all", "answer", "prompt"] = help_field(
        "all", "KL over all non-pad positions, answer tokens only, or prompt tokens only."
    )
    kl_direction: Literal["forward", "reverse"] = help_field(
        "forward", "forward: KL(teacher || student) (the paper); reverse: KL(student || teacher)."
    )
    kl_min_teacher_prob: float = help_field(
        0.0, "Take the KL only where the teacher's top token has at least this probability."
    )
    kl_exclude_target: bool = help_field(
        False,
        "At answer positions, take the KL over the non-target tokens only (the gold token removed "
        "from both distributions, the rest renormalised), so it never resists learning the answer.",
    )
    kl_top_k: int = help_field(0, "Truncate the KL to the teacher's top-k tokens (0 = full).")
    kl_chunk_size: int = help_field(0, "KL over this many positions at a time (0 = all).")
    l2_weight: float = help_field(0.0, "mu of mu*||theta - theta_teacher||^2 (0 = off).")
    l2_match_kl: bool = help_field(
        False,
        "Set mu every step so the L2 gradient norm equals that of kl_match_weight*tau^2*KL "
        "(the gradient-matched control; the KL itself is not trained on).",
    )
    kl_match_weight: float = help_field(1.0, "lambda of the KL whose gradient norm L2 matches.")
    l2_match_every: int = help_field(1, "Re-match mu every N steps.")
    ewc_weight: float = help_field(0.0, "EWC weight (0 = off); Fisher from D_known.")
    ewc_data: list[str] = help_field(["d_known"], "Facts whose diagonal Fisher EWC uses.")
    ewc_batches: int = help_field(0, "Batches for the Fisher estimate (0 = all).")


@dataclass
class TeacherConfig:
    """The frozen model KL and L2 compare with."""

    kind: Literal["none", "base", "snapshot", "ema"] = help_field(
        "none",
        "none; base: the starting model; snapshot: the model after the format phase; "
        "ema: an exponential moving average of the student.",
    )
    ema_decay: float = help_field(0.99, "EMA decay per step (kind=ema).")
    cache_top_k: int = help_field(
        0,
        "Precompute the teacher's top-k tempered log-probs (+ tail mass) for the training set "
        "once and train with no teacher forward (0 = exact KL, teacher run every batch).",
    )
    cache_batch_size: int = help_field(16, "Sequences per teacher forward when building the cache.")


@dataclass
class FreezeConfig:
    """Which parameter groups train in the main phase (groups: attention, mlp, embeddings, norms,
    lm_head)."""

    train: list[str] = help_field([], "Train only these groups (empty = all).")
    freeze: list[str] = help_field([], "Freeze these groups.")
    layers: str = help_field("", "Restrict the groups to these layers, e.g. '0-1', '-1'.")
    train_regex: list[str] = help_field([], "Also train parameters whose name matches.")
    freeze_regex: list[str] = help_field([], "Also freeze parameters whose name matches.")


@dataclass
class ReplayConfig:
    """Replay of known facts during the main phase, and a late known patch."""

    fraction: float = help_field(0.0, "Fraction of main-phase examples replayed from 'pool'.")
    pool: list[str] = help_field(["d_known"], "Facts replayed.")
    forecast: str = help_field(
        "",
        "An audit folder (factkeep audit train=... known=<the pool>): replay only the pool's "
        "facts that its forecast ranks most at risk (forecast-guided replay).",
    )
    forecast_share: float = help_field(
        0.5, "With replay.forecast: the share of the pool replayed, most at risk first."
    )
    patch_epochs: float = help_field(0.0, "Epochs of a final cross-entropy phase on patch_data.")
    patch_data: list[str] = help_field(["d_known"], "Facts of the known patch.")


@dataclass
class LoraConfig:
    """LoRA adapters (needs peft); the base weights stay frozen."""

    r: int = help_field(0, "LoRA rank (0 = off).")
    alpha: int = help_field(16, "LoRA alpha.")
    dropout: float = help_field(0.0, "LoRA dropout.")
    target: list[str] = help_field(["attention", "mlp"], "Groups whose linear layers get adapters.")


@dataclass
class EvalConfig:
    """Accuracy on the evaluation sets along training."""

    every_steps: int = help_field(0, "Evaluate every N optimiser steps (0 = off).")
    each_epoch: bool = help_field(True, "Evaluate at the end of every epoch.")
    every_epochs: int = help_field(
        1, "With each_epoch: evaluate at the end of every N-th epoch only (the end is always)."
    )
    at_start: bool = help_field(True, "Evaluate the starting model.")
    max_facts: int = help_field(0, "Evaluate a fixed random subsample of each set (0 = all).")
    batch_size: int = help_field(256, "Prompts per generate call.")
    max_new_tokens: int = help_field(16, "The most tokens per answer.")
    patience: int = help_field(
        0, "Early stopping: stop when dev accuracy has not improved for N evaluations (0 = off)."
    )
    dev: str = help_field("dev", "The dev set of early stopping (name or path).")


@dataclass
class TrainCommandConfig(ModelOptions):
    """Options of ``factkeep train``."""

    method: str = help_field("custom", "A name for the method (reports group runs by it).")
    out: str = help_field("runs/train", "Output folder.")
    seed: int = help_field(0, "Seed of initialisation-free randomness: data order, dropout, LoRA.")
    data: DataConfig = nested(DataConfig, "Training and evaluation data.")
    optim: OptimConfig = nested(OptimConfig, "Optimisation.")
    format_phase: FormatPhaseConfig = nested(FormatPhaseConfig, "Task-format phase.")
    loss: LossConfig = nested(LossConfig, "Loss terms.")
    teacher: TeacherConfig = nested(TeacherConfig, "Teacher / anchor model.")
    freeze: FreezeConfig = nested(FreezeConfig, "Parameter-group freezing (main phase).")
    replay: ReplayConfig = nested(ReplayConfig, "Replay and known patch.")
    lora: LoraConfig = nested(LoraConfig, "LoRA (main phase).")
    eval: EvalConfig = nested(EvalConfig, "Evaluation along training.")
    save_every_steps: int = help_field(0, "Checkpoint every N steps (0 = every epoch).")
    save_total_limit: int = help_field(
        1,
        "Checkpoints kept while a phase runs, the newest ones (they let an interrupted run "
        "resume; 0 = write none, and an interrupted phase restarts from its beginning).",
    )
    keep_checkpoints: bool = help_field(
        False,
        "Keep a finished phase's checkpoints (analyze drift reads them); by default they are "
        "deleted when the phase ends, leaving the phase's final model only.",
    )
    log_every_steps: int = help_field(10, "Log the loss and its terms every N steps.")
    report_to: str = help_field("none", "Trainer logging backends: none, tensorboard, wandb, ...")
    threads: int = help_field(0, "CPU threads for torch (0 = torch's default).")
    progress: bool = help_field(True, "Show progress bars.")
    resume: bool = help_field(True, "Continue an interrupted run in 'out' (false: start over).")

    def validate(self) -> None:
        """Raise :class:`ConfigError` for a contradictory or out-of-range setting."""
        if not self.model:
            raise ConfigError("model= is required (an HF model folder or hub id)")
        if not self.data.train:
            raise ConfigError("data.train is empty: nothing to train on")
        # Lazily: it takes seconds to import, and 'factkeep train --help' loads this module.
        from transformers.training_args import OptimizerNames

        optimizers = [o.value for o in OptimizerNames]
        if self.optim.optimizer not in optimizers:
            raise ConfigError(
                f"option 'optim.optimizer': {self.optim.optimizer!r} is not a Trainer optimiser "
                f"({', '.join(optimizers[:6])}, ...)"
            )
        needs_teacher = self.loss.kl_weight > 0 or self.loss.l2_weight > 0 or self.loss.l2_match_kl
        if needs_teacher and self.teacher.kind == "none":
            raise ConfigError(
                "loss.kl_weight / loss.l2_weight need a teacher: set teacher.kind to "
                "base, snapshot or ema"
            )
        if self.teacher.kind == "snapshot" and self.format_phase.epochs <= 0:
            raise ConfigError(
                "teacher.kind=snapshot is the model after the format phase: set "
                "format_phase.epochs > 0, or use teacher.kind=base"
            )
        if not 0.0 <= self.replay.fraction < 1.0:
            raise ConfigError(f"replay.fraction must be in [0, 1), got {self.replay.fraction}")
        if not 0.0 < self.replay.forecast_share <= 1.0:
            raise ConfigError(
                f"replay.forecast_share must be in (0, 1], got {self.replay.forecast_share}"
            )
        if self.replay.forecast and self.replay.fraction == 0:
            raise ConfigError("replay.forecast needs replay.fraction > 0 (nothing is replayed)")
        if self.method == "forecast_replay" and not self.replay.forecast:
            raise ConfigError(
                "forecast_replay needs replay.forecast=AUDIT_FOLDER: first run factkeep audit "
                "train=<data.train> known=<replay.pool> out=AUDIT_FOLDER"
            )
        if self.optim.epochs <= 0:
            raise ConfigError(f"optim.epochs must be > 0, got {self.optim.epochs}")
        if self.eval.every_epochs < 1:
            raise ConfigError(f"eval.every_epochs must be >= 1, got {self.eval.every_epochs}")
        if self.loss.temperature <= 0:
            raise ConfigError(f"loss.temperature must be > 0, got {self.loss.temperature}")
        if not 0.0 <= self.teacher.ema_decay <= 1.0:
            raise ConfigError(f"teacher.ema_decay must be in [0, 1], got {self.teacher.ema_decay}")
        if self.teacher.cache_top_k < 0:
            raise ConfigError(f"teacher.cache_top_k must be >= 0, got {self.teacher.cache_top_k}")
        if self.teacher.cache_top_k > 0:
            if self.teacher.kind == "ema":
                raise ConfigError(
                    "teacher.cache_top_k needs a fixed teacher: an ema teacher changes every step"
                )
            if (
                self.loss.kl_min_teacher_prob > 0
                or self.loss.kl_top_k > 0
                or self.loss.kl_exclude_target
            ):
                raise ConfigError(
                    "teacher.cache_top_k replaces loss.kl_top_k and does not support "
                    "loss.kl_min_teacher_prob or loss.kl_exclude_target: set them to 0 / false"
                )
        if self.save_total_limit < 0:
            raise ConfigError(f"save_total_limit must be >= 0, got {self.save_total_limit}")
        if self.lora.r > 0 and (self.freeze.train or self.freeze.freeze):
            raise ConfigError("lora.r > 0 trains adapters only: leave freeze.* empty")
