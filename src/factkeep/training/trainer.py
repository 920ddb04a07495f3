"""``FactTrainer``: ``transformers.Trainer`` whose loss is a weighted sum of registered terms.

Everything else (optimiser, schedule, gradient accumulation, mixed precision, checkpoints and
resume, logging backends, accelerate's DDP/FSDP/DeepSpeed) is the stock Trainer. A method is a
list of :class:`~factkeep.methods.terms.LossTerm` plus, optionally, a teacher; the student runs
once per batch and the teacher at most once, only when a term asks for its logits. With a
``teacher_cache`` (precomputed top-k targets), a cached KL term reads the cache instead.

The values of the terms are averaged over the logging interval and logged next to ``loss``
(``loss_nll``, ``loss_kl_to_teacher``, ...). A non-finite loss stops the run with
:class:`NonFiniteLossError` naming the step and the terms.

The loss logic lives in :class:`FactLossMixin`, so that it can sit in front of any subclass of
``Trainer`` that feeds it right-padded batches of ``input_ids``, ``attention_mask`` and
``labels`` (-100 where no loss is taken): :class:`FactTrainer` is ``FactLossMixin + Trainer``
(what ``factkeep train`` runs), and
:class:`~factkeep.integrations.trl.FactkeepSFTTrainer` is ``FactLossMixin + trl.SFTTrainer``.

Example::

    trainer = FactTrainer(
        model=model, args=args, train_dataset=data, data_collator=collator,
        loss_terms=[NLLTerm(), KLToTeacher(weight=1.0, temperature=0.5)], teacher=teacher,
    )
    trainer.train()
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import Trainer

from factkeep.errors import FactkeepError
from factkeep.methods.functional import shift_attention_mask, shift_for_next_token
from factkeep.methods.teacher import Teacher
from factkeep.methods.teacher_cache import TeacherCache
from factkeep.methods.teacher_placement import place_teacher
from factkeep.methods.terms import LossContext, LossTerm
from factkeep.methods.topk_kl import TopKTargets

__all__ = ["FactLossMixin", "FactTrainer", "NonFiniteLossError"]

if TYPE_CHECKING:  # the mixin only ever sits in front of a Trainer
    _TrainerBase = Trainer
else:
    _TrainerBase = object


class NonFiniteLossError(FactkeepError):
    """The training loss became NaN or infinite."""


class FactLossMixin(_TrainerBase):
    """``compute_loss`` and ``log`` of a Trainer whose loss sums ``loss_terms``.

    Put it first among the bases (``class T(FactLossMixin, SomeTrainer)``); its ``__init__``
    takes the keyword arguments below and passes every other one to the Trainer.

    Args:
        loss_terms: the terms whose weighted sum is the loss (at least one).
        teacher: the frozen teacher, needed when a term has ``needs_teacher``.
        teacher_cache: precomputed top-k teacher targets, read by cached KL terms.
        teacher_needs_full_parameters: the method reads the teacher's parameters (EMA teacher,
            L2 anchor), which sharded training (FSDP, ZeRO-3) does not allow.
    """

    def __init__(
        self,
        *args: Any,
        loss_terms: Sequence[LossTerm],
        teacher: Teacher | None = None,
        teacher_cache: TeacherCache | None = None,
        teacher_needs_full_parameters: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if not loss_terms:
            raise ValueError(f"{type(self).__name__} needs at least one loss term")
        if any(t.needs_teacher for t in loss_terms) and teacher is None:
            names = [t.name for t in loss_terms if t.needs_teacher]
            raise ValueError(f"loss terms {names} need a teacher, but none was given")
        self.loss_terms = list(loss_terms)
        self.teacher = teacher
        self.teacher_cache = teacher_cache
        self._teacher_full = teacher_needs_full_parameters
        self._teacher_placed = False
        # Terms average over their own tokens; let the Trainer scale for accumulation.
        self.model_accepts_loss_kwargs = False
        self._term_sums: dict[str, float] = {}
        self._term_count = 0
        self._run_sums: dict[str, float] = {}
        self._run_count = 0

    def place_teacher(self) -> None:
        """Move (or shard) the teacher for this run's distribution strategy, once."""
        if self.teacher is not None and not self._teacher_placed:
            place_teacher(self.teacher, self.accelerator, self._teacher_full)
            self._teacher_placed = True

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        """Run the student once, then sum the weighted terms."""
        labels = inputs["labels"]
        attention_mask = inputs["attention_mask"]
        outputs = model(
            input_ids=inputs["input_ids"], attention_mask=attention_mask, use_cache=False
        )
        logits, shifted_labels = shift_for_next_token(outputs.logits, labels)  # (B, T-1, V)
        cache: list[torch.Tensor] = []

        def teacher_logits() -> torch.Tensor:
            if not cache:
                assert self.teacher is not None
                self.place_teacher()  # DDP / FSDP / ZeRO-3 placement, once
                full = self.teacher.logits(inputs["input_ids"], attention_mask)
                cache.append(full[:, :-1])  # (B, T-1, V)
            return cache[0]

        def teacher_topk() -> TopKTargets:
            assert self.teacher_cache is not None
            return self.teacher_cache.lookup(inputs["input_ids"], attention_mask)  # (B, T-1, k)

        ctx = LossContext(
            model=model,
            logits=logits,
            labels=shifted_labels,
            attention=shift_attention_mask(attention_mask),  # (B, T-1)
            teacher_logits=teacher_logits,
            teacher_topk=teacher_topk if self.teacher_cache is not None else None,
        )
        values = {term.name: term(ctx) for term in self.loss_terms}
        loss = torch.stack([v.float() for v in values.values()]).sum()
        if not torch.isfinite(loss):
            parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in values.items())
            raise NonFiniteLossError(
                f"non-finite training loss at step {self.state.global_step + 1} ({parts}); "
                "lower the learning rate, check the data, or use float32"
            )
        if model.training:
            for name, value in values.items():
                self._term_sums[name] = self._term_sums.get(name, 0.0) + float(value.detach())
            self._term_count += 1
        return (loss, outputs) if return_outputs else loss

    def _flush_terms(self) -> None:
        for name, total in self._term_sums.items():
            self._run_sums[name] = self._run_sums.get(name, 0.0) + total
        self._run_count += self._term_count
        self._term_sums, self._term_count = {}, 0

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Add the mean of each term since the last log (and terms' own stats) to ``logs``."""
        if self._term_count and "loss" in logs:
            for name, total in self._term_sums.items():
                logs[f"loss_{name}"] = round(total / self._term_count, 6)
            self._flush_terms()
        if "train_loss" in logs:
            self._flush_terms()
        if self._run_count and "train_loss" in logs:  # the end-of-training summary
            for name, total in self._run_sums.items():
                logs[f"train_loss_{name}"] = round(total / self._run_count, 6)
        if "loss" in logs or "train_loss" in logs:
            for term in self.loss_terms:
                logs.update({k: round(v, 6) for k, v in term.stats().items()})
        if "loss" in logs and not math.isfinite(logs["loss"]):
            raise NonFiniteLossError(f"non-finite logged loss at step {self.state.global_step}")
        super().log(logs, *args, **kwargs)


class FactTrainer(FactLossMixin, Trainer):
    """A Trainer whose ``compute_loss`` sums ``loss_terms`` (see module docstring)."""
