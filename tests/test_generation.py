"""Tests of batched answer generation (factkeep.probing.generation) on tiny models."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator

import pytest
import torch
import transformers
from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from factkeep.models.tiny import TinyModelConfig, build_tiny_model
from factkeep.models.tokenizer import build_word_tokenizer
from factkeep.probing.generation import (
    GenerationSettings,
    generate_answers,
    greedy_answers,
    newline_token_ids,
)

# (question, answer, answer ends with EOS instead of a newline). Questions of different lengths.
FACTS = [
    ("where was alice born ?", "paris", False),
    ("where does bob live ?", "new york", False),
    ("who is the best friend of dave ?", "erin", False),
    ("when ?", "1984", False),
    ("what colour is the sky of frank on a good day ?", "deep blue", True),
    ("who taught carol ?", "grace hopper", True),
]
PROMPTS = [f"Q: {q}\nA:" for q, _, _ in FACTS]
ANSWERS = [a for _, a, _ in FACTS]

SHAPE = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64}


def _tiny(family: str, tokenizer: PreTrainedTokenizerFast) -> torch.nn.Module:
    return build_tiny_model(TinyModelConfig(family=family, max_positions=64, **SHAPE), tokenizer)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads; on a busy 2-core machine two threads spinning against
    other processes made this module ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_word_tokenizer(f"Q: {q}\nA: {a}\n" for q, a, _ in FACTS)


def _train(family: str, tokenizer: PreTrainedTokenizerFast, steps: int = 150) -> torch.nn.Module:
    """A tiny model that has memorised FACTS (``Q: ...\\nA: answer`` + newline or EOS)."""
    model = _tiny(family, tokenizer)
    rows = []  # (prompt ids, completion ids): the loss is on the completion only
    for q, a, ends_with_eos in FACTS:
        prompt = tokenizer(f"Q: {q}\nA:")["input_ids"]
        end = [tokenizer.eos_token_id] if ends_with_eos else tokenizer("\n")["input_ids"]
        rows.append((prompt, tokenizer(f" {a}")["input_ids"] + end))
    width = max(len(p) + len(c) for p, c in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, -100)
    for row, (prompt, completion) in enumerate(rows):
        n, m = len(prompt), len(completion)
        input_ids[row, : n + m] = torch.tensor(prompt + completion)
        mask[row, : n + m] = 1
        labels[row, n : n + m] = torch.tensor(completion)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05, (
        f"tiny {family} model did not memorise the facts (loss {loss.item()})"
    )
    return model


@pytest.fixture(scope="module")
def trained_llama(tokenizer: PreTrainedTokenizerFast) -> torch.nn.Module:
    return _train("llama", tokenizer)


@pytest.fixture(scope="module")
def plain_tokenizer() -> PreTrainedTokenizerFast:
    """Without a newline token (newlines map to <unk>), so random models never stop early."""
    return build_word_tokenizer(q for q, _, _ in FACTS)


def _random_model(family: str, tokenizer: PreTrainedTokenizerFast) -> torch.nn.Module:
    """An untrained model with large weights: its greedy choices react to any change of its inputs
    (padding, positions, attention masks)."""
    model = _tiny(family, tokenizer)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.5, generator=generator)
    return model


@pytest.fixture
def no_transformers_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail if transformers logs a warning or Python warns during the test."""
    transformers.utils.logging.warning_once.cache_clear()
    transformers.utils.logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert not logged, logged
        assert not caught, [str(w.message) for w in caught]
    finally:
        transformers.utils.logging.disable_propagation()


@pytest.mark.usefixtures("no_transformers_warnings")
def test_trained_model_answers_greedily(
    trained_llama: torch.nn.Module, tokenizer: PreTrainedTokenizerFast
) -> None:
    assert greedy_answers(trained_llama, tokenizer, PROMPTS) == ANSWERS


def test_generation_stops_at_newline_and_eos(
    trained_llama: torch.nn.Module, tokenizer: PreTrainedTokenizerFast
) -> None:
    calls = []
    handle = trained_llama.register_forward_hook(lambda *_: calls.append(1))
    try:
        for prompt, answer in zip(PROMPTS, ANSWERS, strict=True):
            calls.clear()
            assert greedy_answers(trained_llama, tokenizer, [prompt], max_new_tokens=16) == [answer]
            # One forward per answer word plus the newline / EOS step, not max_new_tokens.
            assert len(calls) == len(answer.split()) + 1, (prompt, len(calls))
    finally:
        handle.remove()


def test_batch_size_does_not_change_trained_answers(
    trained_llama: torch.nn.Module, tokenizer: PreTrainedTokenizerFast
) -> None:
    one = greedy_answers(trained_llama, tokenizer, PROMPTS, batch_size=1)
    assert one == greedy_answers(trained_llama, tokenizer, PROMPTS, batch_size=64) == ANSWERS


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen2", "gpt_neox"])
def test_left_padding_does_not_change_greedy_output(
    family: str, plain_tokenizer: PreTrainedTokenizerFast
) -> None:
    """Padding, attention masks and (for gpt2's absolute embeddings) position ids are right."""
    model = _random_model(family, plain_tokenizer)
    settings = {"max_new_tokens": 6}
    alone = greedy_answers(model, plain_tokenizer, PROMPTS, batch_size=1, **settings)
    assert len(set(alone)) > 1 and all(alone)  # the check below is not vacuous
    assert greedy_answers(model, plain_tokenizer, PROMPTS, batch_size=4, **settings) == alone
    assert greedy_answers(model, plain_tokenizer, PROMPTS, batch_size=64, **settings) == alone


def test_output_order_is_input_order(plain_tokenizer: PreTrainedTokenizerFast) -> None:
    model = _random_model("llama", plain_tokenizer)
    prompts = [PROMPTS[i] for i in (4, 3, 0, 2, 5, 1, 3)]  # lengths not sorted, one repeated
    each = [greedy_answers(model, plain_tokenizer, [p], max_new_tokens=6)[0] for p in prompts]
    assert greedy_answers(model, plain_tokenizer, prompts, batch_size=3, max_new_tokens=6) == each
    assert each[1] == each[6]


@pytest.fixture(scope="module")
def trained_gpt2(tokenizer: PreTrainedTokenizerFast) -> torch.nn.Module:
    return _train("gpt2", tokenizer)


@pytest.mark.usefixtures("no_transformers_warnings")
def test_gpt2_trained_answers(
    trained_gpt2: torch.nn.Module, tokenizer: PreTrainedTokenizerFast
) -> None:
    assert greedy_answers(trained_gpt2, tokenizer, PROMPTS, batch_size=4) == ANSWERS
    assert greedy_answers(trained_gpt2, tokenizer, PROMPTS, batch_size=1) == ANSWERS


@pytest.mark.usefixtures("no_transformers_warnings")
def test_sampling_returns_num_samples_and_is_seeded(
    plain_tokenizer: PreTrainedTokenizerFast,
) -> None:
    model = _random_model("llama", plain_tokenizer)
    settings = GenerationSettings(max_new_tokens=6, temperature=1.0, num_samples=4, batch_size=4)
    rng_before = torch.get_rng_state()
    first = generate_answers(model, plain_tokenizer, PROMPTS, settings)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is untouched
    assert len(first) == len(PROMPTS)
    assert all(len(samples) == 4 for samples in first)
    assert generate_answers(model, plain_tokenizer, PROMPTS, settings) == first
    other_seed = GenerationSettings(**{**vars(settings), "seed": 1})
    assert generate_answers(model, plain_tokenizer, PROMPTS, other_seed) != first
    assert any(len(set(samples)) > 1 for samples in first)  # samples of a prompt differ


def test_low_temperature_sampling_gives_trained_answers(
    trained_llama: torch.nn.Module, tokenizer: PreTrainedTokenizerFast
) -> None:
    settings = GenerationSettings(temperature=0.05, top_k=5, num_samples=3)
    answers = generate_answers(trained_llama, tokenizer, PROMPTS, settings)
    assert answers == [[a] * 3 for a in ANSWERS]


def test_greedy_repeats_its_answer_per_sample(
    trained_llama: torch.nn.Module, tokenizer: PreTrainedTokenizerFast
) -> None:
    answers = generate_answers(
        trained_llama, tokenizer, PROMPTS[:2], GenerationSettings(num_samples=3)
    )
    assert answers == [[ANSWERS[0]] * 3, [ANSWERS[1]] * 3]


def test_state_is_restored_and_pad_falls_back_to_eos(
    plain_tokenizer: PreTrainedTokenizerFast,
) -> None:
    model = _random_model("llama", plain_tokenizer)
    model.train()
    tok = build_word_tokenizer(q for q, _, _ in FACTS)
    expected = greedy_answers(model, tok, PROMPTS, max_new_tokens=4)
    assert model.training
    assert tok.padding_side == "right"
    tok.pad_token = None
    assert greedy_answers(model, tok, PROMPTS, max_new_tokens=4) == expected
    assert tok.pad_token is None
    assert model.training
    assert generate_answers(model, tok, [], GenerationSettings()) == []


def test_newline_token_ids_word_tokenizer(tokenizer: PreTrainedTokenizerFast) -> None:
    ids = newline_token_ids(tokenizer)
    assert ids == (tokenizer.convert_tokens_to_ids("\n"),)
    assert newline_token_ids(tokenizer) is ids  # cached


def test_newline_token_ids_byte_level_bpe() -> None:
    """GPT-2 style: newline bytes are spelled 'Ċ' in the vocabulary."""
    vocab = {"a": 0, "Ġ": 1, "Ċ": 2, ".": 3, "ĊĊ": 4, ".Ċ": 5, "Ġa": 6, "Ċa": 7, "<eos>": 8}
    merges = [("Ċ", "Ċ"), (".", "Ċ"), ("Ġ", "a"), ("Ċ", "a")]
    core = Tokenizer(models.BPE(vocab, merges))
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>")
    assert newline_token_ids(tok) == (2, 4, 5, 7)


def test_newline_token_ids_sentencepiece_byte_fallback() -> None:
    """Llama/Gemma style: a newline is the byte-fallback token '<0x0A>'."""
    vocab = {"<unk>": 0, "<0x0A>": 1, "▁a": 2, "a": 3, "<eos>": 4, "▁": 5}
    core = Tokenizer(models.BPE(vocab, [("▁", "a")], unk_token="<unk>", byte_fallback=True))
    core.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<eos>", unk_token="<unk>")
    assert newline_token_ids(tok) == (1,)


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="num_samples"):
        GenerationSettings(num_samples=0)
    with pytest.raises(ValueError, match="temperature"):
        GenerationSettings(temperature=-1.0)
