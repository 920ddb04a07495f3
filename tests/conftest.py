"""Shared test settings: offline, one torch thread (tests run beside other work on 2 cores)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory: pytest.TempPathFactory):
    """A factory: ``tiny_study(name, n_known, n_unknown, n_held)`` builds a small synthetic world,
    a random tiny Llama over its vocabulary (``model/``) and split files (``splits/``); returns
    ``{"root", "model", "splits", "world"}`` (``world``: every fact of the world as JSONL)."""
    from factkeep.data.facts import write_facts
    from factkeep.data.world import WorldSpec, build_world
    from factkeep.models.tiny import TinyModelConfig, build_tiny_model
    from factkeep.models.tokenizer import build_word_tokenizer

    spec = WorldSpec(
        n_first_names=20, n_last_names=30, values_per_relation=25, n_qa=12, n_bio=8, n_unseen=8
    )

    def build(name: str, n_known: int = 24, n_unknown: int = 24, n_held: int = 16) -> dict:
        root = tmp_path_factory.mktemp(name)
        world = build_world(spec)
        tok = build_word_tokenizer(world.vocabulary_texts())
        shape = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
        build_tiny_model(shape, tok, seed=0).save_pretrained(root / "model")
        tok.save_pretrained(root / "model")
        facts = world.facts()
        by_pop: dict[str, list] = {}
        for fact in facts:
            by_pop.setdefault(fact.meta["population"], []).append(fact)
        (root / "splits").mkdir()
        write_facts(root / "splits" / "d_known.jsonl", by_pop["qa"][:n_known])
        write_facts(root / "splits" / "d_unknown.jsonl", by_pop["unseen"][:n_unknown])
        write_facts(root / "splits" / "d_held.jsonl", by_pop["bio"][:n_held])
        write_facts(root / "world.jsonl", facts)
        return {"root": root, "model": root / "model", "splits": root / "splits",
                "world": root / "world.jsonl"}  # fmt: skip

    return build
