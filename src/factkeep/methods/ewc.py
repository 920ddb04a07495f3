"""Diagonal Fisher information for elastic weight consolidation (EWC).

``F_i = E[(∂ NLL / ∂θ_i)²]`` estimated from mini-batches of the facts to protect (D_known by
default): the *empirical* Fisher on gold answers, one squared gradient per mini-batch (not per
example). That is the cheap, common approximation; it is noisier than a per-example Fisher and
its scale depends on the batch size, which the EWC weight absorbs. The Fisher is normalised so its
mean over parameters is 1, so that one ``ewc_weight`` transfers between models of different size.

Example::

    fisher = diagonal_fisher(model, loader)            # {name: tensor like the parameter}
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from factkeep.methods.functional import masked_nll, shift_for_next_token

__all__ = ["diagonal_fisher"]

log = logging.getLogger(__name__)


def diagonal_fisher(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    max_batches: int = 0,
) -> dict[str, torch.Tensor]:
    """Mean squared NLL gradient per trainable parameter, normalised to mean 1.

    Args:
        model: the model at the anchor point (its ``requires_grad`` flags select the parameters).
        batches: collated batches with ``input_ids``, ``attention_mask`` and ``labels``.
        max_batches: stop after this many batches (0 = all).

    Returns:
        ``{parameter name: Fisher diagonal}``, on the parameters' devices, float32.
    """
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    count = 0
    for batch in batches:
        if max_batches and count >= max_batches:
            break
        model.zero_grad(set_to_none=True)
        logits = model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
        ).logits
        loss = masked_nll(*shift_for_next_token(logits, batch["labels"].to(device)))
        loss.backward()
        for n, p in params.items():
            if p.grad is not None:
                fisher[n] += p.grad.detach().float().pow(2)
        count += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if count == 0:
        raise ValueError("no batches to estimate the Fisher information from")
    total = sum(float(f.sum()) for f in fisher.values())
    numel = sum(f.numel() for f in fisher.values())
    scale = numel / total if total > 0 else 1.0
    log.info("diagonal Fisher from %d batches (mean before normalising %.3g)", count, total / numel)
    return {n: f * scale for n, f in fisher.items()}
