"""KL to a teacher known only through its top-k tokens and the mass of the rest (pure math).

A cached teacher (:mod:`factkeep.methods.teacher_cache`) keeps, per position, the ``k`` most likely
tokens of its *tempered* distribution ``p_T^τ = softmax(z_T / τ)``, their log-probabilities, and
the log of the remaining ("tail") mass ``1 − Σ_topk p_T``. The KL is then taken between the two
distributions coarse-grained onto ``k + 1`` outcomes: the teacher's ``k`` tokens and "any other
token"::

    forward:  KL_k(p_T ‖ p_S) = Σ_{i ≤ k} p_T,i (log p_T,i − log p_S,i)
                                + p_T,tail (log p_T,tail − log p_S,tail)
    reverse:  KL_k(p_S ‖ p_T), the same with the roles swapped

with ``p_S,tail = 1 − Σ_{i ≤ k} p_S,i`` from the student's full tempered softmax. Unlike the
``top_k`` option of :func:`~factkeep.methods.functional.tempered_kl` (which renormalises both
distributions over the ``k`` tokens and ignores the rest), the student *is* penalised for mass it
moves outside the teacher's top-k. By the data-processing inequality ``KL_k ≤ KL``, with equality
when the teacher's tail is empty or the student's tail is shaped like the teacher's; with
``k ≥ V`` it is the exact KL.

Example::

    targets = topk_targets(teacher_logits, temperature=0.5, k=32)     # per position
    loss = cached_topk_kl(student_logits, targets, mask, temperature=0.5)
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor

from factkeep.methods.functional import KLDirection, _check_aligned, _graph_zero, map_row_chunks

__all__ = ["TAIL_FLOOR", "TopKTargets", "cached_topk_kl", "log1mexp", "topk_targets"]

TAIL_FLOOR = -80.0
"""Smallest log tail mass kept (exp(-80) ≈ 2e-35): an empty tail is stored as this, not -inf."""


_FILL = -1e4  # stands for -inf in the student's tail logsumexp


@dataclass
class TopKTargets:
    """A teacher's top-k view of some positions (leading dims ``...`` shared by all three).

    Attributes:
        ids: ``(..., k)`` token ids, most likely first (int64).
        logp: ``(..., k)`` tempered log-probabilities of those tokens (float32).
        tail_logp: ``(...)`` log of the tempered mass of every other token (float32).
    """

    ids: Tensor
    logp: Tensor
    tail_logp: Tensor


def log1mexp(x: Tensor) -> Tensor:
    """``log(1 − exp(x))`` for ``x ≤ 0``, accurate at both ends, floored at :data:`TAIL_FLOOR`."""
    x = x.clamp(max=0.0)
    out = torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))
    return out.clamp(min=TAIL_FLOOR)


def topk_targets(teacher_logits: Tensor, temperature: float, k: int) -> TopKTargets:
    """The teacher's tempered top-k log-probs and tail log-mass at every position.

    Args:
        teacher_logits: ``(..., V)`` logits (any float dtype; computed in float32).
        temperature: ``τ > 0`` of the KL the targets are for.
        k: tokens kept per position (clipped to ``V``).
    """
    scaled = teacher_logits.detach().float() / temperature  # (..., V)
    log_norm = torch.logsumexp(scaled, dim=-1, keepdim=True)  # (..., 1)
    top = scaled.topk(min(k, scaled.shape[-1]), dim=-1)  # (..., k)
    logp = top.values - log_norm  # (..., k)
    tail = log1mexp(torch.logsumexp(logp, dim=-1))  # (...)
    return TopKTargets(ids=top.indices, logp=logp, tail_logp=tail)


def _rows_topk_kl(
    student: Tensor, ids: Tensor, logp_t: Tensor, tail_t: Tensor, temperature: float, direction: str
) -> Tensor:
    """Per-row coarse-grained KL of ``(n, V)`` student logits against ``(n, k)`` targets."""
    scaled = student.float() / temperature  # (n, V)
    log_norm = torch.logsumexp(scaled, dim=-1, keepdim=True)  # (n, 1)
    logp_s = scaled.gather(-1, ids) - log_norm  # (n, k)
    # The student's tail straight from the logits outside the top-k (not log(1 - Σ top-k), whose
    # gradient overflows when the top-k hold almost all the mass); _FILL drops the top-k tokens
    # while keeping the logsumexp and its gradient finite even when k = V.
    rest = scaled.scatter(-1, ids, _FILL)  # (n, V)
    tail_s = (torch.logsumexp(rest, dim=-1) - log_norm[:, 0]).clamp(min=TAIL_FLOOR)  # (n,)
    log_p = torch.cat([logp_t, tail_t[:, None]], dim=-1)  # (n, k+1) teacher
    log_q = torch.cat([logp_s, tail_s[:, None]], dim=-1)  # (n, k+1) student
    if direction == "reverse":
        log_p, log_q = log_q, log_p
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), 0.0).sum(dim=-1)  # (n,)


def cached_topk_kl(
    student_logits: Tensor,
    targets: TopKTargets,
    mask: Tensor,
    temperature: float,
    direction: KLDirection = "forward",
    chunk_size: int | None = None,
    fused: bool = True,
) -> Tensor:
    """Mean over masked positions of the coarse-grained KL (see the module docstring).

    Args:
        student_logits: ``(B, T, V)`` shifted student logits.
        targets: the teacher's ``(B, T, k)`` / ``(B, T)`` targets at the same positions.
        mask: ``(B, T)`` positions to average over.
        temperature: ``τ``, the one the targets were computed with.
        direction: ``"forward"`` (teacher first) or ``"reverse"``.
        chunk_size: rows per chunk with activation checkpointing (None = all at once; with
            ``fused``, :data:`_FUSED_CHUNK`).
        fused: for the forward direction, use :class:`_FusedForwardTopKKL`, whose backward
            writes the analytic gradient chunk by chunk, never holding an ``(N, V)`` temporary
            (same values and gradients up to float rounding). The reverse direction always
            goes through autograd.

    Returns:
        Scalar float32, not multiplied by ``τ²``; 0 (connected to the graph) for an empty mask.
    """
    _check_aligned(student_logits, mask, "mask")
    if tuple(targets.ids.shape[:2]) != tuple(mask.shape):
        raise ValueError(
            f"targets {tuple(targets.ids.shape)} do not cover the positions {tuple(mask.shape)}"
        )
    if direction not in ("forward", "reverse"):
        raise ValueError(f"direction must be 'forward' or 'reverse', got {direction!r}")
    selected = mask.to(device=student_logits.device, dtype=torch.bool)  # (B, T)
    if not bool(selected.any()):
        return _graph_zero(student_logits)
    device = student_logits.device
    if direction == "forward" and fused:
        b_idx, t_idx = selected.nonzero(as_tuple=True)  # (N,), (N,)
        value = _FusedForwardTopKKL.apply(
            student_logits,
            b_idx,
            t_idx,
            targets.ids[selected].to(device).long(),
            targets.logp[selected].to(device).float(),
            targets.tail_logp[selected].to(device).float(),
            temperature,
            chunk_size or _FUSED_CHUNK,
        )
        return cast(Tensor, value)
    student = student_logits[selected]  # (N, V)
    rows = (
        student,
        targets.ids[selected].to(device).long(),  # (N, k)
        targets.logp[selected].to(device).float(),  # (N, k)
        targets.tail_logp[selected].to(device).float(),  # (N,)
    )
    fn = functools.partial(_rows_topk_kl, temperature=temperature, direction=direction)
    per_row = map_row_chunks(fn, rows, chunk_size)  # (N,)
    return per_row.sum() / per_row.shape[0]


_FUSED_CHUNK = 64  # rows per chunk of the fused KL: (64, V) float32 temporaries stay in cache


class _FusedForwardTopKKL(torch.autograd.Function):
    """Forward top-k KL whose gradient is computed analytically in the same pass as its value.

    With ``q = softmax(z/τ)``, teacher buckets ``p_i`` (top-k) and ``p_tail``, student tail
    ``q_tail``, the gradient of ``KL_k(p ‖ q)`` with respect to the logit ``z_v`` is
    ``(q_v − p_v)/τ`` for a top-k token and ``q_v·(1 − p_tail/q_tail)/τ`` for any other token.
    The forward pass computes ``q`` chunk by chunk with in-place operations, stores the gradient
    in one ``(B, T, V)`` buffer and the backward pass scales it in place (so the graph cannot be
    back-propagated twice): about ten passes over the selected logits in all, and no temporaries
    larger than ``(chunk, V)``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        logits: Tensor,  # (B, T, V)
        b_idx: Tensor,  # (N,)
        t_idx: Tensor,  # (N,)
        ids: Tensor,  # (N, k)
        logp_t: Tensor,  # (N, k)
        tail_t: Tensor,  # (N,)
        temperature: float,
        chunk: int,
    ) -> Tensor:
        n = b_idx.shape[0]
        grad = torch.zeros(logits.shape, dtype=logits.dtype, device=logits.device)
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        with torch.no_grad():
            for s in range(0, n, chunk):
                sl = slice(s, s + chunk)
                q = logits[b_idx[sl], t_idx[sl]].float()  # (c, V), a copy we own
                q.div_(temperature)
                q.sub_(q.amax(dim=-1, keepdim=True)).exp_()
                q.div_(q.sum(dim=-1, keepdim=True))  # softmax(z / τ)
                q_k = q.gather(-1, ids[sl])  # (c, k)
                q.scatter_(-1, ids[sl], 0.0)  # the tail summed directly: no 1 − Σ cancellation
                q_tail = q.sum(-1).clamp(min=math.exp(TAIL_FLOOR))  # (c,)
                p_k, p_tail = logp_t[sl].exp(), tail_t[sl].exp()
                kl = (p_k * (logp_t[sl] - q_k.clamp(min=1e-38).log())).sum(-1)
                kl = kl + torch.where(p_tail > 0, p_tail * (tail_t[sl] - q_tail.log()), 0.0)
                total += kl.sum()
                q.mul_((1.0 - p_tail / q_tail)[:, None])  # tokens outside the top-k
                q.scatter_(-1, ids[sl], q_k - p_k)  # the top-k tokens
                grad[b_idx[sl], t_idx[sl]] = q.to(grad.dtype)
        ctx.save_for_backward(grad)
        ctx.scale = 1.0 / (n * temperature)
        return total / n

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (grad,) = ctx.saved_tensors  # our own buffer, used once: scaled in place
        return grad.mul_(grad_out * ctx.scale), None, None, None, None, None, None, None
