"""LoRA adapters through peft, on the linear layers of named parameter groups.

The target modules are resolved with the same groups as freezing (``attention``, ``mlp``, ...), so
``lora.target=[attention]`` means the attention projections of whatever family the model is. The
run saves the merged model (adapters folded into the weights) as an ordinary HF model folder.
Needs ``pip install 'factkeep[lora]'``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from factkeep.config import ConfigError
from factkeep.methods.freezing import parameter_groups
from factkeep.training.config import LoraConfig

__all__ = ["add_lora", "lora_target_modules"]

log = logging.getLogger(__name__)


def lora_target_modules(model: nn.Module, groups: list[str]) -> list[str]:
    """Full names of the linear (or GPT-2 ``Conv1D``) modules in ``groups``."""
    by_group = parameter_groups(model)
    unknown = [g for g in groups if g not in by_group]
    if unknown:
        raise ConfigError(f"lora.target: unknown group(s) {unknown}; groups: {sorted(by_group)}")
    modules = dict(model.named_modules())
    names = []
    for group in groups:
        for param in by_group[group]:
            module_name, _, leaf = param.rpartition(".")
            module = modules.get(module_name)
            is_linear = isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"
            if leaf == "weight" and is_linear and module_name not in names:
                names.append(module_name)
    if not names:
        raise ConfigError(f"lora.target {groups} has no linear layer in this model")
    return names


def add_lora(model: nn.Module, cfg: LoraConfig, seed: int) -> Any:
    """Wrap ``model`` with LoRA adapters (rank ``cfg.r``) on ``cfg.target``; base frozen."""
    try:  # peft is optional (factkeep[lora]): imported only when LoRA is asked for
        import peft
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError("lora.r > 0 needs peft: pip install 'factkeep[lora]'") from exc
    targets = lora_target_modules(model, list(cfg.target))
    torch.manual_seed(seed)
    wrapped = peft.get_peft_model(
        model,
        peft.LoraConfig(
            r=cfg.r,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=targets,
            fan_in_fan_out=type(model).__name__.startswith("GPT2"),
            task_type="CAUSAL_LM",
        ),
    )
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    total = sum(p.numel() for p in wrapped.parameters())
    log.info("LoRA r=%d on %d modules: trainable %s / %s", cfg.r, len(targets), trainable, total)
    return wrapped
