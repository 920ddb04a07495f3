"""A tiny Llama-architecture GGUF file written by the tests themselves (needs the gguf package).

The model is a randomly initialised ``LlamaForCausalLM`` with a byte-level BPE tokenizer (the 256
byte symbols of GPT-2's byte-to-unicode map plus a few merges), written in float32 the way
llama.cpp's converter writes Llama checkpoints (q/k rows permuted for its rotary layout). Loading
the file must give back the same logits as the source model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch


def _byte_symbols() -> list[str]:
    """GPT-2's byte -> printable unicode map, in byte order."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    by_byte = dict(zip(printable, chars, strict=True))
    return [chr(by_byte[b]) for b in range(256)]


MERGES = ["Ġ A", "Q :", "Ġ t", "Ġ a", "i n", "e r", "o n", "a n"]
"""BPE merges (byte-level spelling; ``Ġ`` is a space)."""


def tiny_vocab() -> list[str]:
    """Byte symbols, the merged tokens, then the EOS token."""
    return [*_byte_symbols(), *(m.replace(" ", "") for m in MERGES), "<|endoftext|>"]


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (interleaved rotary halves), as its converter writes them."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def tiny_llama(seed: int = 0) -> Any:
    """The random source model (2 layers, width 32, 4 heads, 2 KV heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    vocab = tiny_vocab()
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        bos_token_id=len(vocab) - 1,
        eos_token_id=len(vocab) - 1,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


def write_tiny_llama_gguf(path: Path, seed: int = 0) -> Any:
    """Write ``tiny_llama(seed)`` with its tokenizer to ``path``; returns the source model."""
    import gguf

    model = tiny_llama(seed)
    cfg = model.config
    vocab = tiny_vocab()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_vocab_size(len(vocab))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab)
    writer.add_token_types([1] * (len(vocab) - 1) + [3])
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(len(vocab) - 1)
    writer.add_eos_token_id(len(vocab) - 1)
    writer.add_add_bos_token(False)

    def add(name: str, tensor: torch.Tensor) -> None:
        writer.add_tensor(name, tensor.detach().float().numpy().copy())

    sd = model.state_dict()
    add("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        q = sd[p + "self_attn.q_proj.weight"].numpy()
        k = sd[p + "self_attn.k_proj.weight"].numpy()
        writer.add_tensor(f"blk.{i}.attn_q.weight", _permute(q, cfg.num_attention_heads).copy())
        writer.add_tensor(f"blk.{i}.attn_k.weight", _permute(k, cfg.num_key_value_heads).copy())
        add(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        add(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        add(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        add(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        add(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        add(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        add(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    add("output_norm.weight", sd["model.norm.weight"])
    add("output.weight", sd["lm_head.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model
