"""SLiCK probing logic (factkeep.probing.slick): categories, presets, exemplars, a trained model."""

from __future__ import annotations

import random

import pytest
import torch

from factkeep.config import ConfigError
from factkeep.data.facts import Fact
from factkeep.errors import DataError
from factkeep.models.tiny import TinyModelConfig, build_tiny_model
from factkeep.models.tokenizer import build_word_tokenizer
from factkeep.probing.generation import (
    GenerationSettings,
    generate_answers,
    greedy_and_sampled_answers,
)
from factkeep.probing.slick import (
    PRESETS,
    ExemplarPool,
    ProbeProtocol,
    SharedPrefillModel,
    build_prompt_parts,
    build_prompts,
    categorize,
    chunk_seed,
    probe_chunk,
    probe_facts,
    score_fact,
)
from factkeep.study.probe import ProbeCommandConfig, resolve_protocol
from tiny_models import random_tiny_model


@pytest.mark.parametrize(
    ("p_greedy", "p_sample", "category"),
    [
        (1.0, 1.0, "HighlyKnown"),
        (1.0, 0.0, "HighlyKnown"),
        (0.9, 1.0, "MaybeKnown"),
        (0.1, 0.0, "MaybeKnown"),
        (0.5, 0.5, "MaybeKnown"),
        (0.0, 1.0, "WeaklyKnown"),
        (0.0, 1 / 160, "WeaklyKnown"),
        (0.0, 0.0, "Unknown"),
        (9 / 10, 0.0, "MaybeKnown"),
        (10 / 10, 0.0, "HighlyKnown"),
    ],
)
def test_category_boundaries(p_greedy: float, p_sample: float, category: str) -> None:
    assert categorize(p_greedy, p_sample) == category


@pytest.mark.parametrize(("p_greedy", "p_sample"), [(1.1, 0.0), (-0.1, 0.0), (0.0, 2.0)])
def test_category_rejects_out_of_range(p_greedy: float, p_sample: float) -> None:
    with pytest.raises(ValueError):
        categorize(p_greedy, p_sample)


def test_score_fact_counts_aliases() -> None:
    fact = Fact("f", "Where?", ["New York", "NYC"], "r", "s")
    probe = score_fact(fact, ["new york", "Boston"], ["nyc", "the NYC", "x", "y"])
    assert (probe.p_greedy, probe.p_sample, probe.category) == (0.5, 0.5, "MaybeKnown")
    assert score_fact(fact, ["x"], []).category == "Unknown"  # greedy only: P_sample = 0
    assert score_fact(fact, ["x"], ["NYC"]).category == "WeaklyKnown"


def test_presets() -> None:
    assert PRESETS["original"].generations_per_fact == 170
    assert PRESETS["cheap"].generations_per_fact == 20
    assert PRESETS["original"] == ProbeProtocol(10, 4, 16, 0.5, 40)
    with pytest.raises(ConfigError):
        ProbeProtocol(n_prompts=0)


def test_explicit_options_override_the_preset() -> None:
    assert resolve_protocol(ProbeCommandConfig()) == PRESETS["original"]
    cheap = resolve_protocol(ProbeCommandConfig(preset="cheap", num_samples=2, temperature=1.0))
    assert cheap == ProbeProtocol(n_prompts=4, k_exemplars=4, num_samples=2, temperature=1.0)
    # An explicit value equal to the original preset's still wins over the cheap preset.
    assert resolve_protocol(ProbeCommandConfig(preset="cheap", n_prompts=10)).n_prompts == 10


def _pool_facts() -> list[Fact]:
    facts = []
    for rel in ("r1", "r2"):
        for i in range(12):
            subject = f"s{i % 8}"  # subjects s0..s3 have two facts per relation
            facts.append(Fact(f"{rel}.{i}", f"{rel} of {subject} #{i}?", [f"a{i}"], rel, subject))
    # Same question as r1.0, other subject spelling.
    facts.append(Fact("r1.dup", "R1 of s0  #0?", ["a0"], "r1", "other"))
    return facts


def test_exemplars_exclude_the_fact_its_subject_and_question() -> None:
    facts = _pool_facts()
    pool = ExemplarPool(facts)
    for fact in facts:
        sets = pool.sample(fact, k=4, n_prompts=10, seed=3)
        assert len(sets) == 10
        for exemplars in sets:
            assert len(exemplars) == 4
            assert len({e.id for e in exemplars}) == 4
            for e in exemplars:
                assert e.relation == fact.relation
                assert e.id != fact.id
                assert e.subject != fact.subject
                assert e.question.casefold().split() != fact.question.casefold().split()
    assert pool.eligible_count(facts[0]) == 13 - 2 - 1  # itself + same subject + same question


def test_exemplars_depend_on_seed_and_fact_only() -> None:
    facts = _pool_facts()
    pool = ExemplarPool(facts)

    def ids(fact: Fact, seed: int = 0) -> list[list[str]]:
        return [[e.id for e in s] for s in pool.sample(fact, 4, 5, seed=seed)]

    first = ids(facts[3])
    _ = ids(facts[5]), ids(facts[7])  # other facts drawn in between change nothing
    assert ids(facts[3]) == first
    assert ExemplarPool(facts).sample(facts[3], 4, 5, seed=0) == pool.sample(facts[3], 4, 5, 0)
    assert ids(facts[3], seed=1) != first
    assert len({tuple(s) for s in first}) > 1  # the prompts of a fact differ from each other


def test_too_few_exemplars_is_a_clear_error() -> None:
    facts = _pool_facts()
    pool = ExemplarPool(facts[:5], source="dev.jsonl")  # r1 only, 5 facts
    with pytest.raises(DataError, match=r"relation 'r1' has 5 exemplar\(s\) in dev.jsonl, 4 of"):
        pool.check([facts[0]], 5)
    with pytest.raises(DataError, match=r"relation 'r2' has no exemplars in dev.jsonl"):
        pool.check([facts[12]], 1)
    pool.check([facts[0]], 4)


def test_prompts_are_few_shot_with_canonical_answers() -> None:
    facts = _pool_facts()
    (prompt,) = build_prompts(facts[0], [[facts[1], facts[2]]])
    assert prompt == ("Q: r1 of s1 #1?\nA: a1\n\nQ: r1 of s2 #2?\nA: a2\n\nQ: r1 of s0 #0?\nA:")
    assert chunk_seed(0, 1) == chunk_seed(0, 1) != chunk_seed(0, 2)


# A tiny model trained in the test: 8 people whose birth city it memorises, 4 it never sees (with
# cities it never saw either, so guessing cannot make them correct).
NAMES = ["ada", "bob", "cyd", "dan", "eve", "fay", "gus", "hal", "ivy", "jon", "kim", "lea"]
CITIES = ["paris", "rome", "oslo", "lima", "kiev", "doha", "bern", "riga", "baku", "suva", "apia"]
CITIES.append("male")


def _trained() -> tuple[torch.nn.Module, object, list[Fact], list[Fact]]:
    facts = [
        Fact(f"f{i}", f"Where was {name} born?", [CITIES[i]], "born", name)
        for i, name in enumerate(NAMES)
    ]
    known, unknown = facts[:8], facts[8:]
    tok = build_word_tokenizer([f"Q: {f.question}\nA: {f.answers[0]}\n\n" for f in facts])
    shape = TinyModelConfig(hidden_size=64, num_layers=1, num_heads=4, intermediate_size=128)
    model = build_tiny_model(shape, tok, seed=0)
    rng = random.Random(0)
    rows = []  # two-shot documents; loss on the answers (and their newline) only
    for _ in range(32):
        ids, labels = [tok.bos_token_id], [-100]
        for j, fact in enumerate(rng.sample(known, 2)):
            prompt = ("\n\n" if j else "") + f"Q: {fact.question}\nA:"
            p = tok(prompt, add_special_tokens=False)["input_ids"]
            a = tok(f" {fact.answers[0]}\n", add_special_tokens=False)["input_ids"]
            ids += p + a
            labels += [-100] * len(p) + a
        rows.append((ids, labels))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.tensor([ids + [tok.pad_token_id] * (width - len(ids)) for ids, _ in rows])
    mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(300):
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05, f"the tiny model did not memorise its facts (loss {loss.item()})"
    return model, tok, known, unknown


def test_trained_model_gets_sensible_categories() -> None:
    model, tok, known, unknown = _trained()
    protocol = ProbeProtocol(n_prompts=3, k_exemplars=2, num_samples=3)
    pool = ExemplarPool(known)  # exemplars from the known facts, as from a dev split
    results = {}
    for _, chunk, probes in probe_facts(
        model, tok, known + unknown, pool, protocol, max_new_tokens=3, chunk_size=5
    ):
        results.update({f.id: p for f, p in zip(chunk, probes, strict=True)})
    known_cats = [results[f.id].category for f in known]
    assert known_cats.count("HighlyKnown") >= 6, known_cats
    assert set(known_cats) <= {"HighlyKnown", "MaybeKnown"}, known_cats
    for fact in unknown:
        probe = results[fact.id]
        assert probe.category == "Unknown", (fact, probe)
        assert len(probe.greedy_answers) == 3 and len(probe.sampled_answers) == 9


def _random_model_and_prompts(family: str) -> tuple[object, object, list[str]]:
    """A tiny model with large random weights (answers react to any change of the inputs) and
    few-shot prompts of several lengths (left padding in a batch)."""
    facts = _pool_facts()
    model, tok = random_tiny_model(family, (f"Q: {f.question}\nA: {f.answers[0]}" for f in facts))
    pool = ExemplarPool(facts)
    prompts = [p for f in facts[:3] for p in build_prompts(f, pool.sample(f, 2, 2, seed=0))]
    prompts += [f"Q: {f.question}\nA:" for f in facts[:3]]
    return model, tok, prompts


FAMILIES = ["llama", "gpt2", "qwen2", "gpt_neox"]


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prefill_gives_the_same_samples(family: str) -> None:
    """One prefill per prompt, cache repeated: same answers as num_return_sequences, even when
    sampling (same logits, same random stream), with prompts of different lengths (padding)."""
    model, tok, prompts = _random_model_and_prompts(family)
    settings = GenerationSettings(max_new_tokens=4, batch_size=3, temperature=1.0, num_samples=3)
    plain = generate_answers(model, tok, prompts, settings)
    shared = generate_answers(SharedPrefillModel(model), tok, prompts, settings)
    assert shared == plain
    assert len({tuple(a) for a in plain}) > 1 and any(len(set(a)) > 1 for a in plain)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_and_samples_from_one_prefill(family: str) -> None:
    """Greedy answers and samples from one encoding of each prompt: the answers of a greedy call
    and a sampling call with the same batches, and the caller's random state is untouched."""
    model, tok, prompts = _random_model_and_prompts(family)
    settings = GenerationSettings(max_new_tokens=4, batch_size=3, temperature=1.0, num_samples=3)
    greedy_settings = GenerationSettings(max_new_tokens=4, batch_size=3)
    expected_greedy = [a[0] for a in generate_answers(model, tok, prompts, greedy_settings)]
    expected_samples = generate_answers(model, tok, prompts, settings)
    state = torch.random.get_rng_state()
    greedy, samples = greedy_and_sampled_answers(model, tok, prompts, settings)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert greedy == expected_greedy
    assert samples == expected_samples
    assert any(g not in s for g, s in zip(greedy, samples, strict=True))  # samples are not greedy
    with pytest.raises(ValueError, match="temperature"):
        greedy_and_sampled_answers(model, tok, prompts, greedy_settings)


def test_probe_chunk_is_the_same_with_and_without_shared_prefill() -> None:
    """probe_chunk: one shared encoding per prompt or separate greedy and sampling calls give the
    same categories and answers."""
    model, tok, _ = _random_model_and_prompts("llama")
    facts = _pool_facts()[:4]
    pool = ExemplarPool(_pool_facts())
    protocol = ProbeProtocol(n_prompts=2, k_exemplars=2, num_samples=3)
    parts = [build_prompt_parts(f, pool.sample(f, 2, 2, seed=0)) for f in facts]
    runs = [
        probe_chunk(model, tok, facts, parts, protocol, batch_size=6, seed=5, share_prefill=s)
        for s in (True, False)
    ]
    assert [r.to_meta() for r in runs[0]] == [r.to_meta() for r in runs[1]]
    assert all(len(r.sampled_answers) == 6 for r in runs[0])
