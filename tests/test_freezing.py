"""Tests of parameter freezing (factkeep.methods.freezing) on tiny models of every family."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from factkeep.errors import FactkeepError
from factkeep.methods.freezing import (
    GROUPS,
    FreezeSpec,
    apply_freezing,
    layer_index,
    parameter_groups,
    parse_freeze_spec,
    parse_layers,
    select_trainable,
)
from factkeep.models.tiny import TinyModelConfig, build_tiny_model
from factkeep.models.tokenizer import build_word_tokenizer

FAMILIES = ["llama", "qwen2", "gpt2", "gpt_neox"]
NUM_LAYERS = 3
# Module names (last component before weight/bias) of the attention and MLP blocks per family.
ATTENTION = {
    "llama": {"q_proj", "k_proj", "v_proj", "o_proj"},
    "qwen2": {"q_proj", "k_proj", "v_proj", "o_proj"},
    "gpt2": {"attn.c_attn", "attn.c_proj"},
    "gpt_neox": {"query_key_value", "attention.dense"},
}
MLP = {
    "llama": {"gate_proj", "up_proj", "down_proj"},
    "qwen2": {"gate_proj", "up_proj", "down_proj"},
    "gpt2": {"mlp.c_fc", "mlp.c_proj"},
    "gpt_neox": {"dense_h_to_4h", "dense_4h_to_h"},
}
EMBED = {
    "llama": "model.embed_tokens.weight",
    "qwen2": "model.embed_tokens.weight",
    "gpt2": "transformer.wte.weight",
    "gpt_neox": "gpt_neox.embed_in.weight",
}


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_word_tokenizer(["alice was born in paris bob lives in rome and carol in oslo"])


def _model(family: str, tokenizer: PreTrainedTokenizerFast, tie: bool = True) -> torch.nn.Module:
    cfg = TinyModelConfig(
        family=family,  # type: ignore[arg-type]
        hidden_size=16,
        num_layers=NUM_LAYERS,
        num_heads=2,
        intermediate_size=32,
        max_positions=16,
        tie_embeddings=tie,
    )
    return build_tiny_model(cfg, tokenizer)


def _names(model: torch.nn.Module) -> list[str]:
    return [name for name, _ in model.named_parameters()]


def _in(name: str, modules: set[str]) -> bool:
    return any(re.search(rf"(^|\.){re.escape(m)}\.(weight|bias)$", name) for m in modules)


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("family", FAMILIES)
def test_groups_cover_every_parameter_once(
    family: str, tie: bool, tokenizer: PreTrainedTokenizerFast
) -> None:
    model = _model(family, tokenizer, tie)
    groups = parameter_groups(model)
    assert set(groups) == set(GROUPS)
    listed = [name for names in groups.values() for name in names]
    assert sorted(listed) == sorted(_names(model))
    assert groups["attention"] == [n for n in listed if _in(n, ATTENTION[family])]
    assert groups["mlp"] == [n for n in listed if _in(n, MLP[family])]
    assert EMBED[family] in groups["embeddings"]
    assert groups["lm_head"] == ([] if tie else ["lm_head.weight"])
    per_layer = len(groups["norms"]) - (2 if family in ("gpt2", "gpt_neox") else 1)
    assert per_layer == NUM_LAYERS * 2 * (2 if family in ("gpt2", "gpt_neox") else 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_only_and_mlp_only(family: str, tokenizer: PreTrainedTokenizerFast) -> None:
    model = _model(family, tokenizer)
    for shorthand, modules in (("attention_only", ATTENTION), ("ffn_only", MLP)):
        selected = select_trainable(model, parse_freeze_spec(shorthand))
        assert selected == [n for n in _names(model) if _in(n, modules[family])]
        assert {layer_index(n) for n in selected} == set(range(NUM_LAYERS))
        covered = {(layer_index(n), m) for n in selected for m in modules[family] if _in(n, {m})}
        assert len(covered) == NUM_LAYERS * len(modules[family])


@pytest.mark.parametrize(
    ("layers", "expected"),
    [("-1", {2}), ("0-1", {0, 1}), ("2,0", {0, 2}), (":1", {0}), ("-2:", {1, 2}), ("1", {1})],
)
def test_layers_restrict_groups(
    layers: str, expected: set[int], tokenizer: PreTrainedTokenizerFast
) -> None:
    model = _model("qwen2", tokenizer)
    selected = select_trainable(model, FreezeSpec(train=("attention",), layers=layers))
    assert {layer_index(n) for n in selected} == expected
    assert all(_in(n, ATTENTION["qwen2"]) for n in selected)
    # Layers alone train whole blocks; with freeze they restrict what is frozen.
    whole = select_trainable(model, FreezeSpec(layers=layers))
    assert whole == [n for n in _names(model) if layer_index(n) in expected]
    kept = select_trainable(model, FreezeSpec(freeze=("mlp",), layers=layers))
    frozen = set(_names(model)) - set(kept)
    assert frozen == {
        n for n in _names(model) if _in(n, MLP["qwen2"]) and layer_index(n) in expected
    }


def test_parse_layers_and_layer_index() -> None:
    assert parse_layers("0-1, 3", 4) == {0, 1, 3}
    assert parse_layers("-2:", 4) == {2, 3}
    assert parse_layers(":", 2) == {0, 1}
    for bad in ("4", "-5", "2-4", "3-1", "0:9", "x", "1..2", "", "2:1"):
        with pytest.raises(FactkeepError, match="layer"):
            parse_layers(bad, 4)
    assert layer_index("model.layers.12.mlp.up_proj.weight") == 12
    assert layer_index("transformer.h.3.ln_1.bias") == 3
    assert layer_index("model.norm.weight") is None


def test_regexes(tokenizer: PreTrainedTokenizerFast) -> None:
    model = _model("llama", tokenizer)
    names = _names(model)
    only = select_trainable(model, FreezeSpec(train_regex=(r"\.v_proj\.",)))
    assert only == [n for n in names if ".v_proj." in n]
    spec = FreezeSpec(freeze=("mlp",), train_regex=(r"layers\.0\.mlp\.down",))
    assert set(names) - set(select_trainable(model, spec)) == {
        n for n in names if ".mlp." in n and "layers.0.mlp.down" not in n
    }
    spec = FreezeSpec(train=("attention",), freeze_regex=(r"k_proj",))
    assert select_trainable(model, spec) == [n for n in names if re.search("[qvo]_proj", n)]


def test_errors(tokenizer: PreTrainedTokenizerFast) -> None:
    model = _model("llama", tokenizer)
    with pytest.raises(FactkeepError, match=r"'attentoin'.*attention, mlp, embeddings"):
        FreezeSpec(train=("attentoin",))
    with pytest.raises(FactkeepError, match="mlp both trained and frozen"):
        FreezeSpec(train=("mlp",), freeze=("ffn",))
    with pytest.raises(FactkeepError, match="invalid train_regex"):
        FreezeSpec(train_regex=("(",))
    cases = {
        "out of range": FreezeSpec(train=("mlp",), layers="3"),
        "malformed": FreezeSpec(train=("mlp",), layers="first"),
        r"regex 'xyz' matched no parameter": FreezeSpec(freeze_regex=("xyz",)),
        r"group 'lm_head' matched no parameter in layers '0'": FreezeSpec(
            train=("lm_head",), layers="0"
        ),
        r"group 'other' matched no parameter": FreezeSpec(train=("other",)),
        "leaves no trainable parameter": FreezeSpec(freeze=GROUPS),
    }
    for message, spec in cases.items():
        with pytest.raises(FactkeepError, match=message):
            select_trainable(model, spec)
    with pytest.raises(FactkeepError, match="unknown freezing shorthand"):
        parse_freeze_spec("half_frozen")
    with pytest.raises(FactkeepError, match="unknown freezing key"):
        parse_freeze_spec({"trian": ["mlp"]})


def test_parse_freeze_spec() -> None:
    assert parse_freeze_spec("attention_only") == FreezeSpec(train=("attention",))
    assert (
        parse_freeze_spec("mlp_only") == parse_freeze_spec("ffn_only") == FreezeSpec(train=("mlp",))
    )
    assert parse_freeze_spec("freeze_mlp") == FreezeSpec(freeze=("mlp",))
    assert parse_freeze_spec("none") == parse_freeze_spec(None) == FreezeSpec()
    spec = parse_freeze_spec({"train": "attn", "layers": -1, "freeze_regex": ["bias"]})
    assert spec == FreezeSpec(train=("attention",), layers="-1", freeze_regex=("bias",))
    assert parse_freeze_spec(spec) is spec


@pytest.mark.parametrize("family", FAMILIES)
def test_tied_lm_head(
    family: str, tokenizer: PreTrainedTokenizerFast, caplog: pytest.LogCaptureFixture
) -> None:
    tied, untied = _model(family, tokenizer, tie=True), _model(family, tokenizer, tie=False)
    with caplog.at_level(logging.WARNING, logger="factkeep.methods.freezing"):
        assert select_trainable(untied, FreezeSpec(train=("lm_head",))) == ["lm_head.weight"]
        assert not caplog.records
        assert select_trainable(tied, FreezeSpec(train=("lm_head",))) == [EMBED[family]]
        assert "tied tensor" in caplog.text and "trainable" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="factkeep.methods.freezing"):
        spec = FreezeSpec(train=("embeddings", "attention"), freeze=("lm_head",))
        assert EMBED[family] not in select_trainable(tied, spec)
        assert "shared tensor is frozen" in caplog.text


def test_unrecognised_naming_uses_suffix_heuristics() -> None:
    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attention = torch.nn.Linear(2, 2)
            self.ffn = torch.nn.Linear(2, 2)
            self.norm1 = torch.nn.LayerNorm(2)

    model = torch.nn.Module()
    model.blocks = torch.nn.ModuleList([Block(), Block()])
    model.head = torch.nn.Linear(2, 2)
    groups = parameter_groups(model)
    assert groups["attention"] == [
        f"blocks.{i}.attention.{kind}" for i in (0, 1) for kind in ("weight", "bias")
    ]
    assert groups["other"] == ["head.weight", "head.bias"]
    assert select_trainable(model, FreezeSpec(train=("mlp",), layers="-1")) == [
        "blocks.1.ffn.weight",
        "blocks.1.ffn.bias",
    ]
    with pytest.raises(FactkeepError, match="group 'embeddings' matched no parameter"):
        select_trainable(model, FreezeSpec(freeze=("embeddings",)))


def test_apply_freezing_counts_and_logs(
    tokenizer: PreTrainedTokenizerFast, caplog: pytest.LogCaptureFixture
) -> None:
    model = _model("llama", tokenizer)
    with caplog.at_level(logging.INFO, logger="factkeep.methods.freezing"):
        trainable, total = apply_freezing(model, FreezeSpec(train=("mlp",)))
    params = dict(model.named_parameters())
    assert total == sum(p.numel() for p in params.values())
    assert trainable == sum(p.numel() for n, p in params.items() if ".mlp." in n)
    assert f"trainable {trainable:,} / {total:,} parameters ({100 * trainable / total:.1f}%)" in (
        caplog.text
    )
    assert apply_freezing(model, FreezeSpec()) == (total, total)
    assert all(p.requires_grad for p in model.parameters())


SPECS = [
    FreezeSpec(train=("attention",)),
    FreezeSpec(train=("mlp", "norms"), layers="-2:"),
    FreezeSpec(freeze=("embeddings", "attention"), train_regex=(r"\.0\.",)),
    FreezeSpec(train=("lm_head",)),
]


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("spec", SPECS, ids=["attention", "mlp-norms-last2", "regex", "lm_head"])
@pytest.mark.parametrize("family", FAMILIES)
def test_training_step_changes_exactly_trainable(
    family: str, spec: FreezeSpec, tie: bool, tokenizer: PreTrainedTokenizerFast
) -> None:
    model = _model(family, tokenizer, tie)
    apply_freezing(model, spec)
    trainable = set(select_trainable(model, spec))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0
    )
    input_ids = torch.randint(0, len(tokenizer), (2, 8), generator=torch.Generator().manual_seed(0))
    model(input_ids=input_ids, labels=input_ids).loss.backward()
    optimizer.step()
    for name, param in model.named_parameters():
        if name in trainable:
            assert param.requires_grad and not torch.equal(param, before[name]), name
        else:
            assert not param.requires_grad and param.grad is None, name
            assert torch.equal(param, before[name]), name
