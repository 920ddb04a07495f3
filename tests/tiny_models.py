"""A tiny model whose answers react to any change of its input, for tests of generation paths."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from factkeep.models.tiny import TinyModelConfig, build_tiny_model
from factkeep.models.tokenizer import build_word_tokenizer


def random_tiny_model(family: str, texts: Iterable[str]) -> tuple[torch.nn.Module, object]:
    """A 2-layer model of ``family`` with large random weights, and a word tokenizer of ``texts``.

    Large weights make its logits far from uniform and sensitive to every input token, so two
    generation paths that differ in any way give different answers.
    """
    tok = build_word_tokenizer(texts)
    shape = TinyModelConfig(family=family, hidden_size=32, num_layers=2, num_heads=2)
    model = build_tiny_model(shape, tok, seed=0).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.5, generator=generator)
    return model, tok
