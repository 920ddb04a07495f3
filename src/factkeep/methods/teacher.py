"""Teachers and anchors: frozen reference models that loss terms compare the student with.

A teacher is an ordinary causal LM in eval mode with ``requires_grad_(False)``, queried under
``torch.no_grad()``. It is always *built from a model folder* (the base model, or the snapshot the
task-format phase saved), never deep-copied from a live student, so it works the same whether or
not the student is wrapped or sharded by accelerate. Kinds (docs/method.md section 4):

- ``base``: the model fine-tuning started from;
- ``snapshot``: the model after the task-format phase (the paper's choice);
- ``ema``: starts as the snapshot (or the base model if there is no format phase) and follows
  the student, ``θ_T <- d·θ_T + (1-d)·θ_S`` after every optimiser step.

Example::

    teacher = Teacher.from_pretrained("runs/sd/phase_format/model", device=student.device)
    logits = teacher.logits(batch["input_ids"], batch["attention_mask"])  # (B, T, V)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from factkeep.models.loading import load_model

__all__ = ["TEACHER_KINDS", "Teacher"]

log = logging.getLogger(__name__)

TEACHER_KINDS = ("none", "base", "snapshot", "ema")


class Teacher:
    """A frozen model: logits without gradients, named parameters for anchors."""

    def __init__(self, model: Any) -> None:
        model.eval()
        model.requires_grad_(False)
        self.model = model
        self.forward_calls = 0
        self.forward_seconds = 0.0

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: torch.device | str = "cpu",
        dtype: str = "auto",
        gguf_file: str | None = None,
    ) -> Teacher:
        """Load a teacher from a model folder, hub id or GGUF file (weights only, no tokenizer)."""
        model = load_model(str(path), dtype=dtype, device=device, gguf_file=gguf_file)
        log.info("teacher loaded from %s", path)
        return cls(model)

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The teacher's logits ``(B, T, V)`` for a batch (counted in ``forward_calls`` and timed
        in ``forward_seconds``; on a GPU after a synchronize, so that the time is the forward's)."""
        self.forward_calls += 1
        start = time.perf_counter()
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        if out.logits.is_cuda:
            torch.cuda.synchronize(out.logits.device)
        self.forward_seconds += time.perf_counter() - start
        return out.logits  # (B, T, V)

    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The teacher's parameters by name (detached)."""
        for name, p in self.model.named_parameters():
            yield name, p.detach()

    @torch.no_grad()
    def ema_update(self, student: nn.Module, decay: float) -> None:
        """Move every teacher parameter towards the student's: ``θ_T = d·θ_T + (1-d)·θ_S``."""
        student_params = dict(_unwrap(student).named_parameters())
        for name, p in self.model.named_parameters():
            p.lerp_(student_params[name].detach().to(p.dtype), 1.0 - decay)


def _unwrap(model: Any) -> nn.Module:
    """The bare model under DDP-style wrappers (``.module``) or a peft wrapper's base."""
    while hasattr(model, "module"):
        model = model.module
    return model
