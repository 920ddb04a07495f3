"""The synthetic world: determinism, populations, tokenizer, the ``world`` command end to end."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from factkeep.cli import main
from factkeep.data.facts import read_facts
from factkeep.data.world import WorldSpec, build_world
from factkeep.models.tiny import TinyModelConfig, build_tiny_model
from factkeep.models.tokenizer import build_word_tokenizer
from factkeep.training.pretrain import PretrainConfig, pack_documents, pretrain

SMALL = WorldSpec(
    n_first_names=20,
    n_last_names=30,
    values_per_relation=25,
    n_qa=30,
    n_bio=20,
    n_unseen=10,
    bio_only_copies=1,
    warmup_epochs=0,
)
TINY_MODEL = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


def test_same_seed_same_world_and_tokenizer():
    a, b = build_world(SMALL), build_world(SMALL)
    assert [f.to_dict() for f in a.facts()] == [f.to_dict() for f in b.facts()]
    assert a.pretraining_documents(3) == b.pretraining_documents(3)
    tok_a = build_word_tokenizer(a.vocabulary_texts())
    tok_b = build_word_tokenizer(b.vocabulary_texts())
    assert tok_a.get_vocab() == tok_b.get_vocab()


def test_other_seed_other_world():
    a = build_world(SMALL)
    b = build_world(WorldSpec(**{**SMALL.__dict__, "seed": 1}))
    assert [f.answers for f in a.facts()] != [f.answers for f in b.facts()]


def test_populations_and_corpus_content():
    world = build_world(SMALL)
    facts = world.facts()
    assert len(facts) == (30 + 20 + 10) * len(world.relations)
    assert len({f.id for f in facts}) == len(facts)
    docs = "\n".join(world.pretraining_documents(0))
    for person in world.people:
        mentioned = person.name in docs
        assert mentioned == (person.population != "unseen"), person
        qa_mentioned = f"Q: {world.relations[0].question.format(name=person.name)}" in docs
        assert qa_mentioned == (person.population == "qa")
    # Every biography states every value of its person.
    rng = __import__("random").Random(0)
    bio = world.biography(world.people[0], rng)
    assert all(v in bio for v in world.people[0].values.values())


def test_curriculum_warmup_epochs_hold_a_subset():
    spec = WorldSpec(**{**SMALL.__dict__, "warmup_epochs": 2, "warmup_fraction": 0.2})
    world = build_world(spec)
    subset = {p.name for p in world.warmup_people()}
    assert len(subset) == round(30 * 0.2) + round(20 * 0.2)
    early = "\n".join(world.pretraining_documents(1))
    late = "\n".join(world.pretraining_documents(2))
    for person in world.people:
        if person.population == "unseen":
            continue
        assert (person.name in early) == (person.name in subset)
        assert person.name in late


def test_bio_only_people_get_several_biographies():
    spec = WorldSpec(**{**SMALL.__dict__, "bio_only_copies": 3})
    world = build_world(spec)
    docs = world.pretraining_documents(0)
    birth = world.relations[0]
    for person in world.people:
        # Count biography sentences of this person's birth city (QA documents excluded).
        n = sum(
            1
            for d in docs
            if not d.startswith("Q:") and person.name in d and person.values[birth.name] in d
        )
        assert n == {"bio": 3, "qa": 1, "unseen": 0}[person.population], person


def test_value_sets_large_by_default():
    spec = WorldSpec()
    assert spec.values_per_relation >= 100
    world = build_world(spec)
    for rel in world.relations:
        assert len(set(world.values[rel.name])) == spec.values_per_relation


def test_tokenizer_one_token_per_name_and_value():
    world = build_world(SMALL)
    tok = build_word_tokenizer(world.vocabulary_texts())
    person = world.people[0]
    for word in [person.first, person.last, *person.values.values()]:
        ids = tok(word, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] != tok.unk_token_id
    ids = tok("Q: Where was x born?\nA:", add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("\n") in ids


class _StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def _setup():
    world = build_world(SMALL)
    tok = build_word_tokenizer(world.vocabulary_texts())
    docs = world.pretraining_documents(0) + world.pretraining_documents(1)
    cfg = PretrainConfig(epochs=2, batch_size=4, block_size=32, save_steps=3, warmup_steps=2)
    return tok, pack_documents(tok, docs, cfg.block_size), cfg


def test_pretraining_resume_equals_uninterrupted(tmp_path, monkeypatch):
    tok, blocks, cfg = _setup()
    blocks = blocks[:40]  # 10 steps
    full = build_tiny_model(TINY_MODEL, tok, seed=0)
    pretrain(full, tok, blocks, cfg, tmp_path / "full")

    import factkeep.training.pretrain as pt

    interrupted = build_tiny_model(TINY_MODEL, tok, seed=0)
    original = pt.Trainer

    class Interrupting(original):  # stops after the checkpoint of step 6
        def __init__(self, *args, **kwargs):
            kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), _StopAt(7)]
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(pt, "Trainer", Interrupting)
    with pytest.raises(KeyboardInterrupt):
        pretrain(interrupted, tok, blocks, cfg, tmp_path / "resumed")
    monkeypatch.setattr(pt, "Trainer", original)
    resumed = build_tiny_model(TINY_MODEL, tok, seed=123)  # fresh weights: all state from disk
    pretrain(resumed, tok, blocks, cfg, tmp_path / "resumed")
    for (name, a), (_, b) in zip(full.named_parameters(), resumed.named_parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_world_command_end_to_end(tmp_path, capsys):
    out = tmp_path / "world"
    args = [
        "world",
        f"out={out}",
        "world.n_first_names=20",
        "world.n_last_names=30",
        "world.values_per_relation=25",
        "world.n_qa=30",
        "world.n_bio=20",
        "world.n_unseen=10",
        "world.warmup_epochs=0",
        "model.hidden_size=32",
        "model.num_layers=1",
        "model.num_heads=2",
        "model.intermediate_size=64",
        "pretrain.epochs=2",
        "pretrain.batch_size=8",
        "pretrain.block_size=32",
    ]
    assert main(args) == 0
    for name in ("config.yaml", "env.json", "facts.jsonl", "world_eval.json", "corpus_sample.txt"):
        assert (out / name).is_file(), name
    assert not (out / "checkpoints").exists()
    env = json.loads((out / "env.json").read_text())
    assert env["seed"] == 0 and env["versions"]["torch"]
    facts = read_facts(out / "facts.jsonl")
    assert {f.meta["population"] for f in facts} == {"qa", "bio", "unseen"}
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tok = AutoTokenizer.from_pretrained(out / "model")
    assert model.config.vocab_size == len(tok)
    report = json.loads((out / "world_eval.json").read_text())
    assert 0.0 <= report["populations"]["bio"]["accuracy"] <= 1.0
    assert "Zero-shot QA accuracy" in capsys.readouterr().out

    # Same config again: the cached model is reused, not retrained.
    stamp = (out / "model" / "model.safetensors").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "model" / "model.safetensors").stat().st_mtime_ns == stamp
