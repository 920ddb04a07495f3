"""Tests of the tiny model builder (factkeep.models.tiny)."""

from __future__ import annotations

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from factkeep.config import ConfigError
from factkeep.models.tiny import TinyModelConfig, build_tiny_model, kv_heads
from factkeep.models.tokenizer import build_word_tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_word_tokenizer(["alice was born in paris bob lives in rome"])


def _shape(**kw: object) -> TinyModelConfig:
    base: dict[str, object] = {
        "hidden_size": 16,
        "num_layers": 1,
        "num_heads": 4,
        "intermediate_size": 32,
        "max_positions": 16,
    }
    base.update(kw)
    return TinyModelConfig(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_grouped_query_attention_shrinks_keys_and_values(
    family: str, tokenizer: PreTrainedTokenizerFast
) -> None:
    full = build_tiny_model(_shape(family=family), tokenizer)
    grouped = build_tiny_model(_shape(family=family, num_kv_heads=1), tokenizer)
    attn_full = full.model.layers[0].self_attn
    attn_grouped = grouped.model.layers[0].self_attn
    head_dim = 16 // 4
    assert attn_full.k_proj.weight.shape == (4 * head_dim, 16)
    assert attn_grouped.k_proj.weight.shape == (1 * head_dim, 16)
    assert attn_grouped.v_proj.weight.shape == (1 * head_dim, 16)
    assert attn_grouped.q_proj.weight.shape == attn_full.q_proj.weight.shape
    ids = torch.tensor([[1, 2, 3, 4]])
    assert grouped(input_ids=ids).logits.shape == (1, 4, len(tokenizer))


def test_kv_heads_default_and_errors() -> None:
    assert kv_heads(_shape()) == 4
    assert kv_heads(_shape(num_kv_heads=2)) == 2
    with pytest.raises(ConfigError, match=r"model\.num_kv_heads.*does not divide"):
        kv_heads(_shape(num_kv_heads=3))
    with pytest.raises(ConfigError, match=r"model\.num_kv_heads.*does not divide"):
        kv_heads(_shape(num_kv_heads=-1))
    with pytest.raises(ConfigError, match=r"gpt2.*no grouped-query attention"):
        kv_heads(_shape(family="gpt2", num_kv_heads=1))
    assert kv_heads(_shape(family="gpt_neox", num_kv_heads=4)) == 4
