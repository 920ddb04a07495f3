"""Batched generation of short answers for any Hugging Face causal LM and tokenizer.

Used by probing, training callbacks and evaluation alike, so that every part of factkeep produces
answers the same way: left-padded batches of prompts sorted by length, greedy decoding (or top-k
sampling), generation stopped at EOS or at the first newline, only the new tokens decoded, and the
answer cut out with :func:`~factkeep.probing.scoring.clean_generation`.

Stopping at a newline: the answer ends at the first newline (see ``clean_generation``), so every
vocabulary token whose decoded text *contains* ``"\\n"`` (``"\\n"`` itself, ``"Ċ"``/``"ĊĊ"`` of
byte-level BPEs, ``"<0x0A>"`` of SentencePiece byte fallback, ``".\\n"``, ...) ends the answer.
These ids are found once per tokenizer (:func:`newline_token_ids`, cached) and passed to
``generate`` as extra EOS ids (``GenerationConfig.eos_token_id`` takes a list), together with the
tokenizer's and the model's own EOS ids. That costs one ``isin`` per decoding step.
``stop_strings=`` would also work for newlines split over several tokens, but it builds
per-vocabulary lookup tables and checks strings at every step, which is slower and never needed
here: a newline is never *split* across tokens (it is one character, one byte), so some token
containing it is always generated.

Example::

    answers = greedy_answers(model, tokenizer, ["Q: Capital of France?\\nA:"])
"""

from __future__ import annotations

import contextlib
import copy
import logging
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

from factkeep.probing.prefill import SharedPrefillModel, prefill_cache
from factkeep.probing.scoring import clean_generation

__all__ = [
    "GenerationSettings",
    "generate_answers",
    "greedy_and_sampled_answers",
    "greedy_answers",
    "model_device",
    "newline_token_ids",
    "rng_devices",
    "stop_token_ids",
]

logger = logging.getLogger(__name__)

# Substrings of a vocabulary entry that may stand for a newline: the character itself, the
# byte-level BPE stand-in for byte 0x0A (GPT-2, Llama 3, Qwen, Mistral) and SentencePiece's byte
# fallback token. Only entries containing one of these are decoded, so the scan stays cheap for
# vocabularies of 256k entries; every candidate is confirmed by decoding it.
_NEWLINE_MARKERS = ("\n", "Ċ", "<0x0A>")

_NEWLINE_CACHE: weakref.WeakKeyDictionary[Any, tuple[int, tuple[int, ...]]] = (
    weakref.WeakKeyDictionary()
)


@dataclass
class GenerationSettings:
    """How answers are generated.

    Attributes:
        max_new_tokens: the most tokens generated per answer.
        batch_size: prompts per ``generate`` call (each prompt brings ``num_samples`` sequences).
        temperature: 0 means greedy decoding; above 0, top-k sampling at this temperature.
        top_k: sample among the ``top_k`` most likely tokens (0 = no top-k cut); sampling only.
        num_samples: answers returned per prompt. Sampled answers share one forward of the prompt
            batch (``num_return_sequences``); greedy decoding is deterministic, so its one answer
            is repeated.
        seed: sampling seed; batch ``i`` (after sorting prompts by length) uses ``seed + i``, so
            a prompt's samples are reproducible for the same list of prompts and settings (but
            change if the other prompts of the call change).
    """

    max_new_tokens: int = 16
    batch_size: int = 64
    temperature: float = 0.0
    top_k: int = 40
    num_samples: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")


def newline_token_ids(tokenizer: Any) -> tuple[int, ...]:
    """The ids of the tokens whose decoded text contains a newline (cached per tokenizer).

    Args:
        tokenizer: a Hugging Face tokenizer.

    Returns:
        The sorted ids; empty if no token can produce a newline.
    """
    size = len(tokenizer)
    try:
        cached = _NEWLINE_CACHE.get(tokenizer)
    except TypeError:  # not weak-referenceable or not hashable: no caching
        cached = None
    if cached is not None and cached[0] == size:
        return cached[1]

    candidates = {
        idx
        for token, idx in tokenizer.get_vocab().items()
        if any(marker in token for marker in _NEWLINE_MARKERS)
    }
    # Whatever the vocabulary's spelling, the tokens a newline is encoded to are candidates too.
    for text in ("\n", "a\nb", "a.\n\nb"):
        candidates.update(tokenizer.encode(text, add_special_tokens=False))
    ids = tuple(
        sorted(
            idx for idx in candidates if "\n" in tokenizer.decode([idx], skip_special_tokens=False)
        )
    )
    logger.debug("%d newline token ids for %s", len(ids), type(tokenizer).__name__)
    with contextlib.suppress(TypeError):
        _NEWLINE_CACHE[tokenizer] = (size, ids)
    return ids


def _as_id_list(value: int | Sequence[int] | None) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """EOS ids of the tokenizer and of the model's generation config, plus the newline ids."""
    ids = _as_id_list(tokenizer.eos_token_id)
    model_config = getattr(model, "generation_config", None)
    if model_config is not None:
        ids += _as_id_list(model_config.eos_token_id)
    ids += newline_token_ids(tokenizer)
    return list(dict.fromkeys(ids))


def _generation_config(settings: GenerationSettings, stop_ids: list[int], pad_id: int) -> Any:
    """A fresh ``GenerationConfig`` for ``settings``.

    ``generate`` fills the fields left unset (``None``) from the model's own generation config, so
    every option that changes the decoding rule is set explicitly here (a checkpoint's
    ``repetition_penalty`` or ``top_p`` must not leak in). Sampling-only options are only set when
    sampling, so greedy decoding raises no "flag is only used in sample-based modes" warning.
    """
    common: dict[str, Any] = {
        "max_new_tokens": settings.max_new_tokens,
        "min_new_tokens": 0,
        "eos_token_id": stop_ids,
        "pad_token_id": pad_id,
        "num_beams": 1,
        "repetition_penalty": 1.0,
        "no_repeat_ngram_size": 0,
        "use_cache": True,
    }
    if settings.temperature == 0:
        return GenerationConfig(do_sample=False, **common)
    return GenerationConfig(
        do_sample=True,
        temperature=settings.temperature,
        top_k=settings.top_k,
        top_p=1.0,
        typical_p=1.0,
        num_return_sequences=settings.num_samples,
        **common,
    )


def model_device(model: Any) -> torch.device:
    """The device of the model's parameters."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device


def rng_devices(device: torch.device) -> tuple[list[int], str | None]:
    """Arguments of ``torch.random.fork_rng`` that fork the CPU RNG and ``device``'s."""
    if device.type in ("cpu", "meta"):
        return [], None
    index = device.index
    if index is None:
        index = torch.get_device_module(device.type).current_device()
    return [index], device.type


@contextlib.contextmanager
def _prepared(model: Any, tokenizer: Any) -> Iterator[int]:
    """Left padding, a pad token (EOS if none) and eval mode for the duration; yields the pad id."""
    old_side = tokenizer.padding_side
    old_pad = tokenizer.pad_token
    was_training = model.training
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad token nor an EOS token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.eval()
    try:
        yield int(tokenizer.pad_token_id)
    finally:
        tokenizer.padding_side = old_side
        if tokenizer.pad_token != old_pad:
            tokenizer.pad_token = old_pad
        model.train(was_training)


def _answers(tokenizer: Any, output: torch.Tensor, prompt_length: int) -> list[str]:
    """The cleaned answers of ``generate``'s output (only the new tokens decoded)."""
    texts = tokenizer.batch_decode(output[:, prompt_length:], skip_special_tokens=True)
    return [clean_generation(t) for t in texts]


BatchStep = Callable[[int, dict[str, torch.Tensor], int], list[list[str]]]
"""``step(batch_index, inputs, pad_id)``: the answers of each prompt of one left-padded batch."""


def _run_batches(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    batch_size: int,
    progress: bool,
    step: BatchStep,
) -> list[list[str]]:
    """Batching of :func:`generate_answers`: sort by length, left-pad, call ``step``, reorder."""
    if not prompts:
        return []
    lengths = [len(ids) for ids in tokenizer(list(prompts))["input_ids"]]
    # Longest first, so that running out of memory shows at the first batch, not the last.
    order = sorted(range(len(prompts)), key=lambda i: (-lengths[i], i))
    device = model_device(model)
    results: list[list[str]] = [[] for _ in prompts]
    logger.debug(
        "generating for %d prompts (longest %d tokens) in batches of %d on %s",
        len(prompts),
        max(lengths),
        batch_size,
        device,
    )
    with (
        _prepared(model, tokenizer) as pad_id,
        torch.inference_mode(),
        tqdm(total=len(prompts), unit="prompt", disable=not progress, desc="generate") as bar,
    ):
        for batch_index, start in enumerate(range(0, len(order), batch_size)):
            rows = order[start : start + batch_size]
            encoded = tokenizer([prompts[i] for i in rows], return_tensors="pt", padding=True)
            inputs = {key: encoded[key].to(device) for key in ("input_ids", "attention_mask")}
            for row, answers in zip(rows, step(batch_index, inputs, pad_id), strict=True):
                results[row] = answers
            bar.update(len(rows))
    return results


def generate_answers(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    settings: GenerationSettings,
    progress: bool = False,
) -> list[list[str]]:
    """Generate ``settings.num_samples`` short answers for each prompt.

    Prompts are tokenized with the tokenizer's defaults (special tokens such as BOS included, as in
    training), sorted by token length (longest first) and generated in left-padded batches of
    ``settings.batch_size``; the output is in the original order. Generation stops at EOS (the
    tokenizer's and the model's) or at any token containing a newline; only the new tokens are
    decoded (special tokens skipped) and cleaned with
    :func:`~factkeep.probing.scoring.clean_generation`.

    Runs under ``torch.inference_mode`` with the model in eval mode (its training flag and the
    tokenizer's padding side and pad token are restored afterwards). Sampling seeds torch with
    ``settings.seed + batch_index`` inside a forked RNG, so the caller's random state is untouched
    and the same prompts with the same settings give the same answers.

    Args:
        model: a Hugging Face decoder-only causal LM.
        tokenizer: its tokenizer; a missing pad token falls back to EOS.
        prompts: the prompts, e.g. ``"Q: ...\\nA:"``.
        settings: decoding options.
        progress: show a tqdm progress bar (unit: prompt).

    Returns:
        For each prompt, in input order, a list of ``settings.num_samples`` answers.
    """
    sampling = settings.temperature > 0
    per_prompt = settings.num_samples if sampling else 1
    fork_devices, rng_type = rng_devices(model_device(model))
    stop_ids = stop_token_ids(model, tokenizer)

    def step(batch_index: int, inputs: dict[str, torch.Tensor], pad_id: int) -> list[list[str]]:
        config = _generation_config(settings, stop_ids, pad_id)
        with torch.random.fork_rng(devices=fork_devices, enabled=sampling, device_type=rng_type):
            if sampling:
                torch.manual_seed(settings.seed + batch_index)
            output = model.generate(**inputs, generation_config=config)
        texts = _answers(tokenizer, output, inputs["input_ids"].shape[1])
        per_row = [
            texts[j * per_prompt : (j + 1) * per_prompt] for j in range(len(texts) // per_prompt)
        ]
        return per_row if sampling else [a * settings.num_samples for a in per_row]

    return _run_batches(model, tokenizer, prompts, settings.batch_size, progress, step)


def greedy_and_sampled_answers(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    settings: GenerationSettings,
    progress: bool = False,
) -> tuple[list[str], list[list[str]]]:
    """One greedy and ``settings.num_samples`` sampled answers per prompt, one prefill per prompt.

    Each batch of ``settings.batch_size`` prompts is encoded once (all tokens but the last,
    :func:`~factkeep.probing.prefill.prefill_cache`); greedy decoding continues from a copy of that
    cache and sampling from the cache repeated ``num_samples`` times. The answers are those of
    ``generate_answers`` called twice with the same batches, greedily and with ``settings`` (the
    samples use the same random stream), but the few-shot prompts are encoded once instead of
    twice. Models whose cache cannot be copied and repeated get the two plain calls.

    Args:
        model: a Hugging Face decoder-only causal LM.
        tokenizer: its tokenizer.
        prompts: the prompts.
        settings: the sampling options (``temperature > 0``); ``batch_size`` counts prompts.
        progress: show a tqdm progress bar (unit: prompt).

    Returns:
        ``(greedy, sampled)``: per prompt, its greedy answer and its list of sampled answers.
    """
    if settings.temperature <= 0:
        raise ValueError("greedy_and_sampled_answers needs sampling settings (temperature > 0)")
    n = settings.num_samples
    greedy_settings = GenerationSettings(
        max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size
    )
    fork_devices, rng_type = rng_devices(model_device(model))
    stop_ids = stop_token_ids(model, tokenizer)

    def step(batch_index: int, inputs: dict[str, torch.Tensor], pad_id: int) -> list[list[str]]:
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        cache = prefill_cache(model, ids, mask)
        greedy_cache = copy.deepcopy(cache)
        cache.batch_repeat_interleave(n)
        greedy_out = model.generate(
            **inputs,
            past_key_values=greedy_cache,
            generation_config=_generation_config(greedy_settings, stop_ids, pad_id),
        )
        config = _generation_config(settings, stop_ids, pad_id)
        config.num_return_sequences = 1
        with torch.random.fork_rng(devices=fork_devices, device_type=rng_type):
            torch.manual_seed(settings.seed + batch_index)
            sampled_out = model.generate(
                input_ids=ids.repeat_interleave(n, dim=0),
                attention_mask=mask.repeat_interleave(n, dim=0),
                past_key_values=cache,
                generation_config=config,
            )
        greedy = _answers(tokenizer, greedy_out, ids.shape[1])
        sampled = _answers(tokenizer, sampled_out, ids.shape[1])
        return [[g, *sampled[j * n : (j + 1) * n]] for j, g in enumerate(greedy)]

    def plain() -> tuple[list[str], list[list[str]]]:
        greedy = generate_answers(model, tokenizer, prompts, greedy_settings, progress)
        sampled = generate_answers(SharedPrefillModel(model), tokenizer, prompts, settings)
        return [g[0] for g in greedy], sampled

    if not prompts or min(len(ids) for ids in tokenizer(list(prompts))["input_ids"]) < 2:
        return plain()  # a one-token prompt has nothing to prefill
    try:
        both = _run_batches(model, tokenizer, prompts, settings.batch_size, progress, step)
    except (AttributeError, TypeError, NotImplementedError) as exc:
        logger.warning("shared prefill unavailable for this model (%s); not sharing", exc)
        return plain()
    return [a[0] for a in both], [a[1:] for a in both]


def greedy_answers(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    batch_size: int = 64,
    max_new_tokens: int = 16,
    progress: bool = False,
) -> list[str]:
    """One greedy answer per prompt (see :func:`generate_answers`).

    Args:
        model: a Hugging Face decoder-only causal LM.
        tokenizer: its tokenizer.
        prompts: the prompts.
        batch_size: prompts per ``generate`` call.
        max_new_tokens: the most tokens generated per answer.
        progress: show a tqdm progress bar.

    Returns:
        The cleaned answers, in input order.
    """
    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size)
    return [a[0] for a in generate_answers(model, tokenizer, prompts, settings, progress)]
