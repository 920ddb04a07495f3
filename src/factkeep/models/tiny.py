"""Tiny causal LMs built from a config (no download): the synthetic world's model and test models.

The model is an ordinary Hugging Face architecture (Llama or Qwen2 by default) created with
``AutoModelForCausalLM.from_config``, so every later command treats it exactly like a real model.

Example::

    model = build_tiny_model(TinyModelConfig(hidden_size=64), vocab_size=len(tok), tokenizer=tok)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from factkeep.config import ConfigError, help_field


@dataclass
class TinyModelConfig:
    """Shape of a tiny decoder-only model."""

    family: Literal["llama", "qwen2", "gpt2", "gpt_neox"] = help_field(
        "llama", "Architecture family (Hugging Face model_type)."
    )
    hidden_size: int = help_field(128, "Width of the residual stream.")
    num_layers: int = help_field(4, "Number of transformer blocks.")
    num_heads: int = help_field(4, "Attention heads per block.")
    num_kv_heads: int = help_field(
        0,
        "Key/value heads per block, grouped-query attention as in Llama 3 and Qwen2 (llama and "
        "qwen2 only; must divide num_heads; 0 = one per attention head).",
    )
    intermediate_size: int = help_field(512, "Width of the MLP's hidden layer.")
    max_positions: int = help_field(128, "Longest sequence (tokens) the model handles.")
    tie_embeddings: bool = help_field(True, "Share input embedding and LM head weights.")
    init_std: float = help_field(0.02, "Standard deviation of the initial weights.")


def kv_heads(cfg: TinyModelConfig) -> int:
    """The number of key/value heads ``cfg`` asks for, checked against its family and heads.

    Raises:
        ConfigError: naming ``model.num_kv_heads`` if it does not divide ``num_heads`` or the
            family has no grouped-query attention.
    """
    if cfg.num_kv_heads == 0:
        return cfg.num_heads
    if cfg.num_kv_heads < 0 or cfg.num_heads % cfg.num_kv_heads:
        raise ConfigError(
            f"option 'model.num_kv_heads': {cfg.num_kv_heads} does not divide "
            f"model.num_heads={cfg.num_heads}"
        )
    if cfg.family not in ("llama", "qwen2") and cfg.num_kv_heads != cfg.num_heads:
        raise ConfigError(
            f"option 'model.num_kv_heads': family {cfg.family!r} has no grouped-query attention "
            "(use llama or qwen2, or 0)"
        )
    return cfg.num_kv_heads


def build_config(cfg: TinyModelConfig, vocab_size: int, pad_id: int, bos_id: int, eos_id: int):  # type: ignore[no-untyped-def]
    """The ``transformers`` config object for ``cfg`` (not yet a model)."""
    n_kv = kv_heads(cfg)

    common = {
        "vocab_size": vocab_size,
        "pad_token_id": pad_id,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
    }
    if cfg.family in ("llama", "qwen2"):
        return AutoConfig.for_model(
            cfg.family,
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            num_key_value_heads=n_kv,
            intermediate_size=cfg.intermediate_size,
            max_position_embeddings=cfg.max_positions,
            **common,
        )
    if cfg.family == "gpt2":
        return AutoConfig.for_model(
            "gpt2",
            n_embd=cfg.hidden_size,
            n_layer=cfg.num_layers,
            n_head=cfg.num_heads,
            n_inner=cfg.intermediate_size,
            n_positions=cfg.max_positions,
            **common,
        )
    return AutoConfig.for_model(
        "gpt_neox",
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_positions,
        **common,
    )


def build_tiny_model(cfg: TinyModelConfig, tokenizer, seed: int = 0):  # type: ignore[no-untyped-def]
    """A freshly initialised causal LM of shape ``cfg`` for ``tokenizer``'s vocabulary.

    Args:
        cfg: the model shape.
        tokenizer: a Hugging Face tokenizer (its vocabulary size and special ids are used).
        seed: initialisation seed.
    """
    hf_config = build_config(
        cfg,
        vocab_size=len(tokenizer),
        pad_id=tokenizer.pad_token_id,
        bos_id=tokenizer.bos_token_id,
        eos_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(hf_config)
