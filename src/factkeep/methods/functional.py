"""Pure tensor functions for the training losses: masked NLL, tempered KL, anchor penalties.

Alignment convention. A causal LM's ``logits[:, t]`` predict token ``t + 1``. Every loss here
takes *already shifted* tensors: ``logits (B, T, V)`` aligned with ``labels (B, T)``, so that
``logits[b, t]`` is scored against ``labels[b, t]``; a label of :data:`IGNORE_INDEX` (-100) means
"not a target". :func:`shift_for_next_token` turns model outputs and ``input_ids``-aligned labels
into that form, and :func:`shift_attention_mask` does the same for the attention mask.

KL direction convention. ``"forward"`` is ``KL(p_T^τ ‖ p_S^τ) = Σ_v p_T (log p_T − log p_S)``:
the teacher's distribution comes first and the expectation is under the teacher (mass-covering).
``"reverse"`` is ``KL(p_S^τ ‖ p_T^τ)``: expectation under the student (mode-seeking). Here
``p^τ = softmax(logits / τ)`` over the full vocabulary (unless ``top_k`` truncates it, see
:func:`tempered_kl`). The self-distillation objective is

    ``L = masked_nll(...) + λ · distillation_loss(...)``,
    ``distillation_loss = τ² · tempered_kl(...)``,

the ``τ²`` factor keeping the gradient scale of the KL term roughly independent of ``τ``.

All losses are computed in float32 whatever the dtype of the logits, and positions are selected
(``logits[mask] -> (N, V)``) before any softmax, so padding costs nothing. Teacher logits are
always treated as constants (detached).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

__all__ = [
    "IGNORE_INDEX",
    "KLDirection",
    "KLPositions",
    "answer_mask",
    "distillation_loss",
    "ewc_penalty",
    "grad_norm_matched_coefficient",
    "kl_positions_mask",
    "l2_to_anchor",
    "map_row_chunks",
    "masked_nll",
    "shift_attention_mask",
    "shift_for_next_token",
    "tempered_kl",
]

IGNORE_INDEX = -100
"""Label value of positions that are not targets (the Hugging Face / PyTorch convention)."""

KLDirection = Literal["forward", "reverse"]
KLPositions = Literal["all", "answer", "prompt"]
_DIRECTIONS: tuple[str, ...] = ("forward", "reverse")
_POSITIONS: tuple[str, ...] = ("all", "answer", "prompt")


def _graph_zero(tensor: Tensor) -> Tensor:
    """A float32 scalar 0 connected to ``tensor``'s graph (zero gradient; no NaN even from inf)."""
    return tensor[..., :0].sum().float()


def _check_aligned(logits: Tensor, other: Tensor, name: str) -> None:
    if logits.dim() != 3 or other.dim() != 2 or tuple(logits.shape[:2]) != tuple(other.shape):
        raise ValueError(
            f"expected logits (B, T, V) and {name} (B, T), got {tuple(logits.shape)} "
            f"and {tuple(other.shape)}"
        )


def shift_for_next_token(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Align model outputs with the tokens they predict.

    Args:
        logits: ``(B, T, V)`` model outputs; ``logits[:, t]`` predict token ``t + 1``.
        labels: ``(B, T)`` labels aligned with ``input_ids`` (-100 where ignored).

    Returns:
        ``(logits[:, :-1], labels[:, 1:])``, shapes ``(B, T-1, V)`` and ``(B, T-1)`` (views).
    """
    _check_aligned(logits, labels, "labels")
    return logits[:, :-1], labels[:, 1:]


def shift_attention_mask(attention_mask: Tensor) -> Tensor:
    """Shift an ``input_ids``-aligned attention mask like :func:`shift_for_next_token`.

    Shifted position ``t`` is kept when both its input token ``t`` and its target token ``t + 1``
    are real. With right padding this equals ``attention_mask[:, 1:]``; with left padding it also
    drops the position whose input is the last pad token.

    Args:
        attention_mask: ``(B, T)``, 1 (or True) for real tokens.

    Returns:
        ``(B, T-1)`` bool.
    """
    if attention_mask.dim() != 2:
        raise ValueError(f"expected attention_mask (B, T), got {tuple(attention_mask.shape)}")
    real = attention_mask.bool()  # (B, T)
    return real[:, :-1] & real[:, 1:]


def answer_mask(labels: Tensor) -> Tensor:
    """``labels != IGNORE_INDEX``: the answer (target) positions, ``(B, T)`` bool."""
    return labels != IGNORE_INDEX


def kl_positions_mask(
    attention_mask_shifted: Tensor, labels_shifted: Tensor, positions: KLPositions
) -> Tensor:
    """The positions the KL term is averaged over.

    Args:
        attention_mask_shifted: ``(B, T)`` shifted mask (see :func:`shift_attention_mask`).
        labels_shifted: ``(B, T)`` shifted labels.
        positions: ``"all"``: every non-pad position (``attention_mask_shifted == 1``), prompt
            included; ``"answer"``: only the answer positions (``labels_shifted != -100``);
            ``"prompt"``: the non-pad positions that are not answer positions (the KL then never
            opposes the cross-entropy on the answers).

    Returns:
        ``(B, T)`` bool mask.

    Raises:
        ValueError: unknown ``positions`` or mismatched shapes.
    """
    if positions not in _POSITIONS:
        raise ValueError(f"positions must be one of {_POSITIONS}, got {positions!r}")
    if attention_mask_shifted.shape != labels_shifted.shape:
        raise ValueError(
            f"attention mask {tuple(attention_mask_shifted.shape)} and labels "
            f"{tuple(labels_shifted.shape)} differ in shape"
        )
    if positions == "all":
        return attention_mask_shifted.bool()
    if positions == "prompt":
        return attention_mask_shifted.bool() & ~answer_mask(labels_shifted)
    return answer_mask(labels_shifted)


def masked_nll(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy over the positions whose label is not -100, in float32.

    Equal to ``F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(),
    ignore_index=-100, label_smoothing=label_smoothing)``, but only the selected rows are upcast.

    Args:
        logits: ``(B, T, V)`` shifted logits.
        labels: ``(B, T)`` shifted labels.
        label_smoothing: in ``[0, 1]``, as in :func:`torch.nn.functional.cross_entropy`.

    Returns:
        Scalar float32; 0 (still connected to ``logits``) when no position is selected.
    """
    _check_aligned(logits, labels, "labels")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    selected = answer_mask(labels)  # (B, T)
    rows = logits[selected]  # (N, V)
    if rows.shape[0] == 0:
        return _graph_zero(logits)
    targets = labels[selected].long()  # (N,)
    return F.cross_entropy(rows.float(), targets, label_smoothing=label_smoothing)


def _drop_tokens(logits: Tensor, tokens: Tensor, temperature: float) -> Tensor:
    """Float32 ``logits (n, V)`` with ``tokens[i]`` (unless -100) given zero probability.

    The dropped logit is set to a huge *finite* negative number (still finite after the division
    by ``temperature``): its softmax probability is exactly 0, and unlike ``-inf`` it keeps the
    reverse KL's gradient free of ``0 · (−inf − −inf)`` NaNs.
    """
    drop = tokens != IGNORE_INDEX  # (n,)
    hit = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)  # (n, V)
    hit[drop, tokens[drop].long()] = True
    return logits.float().masked_fill(hit, -1e30 * min(1.0, temperature))


def _rows_kl(
    student: Tensor,
    teacher: Tensor,
    exclude: Tensor | None,
    temperature: float,
    direction: str,
    top_k: int | None,
) -> Tensor:
    """Per-row tempered KL of ``(n, V)`` logits, float32 ``(n,)``; ``exclude (n,)`` token ids."""
    if exclude is not None:
        student = _drop_tokens(student, exclude, temperature)
        teacher = _drop_tokens(teacher, exclude, temperature)
    if top_k is not None and top_k < teacher.shape[-1]:
        index = teacher.topk(top_k, dim=-1).indices  # (n, k)
        student = student.gather(-1, index)  # (n, k)
        teacher = teacher.gather(-1, index)  # (n, k)
    student_f = student.float()  # (n, k or V)
    teacher_f = teacher.float()
    if temperature != 1.0:
        student_f = student_f / temperature
        teacher_f = teacher_f / temperature
    log_s = F.log_softmax(student_f, dim=-1)
    log_t = F.log_softmax(teacher_f, dim=-1)
    log_p, log_q = (log_t, log_s) if direction == "forward" else (log_s, log_t)
    p = log_p.exp()
    # 0 · log 0 = 0, so tokens with zero probability under p (e.g. -inf logits) add nothing.
    terms = torch.where(p > 0, p * (log_p - log_q), 0.0)  # (n, k or V)
    return terms.sum(dim=-1)


def map_row_chunks(
    fn: Callable[..., Tensor], rows: Sequence[Tensor], chunk_size: int | None
) -> Tensor:
    """``fn(*rows)`` computed ``chunk_size`` rows at a time, each chunk rematerialised in backward.

    ``fn`` maps row-aligned tensors ``(n, ...)`` to a per-row result ``(n,)``. With ``chunk_size``
    set (and gradients needed), each chunk runs under activation checkpointing, so only one
    chunk's temporaries (e.g. ``(chunk_size, V)`` softmaxes) are alive at a time, in the forward
    and in the backward pass. Same values and gradients as ``fn(*rows)`` up to float rounding.
    """
    n_rows = rows[0].shape[0]
    if chunk_size is None or chunk_size >= n_rows:
        return fn(*rows)
    recompute = torch.is_grad_enabled() and any(r.requires_grad for r in rows)
    parts: list[Tensor] = []
    for start in range(0, n_rows, chunk_size):
        chunk = [r[start : start + chunk_size] for r in rows]
        if recompute:
            part = checkpoint(fn, *chunk, use_reentrant=False, preserve_rng_state=False)
            parts.append(cast(Tensor, part))
        else:
            parts.append(fn(*chunk))
    return torch.cat(parts)


def tempered_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor,
    temperature: float = 1.0,
    direction: KLDirection = "forward",
    top_k: int | None = None,
    chunk_size: int | None = None,
    exclude: Tensor | None = None,
) -> Tensor:
    """Mean over masked positions of the KL between tempered teacher and student distributions.

    ``"forward"``: ``KL(p_T^τ ‖ p_S^τ) = Σ_v p_T (log p_T − log p_S)``; ``"reverse"``:
    ``KL(p_S^τ ‖ p_T^τ) = Σ_v p_S (log p_S − log p_T)``, with ``p^τ = softmax(logits / τ)``.
    Not multiplied by ``τ²`` (see :func:`distillation_loss`). Computed in float32; the teacher's
    logits are detached, so gradients reach only ``student_logits``.

    Args:
        student_logits: ``(B, T, V)`` shifted logits of the model being trained.
        teacher_logits: ``(B, T, V)`` shifted logits of the teacher.
        mask: ``(B, T)`` positions to average over (e.g. from :func:`kl_positions_mask`).
        temperature: ``τ > 0``.
        direction: ``"forward"`` or ``"reverse"``.
        top_k: if set, an approximation: at each position only the teacher's ``top_k`` most
            likely tokens are kept and *both* distributions are renormalised over those ``k``
            tokens before the KL (the student's mass elsewhere is ignored, not penalised).
            ``top_k >= V`` is the exact KL.
        chunk_size: if set, the selected positions are processed ``chunk_size`` rows at a time,
            each chunk recomputed in the backward pass (activation checkpointing), so only
            ``(chunk_size, V)`` float32 temporaries are alive at once instead of ``(N, V)``.
            Same value (up to float rounding) and gradients as unchunked.
        exclude: optional ``(B, T)`` token ids, e.g. the shifted labels: at each position whose
            id is not -100 that token is removed from *both* distributions, which are
            renormalised over the other ``V − 1`` tokens before the KL (the non-target term of
            Decoupled Knowledge Distillation, Zhao et al. 2022). The student may then move mass
            onto (or off) the excluded token freely; only the shape of the rest is kept. Applied
            before ``top_k``.

    Returns:
        Scalar float32; 0 (still connected to ``student_logits``) when ``mask`` is empty.

    Raises:
        ValueError: bad shapes, direction, temperature, ``top_k`` or ``chunk_size``.
    """
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction must be one of {_DIRECTIONS}, got {direction!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape"
        )
    _check_aligned(student_logits, mask, "mask")
    if exclude is not None:
        _check_aligned(student_logits, exclude, "exclude")

    selected = mask.to(device=student_logits.device, dtype=torch.bool)  # (B, T)
    student = student_logits[selected]  # (N, V)
    teacher = teacher_logits.detach()[selected]  # (N, V)
    n_rows = student.shape[0]
    if n_rows == 0:
        return _graph_zero(student_logits)

    rows_kl = functools.partial(_rows_kl, temperature=temperature, direction=direction, top_k=top_k)
    if exclude is None:
        per_row = map_row_chunks(
            lambda s_, t_: rows_kl(s_, t_, None), (student, teacher), chunk_size
        )  # (N,)
    else:
        dropped = exclude.to(student.device)[selected]  # (N,)
        per_row = map_row_chunks(rows_kl, (student, teacher, dropped), chunk_size)
    return per_row.sum() / n_rows


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor,
    temperature: float,
    direction: KLDirection = "forward",
    top_k: int | None = None,
    chunk_size: int | None = None,
    exclude: Tensor | None = None,
) -> Tensor:
    """``τ² · tempered_kl(...)``: the distillation term, before its weight ``λ``.

    Arguments as in :func:`tempered_kl`; returns a float32 scalar.
    """
    kl = tempered_kl(
        student_logits,
        teacher_logits,
        mask,
        temperature=temperature,
        direction=direction,
        top_k=top_k,
        chunk_size=chunk_size,
        exclude=exclude,
    )
    return kl * (temperature * temperature)


def _anchor_diffs(
    params: Iterable[Tensor], anchor: Iterable[Tensor]
) -> Iterable[tuple[Tensor, Tensor]]:
    """Yield ``(param, θ − θ_a)`` in float32, anchor detached and moved to the param's device."""
    try:
        pairs = list(zip(params, anchor, strict=True))
    except ValueError as exc:
        raise ValueError("params and anchor have different lengths") from exc
    for param, ref in pairs:
        if param.shape != ref.shape:
            raise ValueError(
                f"parameter {tuple(param.shape)} and anchor {tuple(ref.shape)} differ in shape"
            )
        ref_f = ref.detach().to(device=param.device, dtype=torch.float32)
        yield param, param.float() - ref_f


def l2_to_anchor(params: Iterable[Tensor], anchor: Iterable[Tensor]) -> Tensor:
    """``Σ_i ‖θ_i − θ_a,i‖²`` summed over all tensors, in float32; the anchor is detached.

    Args:
        params: the trained parameters.
        anchor: their reference values (same order and shapes; may live on another device).

    Returns:
        Scalar float32 (0 without a graph when ``params`` is empty).
    """
    total = torch.zeros((), dtype=torch.float32)
    for param, diff in _anchor_diffs(params, anchor):
        total = total.to(param.device) + diff.square().sum()
    return total


def ewc_penalty(
    params: Iterable[Tensor], anchor: Iterable[Tensor], fisher: Iterable[Tensor]
) -> Tensor:
    """``Σ F · (θ − θ_a)²`` (elastic weight consolidation, without the usual ``λ/2``), in float32.

    Args:
        params: the trained parameters.
        anchor: their reference values.
        fisher: a (diagonal) Fisher estimate per parameter, same shapes; detached.

    Returns:
        Scalar float32 (0 without a graph when ``params`` is empty).
    """
    fisher_list = list(fisher)
    params_list = list(params)
    if len(fisher_list) != len(params_list):
        raise ValueError("params and fisher have different lengths")
    total = torch.zeros((), dtype=torch.float32)
    for (param, diff), weight in zip(_anchor_diffs(params_list, anchor), fisher_list, strict=True):
        if weight.shape != param.shape:
            raise ValueError(
                f"parameter {tuple(param.shape)} and Fisher {tuple(weight.shape)} differ in shape"
            )
        weight_f = weight.detach().to(device=param.device, dtype=torch.float32)
        total = total.to(param.device) + (weight_f * diff.square()).sum()
    return total


def grad_norm_matched_coefficient(
    target_grad_norm: float, term_grad_norm: float, eps: float = 1e-12
) -> float:
    """The weight ``μ`` with ``μ · ‖∇term‖ = ‖∇target‖``.

    Used to weight a control term (e.g. :func:`l2_to_anchor`) so that its gradient is as large
    as another term's (e.g. the KL term's), making the two regularisers comparable in strength.

    Args:
        target_grad_norm: ``‖∇target‖ >= 0``, the gradient norm to match.
        term_grad_norm: ``‖∇term‖ >= 0``, the unweighted gradient norm of the term to weight.
        eps: at or below this ``term_grad_norm`` counts as zero.

    Returns:
        ``target_grad_norm / term_grad_norm``; 0.0 when ``term_grad_norm <= eps`` (a term with
        no gradient, e.g. the L2 penalty at the anchor itself, cannot be matched, so callers
        should measure both norms where they are non-zero).

    Raises:
        ValueError: a negative or non-finite norm.
    """
    for name, value in (("target_grad_norm", target_grad_norm), ("term_grad_norm", term_grad_norm)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    if term_grad_norm <= eps:
        return 0.0
    return target_grad_norm / term_grad_norm
