"""Greedy and sampled answers for prompts that share a few-shot prefix, the prefix encoded once.

With fixed exemplar sets per relation and prompt index (``ProbeProtocol.exemplar_sets =
"per_relation"``), the few-shot prompts of a relation's facts differ only in their last block, the
probed question: ``prompt = prefix + suffix``, the prefix being most of the prompt. Here each
distinct prefix is run through the model once per group of prompts, its key/value cache repeated
for the group, and only the suffixes are encoded (``reuse=True``); ``reuse=False`` encodes the
whole prompts and must give the same answers (tests compare the two).

Each row of a batch is laid out as ``[prefix][padding][suffix]``: the suffixes are left-padded
after the shared prefix, the padding is masked, and the position ids count only real tokens, so
every row computes what it would compute alone. Token ids are those of the whole prompt, tokenized
as usual: the prefix is the run of leading tokens that lie inside the prefix text (found with the
tokenizer's offsets), so the model sees exactly the tokens it would see without the reuse (a BPE
may tokenize ``"\\n\\n"`` at the end of a text differently from ``"\\n\\nQ"``). A prompt whose
tokens straddle the boundary is encoded whole.

Decoding is a small loop of its own rather than ``generate``: after the suffixes' forward pass, the
last position's logits give each prompt's first greedy token *and* its ``n`` first sampled tokens
(``generate`` would encode the last token ``1 + n`` times). Then the ``1 + n`` answers of a prompt
share one cache row and one forward pass for as long as they agree (a confident model's samples
mostly repeat its greedy answer), and an answer that has emitted a stop token (EOS or any newline
token, as in :mod:`factkeep.probing.generation`) leaves the batch (``Cache.batch_select_indices``),
so the short answers of closed-book QA do not pay for the longest one. Sampling is temperature
then top-k, as ``generate`` does; the random stream is seeded per batch (``seed + batch index``)
inside a forked RNG, so the caller's random state is untouched and the answers are reproducible.

Example::

    greedy, sampled = shared_prefix_answers(model, tok, [(prefix, "Q: ...\\nA:")], settings)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from factkeep.probing.generation import (
    GenerationSettings,
    model_device,
    rng_devices,
    stop_token_ids,
)
from factkeep.probing.scoring import clean_generation

__all__ = ["PromptParts", "shared_prefix_answers"]

PromptParts = tuple[str, str]
"""``(prefix, suffix)``: a prompt split where the probed question begins."""

SplitIds = tuple[tuple[int, ...], list[int]]
"""A prompt's token ids as ``(prefix ids, suffix ids)``."""


def _split_ids(tokenizer: Any, parts: Sequence[PromptParts]) -> list[SplitIds]:
    """Each prompt's token ids (special tokens included), cut into (prefix ids, suffix ids).

    The prefix ids are the leading tokens that end inside the prefix text; a prompt whose tokens
    straddle the boundary (or a tokenizer without offsets) gets an empty prefix.
    """
    texts = [prefix + suffix for prefix, suffix in parts]
    try:
        encoded = tokenizer(texts, return_offsets_mapping=True)
        offsets = encoded["offset_mapping"]
    except (NotImplementedError, KeyError, TypeError):  # a tokenizer without offsets
        return [((), list(ids)) for ids in tokenizer(texts)["input_ids"]]
    result = []
    for (prefix, _), ids, spans in zip(parts, encoded["input_ids"], offsets, strict=True):
        cut = 0
        while cut < len(ids) - 1 and spans[cut][1] <= len(prefix):
            cut += 1
        if cut and spans[cut][0] < len(prefix):  # a token across the boundary
            cut = 0
        result.append((tuple(ids[:cut]), list(ids[cut:])))
    return result


def _sample(logits: torch.Tensor, temperature: float, top_k: int) -> torch.Tensor:
    """One token per row: softmax(logits / temperature) restricted to the top-k tokens."""
    scores = logits / temperature
    if 0 < top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    return torch.multinomial(torch.softmax(scores, dim=-1), 1).squeeze(-1)


def _first_pass(
    model: Any,
    prefix: list[int],
    suffixes: Sequence[list[int]],
    pad_id: int,
    prefix_cache: Any,
) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
    """Encode ``[prefix][pad][suffix]`` rows; returns (last logits, cache, mask, last position).

    With ``prefix_cache`` only the suffixes are run (on a copy of the cache, repeated per row);
    without it the whole rows are.
    """
    device = model_device(model)
    width = max(len(s) for s in suffixes)
    ids = torch.full((len(suffixes), width), pad_id, dtype=torch.long)
    suffix_mask = torch.zeros((len(suffixes), width), dtype=torch.long)
    for row, tokens in enumerate(suffixes):
        ids[row, width - len(tokens) :] = torch.tensor(tokens)
        suffix_mask[row, width - len(tokens) :] = 1
    n_prefix = len(prefix)
    positions = (n_prefix + suffix_mask.cumsum(-1) - 1).clamp(min=0)
    mask = torch.cat([torch.ones((len(suffixes), n_prefix), dtype=torch.long), suffix_mask], 1)
    ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
    if prefix_cache is not None:
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(len(suffixes))
        inputs, input_positions = ids, positions
    else:
        cache = None
        head = torch.tensor([prefix], dtype=torch.long, device=device).expand(len(suffixes), -1)
        head_positions = torch.arange(n_prefix, device=device).expand(len(suffixes), -1)
        inputs = torch.cat([head, ids], 1)
        input_positions = torch.cat([head_positions, positions], 1)
    out = model(
        input_ids=inputs,
        attention_mask=mask,
        position_ids=input_positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    return out.logits[:, -1, :].float(), out.past_key_values, mask, positions[:, -1]


def _decode(
    model: Any,
    logits: torch.Tensor,
    cache: Any,
    mask: torch.Tensor,
    last_position: torch.Tensor,
    settings: GenerationSettings,
    stop_ids: torch.Tensor,
    n_samples: int,
) -> list[list[int]]:
    """Decode ``1 + n_samples`` answers per row of ``logits`` (one row per prompt).

    Every answer is a *row*; rows that have produced the same tokens so far (of the same prompt)
    share one *node*: one row of the cache and one forward pass. A step picks each row's token
    from its node's logits (greedy rows the argmax, the others a sample), drops the rows that
    stopped, and makes one node per distinct (node, token) pair left. A confident model's answers
    mostly agree, so most steps run far fewer nodes than rows.

    Returns:
        The token lists in row order (each prompt's greedy answer, then its samples), stop
        tokens included.
    """
    copies = 1 + n_samples
    device = logits.device
    n_rows = logits.shape[0] * copies
    vocab = logits.shape[-1]
    rows = torch.arange(n_rows, device=device)  # the rows still generating
    node = rows // copies  # (R,) each row's node; the nodes are the cache's rows
    greedy = rows % copies == 0
    tokens: list[list[int]] = [[] for _ in range(n_rows)]
    for step in range(settings.max_new_tokens):
        row_logits = logits[node]  # (R, V)
        chosen = row_logits.argmax(-1)
        sampled = ~greedy
        if bool(sampled.any()):
            chosen[sampled] = _sample(row_logits[sampled], settings.temperature, settings.top_k)
        for row, token in zip(rows.tolist(), chosen.tolist(), strict=True):
            tokens[row].append(token)
        going = ~torch.isin(chosen, stop_ids)
        if step == settings.max_new_tokens - 1 or not bool(going.any()):
            break
        rows, node, greedy, chosen = rows[going], node[going], greedy[going], chosen[going]
        pairs, node = torch.unique(node * vocab + chosen, return_inverse=True)
        parent, token = pairs // vocab, pairs % vocab
        cache.batch_select_indices(parent)  # repeated parents duplicate their cache row
        mask = torch.cat([mask[parent], torch.ones_like(mask[parent, :1])], 1)
        last_position = last_position[parent] + 1
        out = model(
            input_ids=token[:, None],
            attention_mask=mask,
            position_ids=last_position[:, None],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1, :].float()
    return tokens


def _groups(split: Sequence[SplitIds], batch_size: int) -> list[tuple[tuple[int, ...], list[int]]]:
    """Prompt indices grouped by prefix ids (first-seen order), cut into batches of
    ``batch_size``, each batch longest suffix first."""
    by_prefix: dict[tuple[int, ...], list[int]] = {}
    for i, (prefix, _) in enumerate(split):
        by_prefix.setdefault(prefix, []).append(i)
    batches = []
    for prefix, members in by_prefix.items():
        ordered = sorted(members, key=lambda i: (-len(split[i][1]), i))
        for start in range(0, len(ordered), batch_size):
            batches.append((prefix, ordered[start : start + batch_size]))
    return batches


def shared_prefix_answers(
    model: Any,
    tokenizer: Any,
    parts: Sequence[PromptParts],
    settings: GenerationSettings,
    reuse: bool = True,
    progress: bool = False,
) -> tuple[list[str], list[list[str]]]:
    """One greedy and ``settings.num_samples`` sampled answers per ``(prefix, suffix)`` prompt.

    Args:
        model: a Hugging Face decoder-only causal LM whose cache supports
            ``batch_repeat_interleave`` and ``batch_select_indices`` (``DynamicCache``).
        tokenizer: its tokenizer.
        parts: the prompts, split into a shared prefix and the prompt's own suffix.
        settings: ``batch_size`` (prompts per forward pass), ``max_new_tokens``, and the
            sampling: ``num_samples`` answers per prompt at ``temperature`` with ``top_k``, seeded
            by ``seed`` (``temperature = 0``: greedy answers only, no samples).
        reuse: encode each prefix once per batch group and reuse its cache (else encode whole
            prompts; same answers).
        progress: show a tqdm progress bar (unit: prompt).

    Returns:
        ``(greedy, sampled)``: per prompt, its greedy answer and its list of sampled answers.
    """
    n_samples = settings.num_samples if settings.temperature > 0 else 0
    greedy: list[str] = ["" for _ in parts]
    sampled: list[list[str]] = [[] for _ in parts]
    if not parts:
        return greedy, sampled
    device = model_device(model)
    stop_ids = torch.tensor(stop_token_ids(model, tokenizer), dtype=torch.long, device=device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    devices, device_type = rng_devices(device)
    was_training = model.training
    model.eval()
    split = _split_ids(tokenizer, parts)
    cached: tuple[tuple[int, ...], Any] = ((), None)
    try:
        with (
            torch.inference_mode(),
            tqdm(total=len(parts), unit="prompt", disable=not progress, desc="generate") as bar,
        ):
            for batch_index, (prefix, members) in enumerate(_groups(split, settings.batch_size)):
                if reuse and prefix and cached[0] != prefix:  # groups come one prefix at a time
                    ids = torch.tensor([prefix], dtype=torch.long, device=device)
                    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
                    cached = (prefix, out.past_key_values)
                cache = cached[1] if reuse and prefix else None
                suffixes = [split[i][1] for i in members]
                logits, batch_cache, mask, last = _first_pass(
                    model, list(prefix), suffixes, int(pad_id), cache
                )
                with torch.random.fork_rng(devices=devices, device_type=device_type):
                    torch.manual_seed(settings.seed + batch_index)
                    tokens = _decode(
                        model, logits, batch_cache, mask, last, settings, stop_ids, n_samples
                    )
                texts = tokenizer.batch_decode(tokens, skip_special_tokens=True)
                copies = 1 + n_samples
                for j, member in enumerate(members):
                    answers = [clean_generation(t) for t in texts[j * copies : (j + 1) * copies]]
                    greedy[member], sampled[member] = answers[0], answers[1:]
                bar.update(len(members))
    finally:
        model.train(was_training)
    return greedy, sampled
