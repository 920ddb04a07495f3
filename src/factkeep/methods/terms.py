"""Registered loss terms: the pieces a method's training loss is the weighted sum of.

The trainer (:class:`factkeep.training.trainer.FactTrainer`) computes the student's logits once
per batch, wraps them in a :class:`LossContext` and adds up ``term(ctx)`` over its terms (each
term applies its own weight, e.g. λ for the KL). A term that needs the teacher calls
``ctx.teacher_logits()``, which runs the teacher at most once per batch; when no term needs it,
it never runs.

=================  =========================================================================
term               value
=================  =========================================================================
``nll``            cross-entropy on answer tokens (optional label smoothing)
``kl_to_teacher``  ``λ·τ²·KL`` between teacher and student at the chosen positions
``l2_to_anchor``   ``μ·‖θ − θ_anchor‖²``; μ fixed, or re-set each step so that the term's
                   gradient norm equals that of the KL term it stands in for (the control)
``ewc``            ``μ·Σ F·(θ − θ_anchor)²`` with a diagonal Fisher ``F`` (see :mod:`.ewc`)
=================  =========================================================================

Pure tensor math lives in :mod:`factkeep.methods.functional`; this module only wires it to
models, teachers and anchors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from factkeep.methods.functional import (
    distillation_loss,
    ewc_penalty,
    grad_norm_matched_coefficient,
    kl_positions_mask,
    l2_to_anchor,
    masked_nll,
)
from factkeep.methods.topk_kl import TopKTargets, cached_topk_kl

__all__ = [
    "EWCTerm",
    "KLToTeacher",
    "L2ToAnchor",
    "LossContext",
    "LossTerm",
    "NLLTerm",
    "trainable_named_parameters",
]


@dataclass
class LossContext:
    """What the terms of one batch see. Tensors are shifted: position t predicts token t+1.

    Attributes:
        model: the student (possibly wrapped by accelerate).
        logits: the student's logits ``(B, T-1, V)``.
        labels: targets ``(B, T-1)``, ``-100`` where no loss is taken.
        attention: ``(B, T-1)``, 1 where the target token is real (not padding).
        teacher_logits: returns the teacher's shifted logits ``(B, T-1, V)`` (computed once).
        teacher_topk: returns the cached teacher's shifted top-k targets (``None``: no cache).
    """

    model: nn.Module
    logits: torch.Tensor
    labels: torch.Tensor
    attention: torch.Tensor
    teacher_logits: Callable[[], torch.Tensor]
    teacher_topk: Callable[[], TopKTargets] | None = None


class LossTerm:
    """Base class: ``name``, ``needs_teacher`` and ``__call__(ctx) -> scalar`` (weight applied)."""

    name = "term"
    needs_teacher = False

    def __call__(self, ctx: LossContext) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def stats(self) -> dict[str, float]:
        """Extra values to log (e.g. an adaptive coefficient)."""
        return {}


def _bare(model: nn.Module) -> nn.Module:
    while hasattr(model, "module"):
        model = model.module  # type: ignore[assignment]
    return model


def trainable_named_parameters(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``(name, parameter)`` of the trainable parameters, names as in the unwrapped model."""
    return [(n, p) for n, p in _bare(model).named_parameters() if p.requires_grad]


@dataclass
class NLLTerm(LossTerm):
    """Cross-entropy on the answer tokens, ``weight · NLL``."""

    weight: float = 1.0
    label_smoothing: float = 0.0
    name = "nll"

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        return self.weight * masked_nll(ctx.logits, ctx.labels, self.label_smoothing)


@dataclass
class KLToTeacher(LossTerm):
    """``λ·τ²·KL`` to the teacher (see :func:`~factkeep.methods.functional.distillation_loss`).

    With ``cached`` the KL is the top-k one of :func:`~factkeep.methods.topk_kl.cached_topk_kl`
    against a precomputed :class:`~factkeep.methods.teacher_cache.TeacherCache`.
    """

    weight: float = 1.0
    temperature: float = 0.5
    positions: Literal["all", "answer", "prompt"] = "all"
    direction: Literal["forward", "reverse"] = "forward"
    top_k: int | None = None
    chunk_size: int | None = None
    min_teacher_prob: float = 0.0
    exclude_target: bool = False
    cached: bool = False
    name = "kl_to_teacher"

    @property
    def needs_teacher(self) -> bool:  # type: ignore[override]
        """A cached term reads ``ctx.teacher_topk`` and never runs the teacher."""
        return not self.cached

    def unweighted(self, ctx: LossContext) -> torch.Tensor:
        """``τ²·KL`` without λ."""
        mask = kl_positions_mask(ctx.attention, ctx.labels, self.positions)
        if self.cached:
            if ctx.teacher_topk is None:
                raise ValueError("a cached KL term needs a teacher cache")
            kl = cached_topk_kl(
                ctx.logits,
                ctx.teacher_topk(),
                mask,
                self.temperature,
                direction=self.direction,
                chunk_size=self.chunk_size,
            )
            return kl * (self.temperature * self.temperature)
        teacher = ctx.teacher_logits()
        if self.min_teacher_prob > 0:  # only where the teacher is confident
            top = torch.softmax(teacher.float(), dim=-1).amax(dim=-1)  # (B, T)
            mask = mask & (top >= self.min_teacher_prob)
        return distillation_loss(
            ctx.logits,
            teacher,
            mask,
            self.temperature,
            direction=self.direction,
            top_k=self.top_k,
            chunk_size=self.chunk_size,
            exclude=ctx.labels if self.exclude_target else None,
        )

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        return self.weight * self.unweighted(ctx)


@dataclass
class L2ToAnchor(LossTerm):
    """``μ·‖θ − θ_anchor‖²`` over the trainable parameters.

    With ``match`` set to a KL term, μ is re-computed every ``every`` steps so that
    ``μ·‖∇‖θ−θ_a‖²‖ = ‖∇(λ·τ²·KL)‖`` on the current batch (the paper's gradient-matched control:
    same pull strength as self-distillation, but in parameter space). The KL gradient costs one
    extra backward through the student; the L2 gradient is analytic, ``2(θ − θ_a)``. Until the
    student has moved from the anchor, μ keeps its initial value (the term is zero there anyway).
    """

    anchor: dict[str, torch.Tensor] = field(default_factory=dict)
    weight: float = 1.0
    match: KLToTeacher | None = None
    every: int = 1
    name = "l2_to_anchor"
    _calls: int = 0

    @property
    def needs_teacher(self) -> bool:  # type: ignore[override]
        return self.match is not None

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        named = [(n, p) for n, p in trainable_named_parameters(ctx.model) if n in self.anchor]
        params = [p for _, p in named]
        anchor = [self.anchor[n] for n, _ in named]
        value = l2_to_anchor(params, anchor)
        if self.match is not None and self._calls % max(1, self.every) == 0:
            self._calibrate(ctx, params, anchor)
        self._calls += 1
        return self.weight * value

    def _calibrate(
        self, ctx: LossContext, params: list[torch.Tensor], anchor: list[torch.Tensor]
    ) -> None:
        assert self.match is not None
        with torch.no_grad():
            pairs = zip(params, anchor, strict=True)
            l2_norm = 2.0 * math.sqrt(
                sum(float((p.float() - a.float()).pow(2).sum()) for p, a in pairs)
            )
        if l2_norm <= 0.0:
            return
        kl = self.match(ctx)
        grads = torch.autograd.grad(kl, params, retain_graph=True, allow_unused=True)
        kl_norm = math.sqrt(sum(float(g.float().pow(2).sum()) for g in grads if g is not None))
        self.weight = grad_norm_matched_coefficient(kl_norm, l2_norm)

    def stats(self) -> dict[str, float]:
        return {"l2_mu": float(self.weight)}


@dataclass
class EWCTerm(LossTerm):
    """``μ·Σ F·(θ − θ_anchor)²`` (elastic weight consolidation, diagonal Fisher)."""

    anchor: dict[str, torch.Tensor] = field(default_factory=dict)
    fisher: dict[str, torch.Tensor] = field(default_factory=dict)
    weight: float = 1.0
    name = "ewc"

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        named = [(n, p) for n, p in trainable_named_parameters(ctx.model) if n in self.fisher]
        return self.weight * ewc_penalty(
            [p for _, p in named],
            [self.anchor[n] for n, _ in named],
            [self.fisher[n] for n, _ in named],
        )
