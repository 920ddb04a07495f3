"""Tiny causal LMs built from a config (no download): the synthetic world's model and test models.

The model is an ordinary Hugging Face architecture (Llama or Qwen2 by default) created with
``AutoModelForCausalLM.from_config``, so every later command treats it exactly like a real model.

Example::

    model = build_tiny_model(TinyModelConfig(hidden_size=64), vocab_size=len(tok), tokenizer=tok)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from factkeep.config import help_field


@dataclass
class TinyModelConfig:
    """Shape of a tiny decoder-only model."""

    family: Literal["llama", "qwen2", "gpt2", "gpt_neox"] = help_field(
        "llama", "Architecture family (Hugging Face model_type)."
    )
    hidden_size: int = help_field(128, "Width of the residual stream.")
    num_layers: int = help_field(4, "Number of transformer blocks.")
    num_heads: int = help_field(4, "Attention heads per block.")
    intermediate_size: int = help_field(512, "Width of the MLP's hidden layer.")
    max_positions: int = help_field(128, "Longest sequence (tokens) the model handles.")
    tie_embeddings: bool = help_field(True, "Share input embedding and LM head weights.")
    init_std: float = help_field(0.02, "Standard deviation of the initial weights.")


def build_config(cfg: TinyModelConfig, vocab_size: int, pad_id: int, bos_id: int, eos_id: int):  # type: ignore[no-untyped-def]
    """The ``transformers`` config object for ``cfg`` (not yet a model)."""
    from transformers import AutoConfig

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
            num_key_value_heads=cfg.num_heads,
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
    import torch
    from transformers import AutoModelForCausalLM

    hf_config = build_config(
        cfg,
        vocab_size=len(tokenizer),
        pad_id=tokenizer.pad_token_id,
        bos_id=tokenizer.bos_token_id,
        eos_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(hf_config)
