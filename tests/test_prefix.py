"""Fixed exemplar sets per relation and the reuse of their encoded prefix (probing/prefix.py)."""

from __future__ import annotations

import pytest
import torch

from factkeep.data.facts import Fact
from factkeep.probing.exemplars import ExemplarPool, build_prompt_parts
from factkeep.probing.generation import GenerationSettings, generate_answers
from factkeep.probing.prefix import shared_prefix_answers
from factkeep.probing.slick import PRESETS, ProbeProtocol, probe_chunk
from tiny_models import random_tiny_model

FAMILIES = ["llama", "gpt2", "qwen2", "gpt_neox"]


def _facts() -> list[Fact]:
    facts = []
    for rel in ("r1", "r2"):
        for i in range(10):
            subject = f"s{i % 7}"  # s0..s2 have two facts per relation
            question = f"{rel} of {subject} number {i} " + "very " * (i % 3) + "?"
            facts.append(Fact(f"{rel}.{i}", question, [f"a{i % 4}"], rel, subject))
    return facts


def _model(family: str) -> tuple[object, object]:
    texts = (f"Q: {f.question}\nA: {f.answers[0]}\n" for f in _facts())
    return random_tiny_model(family, texts)


def _parts(k: int = 3, n_prompts: int = 2) -> list[tuple[str, str]]:
    facts = _facts()
    pool = ExemplarPool(facts)
    return [p for f in facts for p in build_prompt_parts(f, pool.fixed_sets(f, k, n_prompts, 0))]


def test_fixed_sets_are_shared_by_a_relation_and_never_show_the_fact() -> None:
    facts = _facts()
    pool = ExemplarPool(facts)
    for index in range(3):
        sets = [tuple(e.id for e in pool.fixed_sets(f, 3, 3, seed=7)[index]) for f in facts]
        for fact, ids in zip(facts, sets, strict=True):
            chosen = [e for e in facts if e.id in ids]
            assert len(ids) == 3 and all(e.relation == fact.relation for e in chosen)
            assert fact.id not in ids and all(e.subject != fact.subject for e in chosen)
        for rel in ("r1", "r2"):
            rel_sets = [s for f, s in zip(facts, sets, strict=True) if f.relation == rel]
            most = max(rel_sets.count(s) for s in rel_sets)
            assert most >= len(rel_sets) - 6  # only facts that meet an exemplar's subject differ
    assert pool.fixed_sets(facts[0], 3, 2, 7) == pool.fixed_sets(facts[0], 3, 2, 7)
    assert pool.fixed_sets(facts[0], 3, 2, 7) != pool.fixed_sets(facts[0], 3, 2, 8)
    assert pool.fixed_sets(facts[0], 3, 2, 7)[0] != pool.fixed_sets(facts[0], 3, 2, 7)[1]


@pytest.mark.parametrize("family", FAMILIES)
def test_reusing_the_prefix_gives_the_same_answers(family: str) -> None:
    model, tok = _model(family)
    parts = _parts()
    settings = GenerationSettings(
        max_new_tokens=4, batch_size=5, temperature=1.0, top_k=5, num_samples=3, seed=11
    )
    state = torch.random.get_rng_state()
    reused = shared_prefix_answers(model, tok, parts, settings, reuse=True)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's stream is untouched
    whole = shared_prefix_answers(model, tok, parts, settings, reuse=False)
    assert reused == whole
    greedy, sampled = reused
    assert all(len(s) == 3 for s in sampled)
    assert any(g not in s for g, s in zip(greedy, sampled, strict=True))  # samples are sampled
    # Greedy answers are those of generate() on the whole prompts.
    prompts = [p + s for p, s in parts]
    expected = generate_answers(model, tok, prompts, GenerationSettings(max_new_tokens=4))
    assert greedy == [a[0] for a in expected]


def test_answers_do_not_depend_on_how_many_samples_are_drawn_for_greedy() -> None:
    model, tok = _model("llama")
    parts = _parts()
    greedy_only = GenerationSettings(max_new_tokens=4, batch_size=7)
    with_samples = GenerationSettings(
        max_new_tokens=4, batch_size=7, temperature=1.0, num_samples=2
    )
    assert (
        shared_prefix_answers(model, tok, parts, greedy_only)[0]
        == shared_prefix_answers(model, tok, parts, with_samples)[0]
    )
    assert shared_prefix_answers(model, tok, parts, greedy_only)[1] == [[] for _ in parts]


def test_probe_chunk_per_relation_with_and_without_reuse() -> None:
    model, tok = _model("qwen2")
    facts = _facts()[:8]
    pool = ExemplarPool(_facts())
    protocol = ProbeProtocol(
        n_prompts=2, k_exemplars=2, num_samples=3, exemplar_sets="per_relation"
    )
    parts = [build_prompt_parts(f, pool.fixed_sets(f, 2, 2, seed=0)) for f in facts]
    runs = [
        probe_chunk(model, tok, facts, parts, protocol, batch_size=6, seed=5, reuse_prefix=r)
        for r in (True, False)
    ]
    assert [r.to_meta() for r in runs[0]] == [r.to_meta() for r in runs[1]]
    assert all(len(r.sampled_answers) == 6 and len(r.greedy_answers) == 2 for r in runs[0])


def test_fast_preset_and_bad_exemplar_sets() -> None:
    assert PRESETS["fast"].exemplar_sets == "per_relation"
    assert PRESETS["fast"].generations_per_fact == PRESETS["cheap"].generations_per_fact
    with pytest.raises(Exception, match="exemplar_sets"):
        ProbeProtocol(exemplar_sets="per_moon")
