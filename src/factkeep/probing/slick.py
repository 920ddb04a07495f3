"""SLiCK knowledge probing: protocol, few-shot exemplar sampling, categories, the batched loop.

For each question the model sees ``n_prompts`` few-shot prompts, each with ``k_exemplars``
question/answer pairs of the *same relation* drawn from an exemplar pool (docs/method.md
section 2). Per prompt it gives 1 greedy answer and ``num_samples`` answers sampled at
``temperature`` with top-k ``top_k``. ``P_greedy`` / ``P_sample`` are the fractions of those
answers that :func:`~factkeep.probing.scoring.exact_match` any gold alias, and :func:`categorize`
maps them to HighlyKnown / MaybeKnown / WeaklyKnown / Unknown.

Protocols (:data:`PRESETS`):

- ``original`` (Gekhman et al. 2024): 10 prompts x 4 exemplars, 1 greedy + 16 samples at T = 0.5,
  top-k 40 per prompt = 170 generations per question.
- ``cheap`` (our reading of the follow-up paper's ~20 generations): 4 prompts x 4 exemplars,
  1 greedy + 4 samples at T = 0.5, top-k 40 per prompt = 4 greedy + 16 sampled = 20 generations.

Determinism: the exemplars of a fact depend only on ``(seed, fact.id)`` and the pool
(:meth:`ExemplarPool.sample`); the sampled answers depend only on the chunk of facts they are
generated with and ``(seed, chunk index)`` (:func:`chunk_seed`), chunks being fixed by fact order
and ``chunk_size``. So a run resumed after chunk ``i`` gives exactly the answers of an uninterrupted
run.

Batching: :func:`probe_chunk` answers all prompts of a chunk of facts together, so the model always
sees full, length-sorted, left-padded batches.

Shared prefill (``share_prefill``, on by default): a prompt is encoded once for its greedy answer
and all its samples (:func:`~factkeep.probing.generation.greedy_and_sampled_answers`); same
answers as encoding it for each of them (greedy and ``num_return_sequences``), and the few-shot
prompt, much longer than the answer, is paid once instead of ``1 + num_samples`` times.

Fixed exemplar sets (``exemplar_sets="per_relation"``, preset ``fast``): prompt ``i`` of every
fact of a relation shows the same exemplars (the fact itself, or one about its subject, replaced by
the next eligible one; :meth:`ExemplarPool.fixed_sets`), so the prompts of a relation share their
few-shot prefix and :func:`~factkeep.probing.prefix.shared_prefix_answers` encodes it once and
each fact only its own question (``reuse_prefix``; the same answers as encoding whole prompts).

Exemplar sampling lives in :mod:`factkeep.probing.exemplars` (re-exported here).

Example::

    pool = ExemplarPool(read_facts("dev.jsonl"))
    for index, chunk, results in probe_facts(model, tok, facts, pool, PRESETS["cheap"]):
        ...
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from factkeep.config import ConfigError
from factkeep.data.facts import HIGHLY_KNOWN, MAYBE_KNOWN, UNKNOWN, WEAKLY_KNOWN, Fact
from factkeep.data.prompts import DEFAULT_TEMPLATE
from factkeep.probing.exemplars import (
    ExemplarPool,
    build_prompt_parts,
    build_prompts,
    stable_int,
)
from factkeep.probing.generation import (
    GenerationSettings,
    generate_answers,
    greedy_and_sampled_answers,
)
from factkeep.probing.prefill import SharedPrefillModel
from factkeep.probing.prefix import PromptParts, shared_prefix_answers
from factkeep.probing.scoring import exact_match

__all__ = [
    "PRESETS",
    "ExemplarPool",
    "FactProbe",
    "ProbeProtocol",
    "SharedPrefillModel",
    "build_prompt_parts",
    "build_prompts",
    "categorize",
    "chunk_seed",
    "probe_chunk",
    "probe_facts",
    "score_fact",
]


EXEMPLAR_SETS = ("per_fact", "per_relation")
"""How exemplar sets are drawn: for each fact, or fixed per relation and prompt index."""


@dataclass(frozen=True)
class ProbeProtocol:
    """How many prompts, exemplars and generations estimate one fact's category.

    Attributes:
        n_prompts: few-shot prompts per question (N_ex).
        k_exemplars: exemplars per prompt (k), drawn from the question's relation.
        num_samples: sampled answers per prompt (0 = greedy only; then P_sample = 0).
        temperature: sampling temperature (0 makes the samples greedy copies).
        top_k: sample among the ``top_k`` most likely tokens (0 = no cut).
        exemplar_sets: ``per_fact``: each fact draws its own exemplar sets
            (:meth:`ExemplarPool.sample`); ``per_relation``: prompt ``i`` of every fact of a
            relation uses the same set, the fact itself and its subject excluded
            (:meth:`ExemplarPool.fixed_sets`), so the encoded exemplars can be reused across facts.
    """

    n_prompts: int = 10
    k_exemplars: int = 4
    num_samples: int = 16
    temperature: float = 0.5
    top_k: int = 40
    exemplar_sets: str = "per_fact"

    def __post_init__(self) -> None:
        if self.exemplar_sets not in EXEMPLAR_SETS:
            raise ConfigError(
                f"exemplar_sets must be one of {', '.join(EXEMPLAR_SETS)}, "
                f"got {self.exemplar_sets!r}"
            )
        if self.n_prompts < 1:
            raise ConfigError(f"n_prompts must be >= 1, got {self.n_prompts}")
        if self.k_exemplars < 0:
            raise ConfigError(f"k_exemplars must be >= 0, got {self.k_exemplars}")
        if self.num_samples < 0:
            raise ConfigError(f"num_samples must be >= 0, got {self.num_samples}")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k}")

    @property
    def generations_per_fact(self) -> int:
        """Greedy plus sampled answers generated per question."""
        return self.n_prompts * (1 + self.num_samples)


PRESETS: dict[str, ProbeProtocol] = {
    "original": ProbeProtocol(n_prompts=10, k_exemplars=4, num_samples=16),
    "cheap": ProbeProtocol(n_prompts=4, k_exemplars=4, num_samples=4),
    "fast": ProbeProtocol(n_prompts=4, k_exemplars=4, num_samples=4, exemplar_sets="per_relation"),
}
"""Named protocols: ``original`` (170 generations per question), ``cheap`` (20) and ``fast``
(``cheap``'s 20 with exemplar sets fixed per relation and prompt index, encoded once)."""


def categorize(p_greedy: float, p_sample: float) -> str:
    """The SLiCK category of a fact from its greedy and sampled accuracies.

    Args:
        p_greedy: fraction of greedy answers that are correct.
        p_sample: fraction of sampled answers that are correct.

    Returns:
        ``HighlyKnown`` if ``p_greedy == 1``; ``MaybeKnown`` if ``0 < p_greedy < 1``;
        ``WeaklyKnown`` if ``p_greedy == 0`` and ``p_sample > 0``; ``Unknown`` otherwise.

    Raises:
        ValueError: a probability outside [0, 1].
    """
    for name, p in (("p_greedy", p_greedy), ("p_sample", p_sample)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {p}")
    if p_greedy == 1.0:
        return HIGHLY_KNOWN
    if p_greedy > 0.0:
        return MAYBE_KNOWN
    if p_sample > 0.0:
        return WEAKLY_KNOWN
    return UNKNOWN


@dataclass
class FactProbe:
    """The probing result of one fact.

    Attributes:
        greedy_answers: one greedy answer per prompt.
        sampled_answers: ``num_samples`` answers per prompt, prompt after prompt.
        p_greedy: fraction of correct greedy answers.
        p_sample: fraction of correct sampled answers (0 when nothing was sampled).
        category: the SLiCK category.
    """

    greedy_answers: list[str]
    sampled_answers: list[str]
    p_greedy: float
    p_sample: float
    category: str

    def to_meta(self) -> dict[str, Any]:
        """The JSON object stored as ``fact.meta["probe"]``."""
        return {
            "p_greedy": self.p_greedy,
            "p_sample": self.p_sample,
            "greedy_answers": list(self.greedy_answers),
            "sampled_answers": list(self.sampled_answers),
        }

    def apply_to(self, fact: Fact) -> Fact:
        """A copy of ``fact`` with ``category`` set and the result in ``meta["probe"]``."""
        meta = {**fact.meta, "probe": self.to_meta()}
        return Fact(
            id=fact.id,
            question=fact.question,
            answers=list(fact.answers),
            relation=fact.relation,
            subject=fact.subject,
            category=self.category,
            meta=meta,
        )


def score_fact(fact: Fact, greedy: Sequence[str], sampled: Sequence[str]) -> FactProbe:
    """Score a fact's generated answers against its gold aliases and categorise it."""
    n_greedy = sum(exact_match(a, fact.answers) for a in greedy)
    n_sampled = sum(exact_match(a, fact.answers) for a in sampled)
    p_greedy = n_greedy / len(greedy) if greedy else 0.0
    p_sample = n_sampled / len(sampled) if sampled else 0.0
    return FactProbe(
        list(greedy), list(sampled), p_greedy, p_sample, categorize(p_greedy, p_sample)
    )


def chunk_seed(seed: int, chunk_index: int) -> int:
    """The sampling seed of chunk ``chunk_index`` (independent of where a run starts)."""
    return stable_int("samples", seed, chunk_index) % (2**31)


def probe_chunk(
    model: Any,
    tokenizer: Any,
    facts: Sequence[Fact],
    prompts: Sequence[Sequence[PromptParts]],
    protocol: ProbeProtocol,
    batch_size: int = 64,
    max_new_tokens: int = 16,
    seed: int = 0,
    share_prefill: bool = True,
    reuse_prefix: bool = True,
) -> list[FactProbe]:
    """Probe a chunk of facts: the greedy answers and the samples of all its prompts.

    With ``per_relation`` exemplar sets the prompts of a chunk share few prefixes:
    :func:`~factkeep.probing.prefix.shared_prefix_answers` encodes each once (``reuse_prefix``)
    and decodes greedy and sampled answers together. Otherwise, with ``share_prefill`` (and
    sampling), one call encodes each prompt once for its greedy answer and all its samples
    (:func:`~factkeep.probing.generation.greedy_and_sampled_answers`); without it, two calls,
    greedy then sampled, each encoding every prompt. Both give the same answers.

    Args:
        model: a Hugging Face causal LM.
        tokenizer: its tokenizer.
        facts: the chunk's facts.
        prompts: for each fact, its ``protocol.n_prompts`` few-shot prompts as
            ``(exemplar prefix, question suffix)`` pairs.
        protocol: the probing protocol.
        batch_size: prompts per forward pass (``per_relation``) or sequences per ``generate``
            call (``per_fact``; sampling runs ``max(1, batch_size // num_samples)`` prompts).
        max_new_tokens: the most tokens per answer.
        seed: the sampling seed of this chunk (see :func:`chunk_seed`).
        share_prefill: ``per_fact``: encode each prompt once for its greedy answer and samples.
        reuse_prefix: ``per_relation``: encode each shared prefix once (same answers, faster).

    Returns:
        One :class:`FactProbe` per fact, in order.
    """
    flat_parts = [p for per_fact in prompts for p in per_fact]
    flat = [prefix + suffix for prefix, suffix in flat_parts]
    sampled: list[list[str]] = [[] for _ in flat]
    sample_settings = GenerationSettings(
        max_new_tokens=max_new_tokens,
        batch_size=max(1, batch_size // max(1, protocol.num_samples)),
        temperature=protocol.temperature,
        top_k=protocol.top_k,
        num_samples=max(1, protocol.num_samples),
        seed=seed,
    )
    if protocol.exemplar_sets == "per_relation":
        settings = dataclasses.replace(sample_settings, batch_size=batch_size)
        if protocol.num_samples == 0:
            settings = dataclasses.replace(settings, temperature=0.0)
        greedy, sampled = shared_prefix_answers(
            model, tokenizer, flat_parts, settings, reuse=reuse_prefix
        )
        if protocol.num_samples and protocol.temperature == 0:  # samples are greedy copies
            sampled = [[g] * protocol.num_samples for g in greedy]
    elif protocol.num_samples > 0 and share_prefill:
        greedy, sampled = greedy_and_sampled_answers(model, tokenizer, flat, sample_settings)
    else:
        greedy_settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size)
        greedy = [a[0] for a in generate_answers(model, tokenizer, flat, greedy_settings)]
        if protocol.num_samples > 0:
            sampled = generate_answers(model, tokenizer, flat, sample_settings)
    results = []
    start = 0
    for fact, per_fact in zip(facts, prompts, strict=True):
        stop = start + len(per_fact)
        fact_samples = [a for answers in sampled[start:stop] for a in answers]
        results.append(score_fact(fact, greedy[start:stop], fact_samples))
        start = stop
    return results


def probe_facts(
    model: Any,
    tokenizer: Any,
    facts: Sequence[Fact],
    pool: ExemplarPool,
    protocol: ProbeProtocol,
    *,
    seed: int = 0,
    batch_size: int = 64,
    max_new_tokens: int = 16,
    chunk_size: int = 64,
    start_chunk: int = 0,
    template: str = DEFAULT_TEMPLATE,
    share_prefill: bool = True,
    reuse_prefix: bool = True,
    progress: bool = False,
    chunk_fn: Callable[..., list[FactProbe]] | None = None,
) -> Iterator[tuple[int, list[Fact], list[FactProbe]]]:
    """Probe ``facts`` chunk by chunk; yields ``(chunk index, chunk facts, results)``.

    Chunk ``i`` holds ``facts[i * chunk_size : (i + 1) * chunk_size]``; chunks before
    ``start_chunk`` are skipped (resuming). Exemplars are checked for every fact before the
    first generation, so bad input fails fast.

    Args:
        model: a Hugging Face causal LM.
        tokenizer: its tokenizer.
        facts: the facts to probe, in a fixed order.
        pool: the exemplar pool.
        protocol: the probing protocol.
        seed: seeds exemplar sampling (per fact) and answer sampling (per chunk).
        batch_size: sequences per ``generate`` call.
        max_new_tokens: the most tokens per answer.
        chunk_size: facts per chunk (the unit of batching, seeding and resuming).
        start_chunk: the first chunk to probe.
        template: the QA prompt template.
        share_prefill: encode each prompt once for its greedy answer and all its samples.
        reuse_prefix: with ``per_relation`` exemplar sets, encode each shared prefix once.
        progress: show a tqdm bar (unit: fact, so its rate is facts/s).
        chunk_fn: replaces :func:`probe_chunk` (tests, benchmarks).

    Raises:
        DataError: a fact has fewer than ``protocol.k_exemplars`` eligible exemplars.
    """
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
    pool.check(facts, protocol.k_exemplars)
    run_chunk = chunk_fn or probe_chunk
    n_chunks = (len(facts) + chunk_size - 1) // chunk_size
    done = min(len(facts), start_chunk * chunk_size)
    with tqdm(
        total=len(facts), initial=done, unit="fact", desc="probe", disable=not progress
    ) as bar:
        for index in range(start_chunk, n_chunks):
            chunk = list(facts[index * chunk_size : (index + 1) * chunk_size])
            draw = pool.fixed_sets if protocol.exemplar_sets == "per_relation" else pool.sample
            prompts = [
                build_prompt_parts(
                    fact, draw(fact, protocol.k_exemplars, protocol.n_prompts, seed), template
                )
                for fact in chunk
            ]
            results = run_chunk(
                model,
                tokenizer,
                chunk,
                prompts,
                protocol,
                batch_size=batch_size,
                max_new_tokens=max_new_tokens,
                seed=chunk_seed(seed, index),
                share_prefill=share_prefill,
                reuse_prefix=reuse_prefix,
            )
            bar.update(len(chunk))
            yield index, chunk, results
