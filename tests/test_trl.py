"""The TRL integration: ``FactkeepSFTTrainer`` computes the loss ``factkeep train`` computes."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("trl")

from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments
from trl import SFTConfig

from factkeep.data.facts import Fact, read_facts, write_facts
from factkeep.data.prompts import format_prompt
from factkeep.data.world import WorldSpec, build_world
from factkeep.errors import FactkeepError
from factkeep.integrations.trl import (
    FactkeepSFTTrainer,
    ewc_term,
    fact_batches,
    l2_anchor_term,
    prompt_completion_dataset,
    self_distillation_terms,
    snapshot_teacher,
)
from factkeep.methods.freezing import FreezeSpecError, parameter_groups
from factkeep.methods.functional import IGNORE_INDEX
from factkeep.methods.teacher import Teacher
from factkeep.methods.teacher_cache import TeacherCache
from factkeep.methods.terms import KLToTeacher, NLLTerm
from factkeep.models.tiny import TinyModelConfig, build_tiny_model
from factkeep.models.tokenizer import build_word_tokenizer
from factkeep.training.examples import QACollator, QADataset
from factkeep.training.trainer import FactTrainer

ROOT = Path(__file__).resolve().parents[1]
SMALL = WorldSpec(
    n_first_names=20, n_last_names=30, values_per_relation=25, n_qa=12, n_bio=8, n_unseen=8
)
SHAPE = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
# What both trainers get; a large learning rate so that the student moves away from its start.
COMMON: dict[str, Any] = {
    "per_device_train_batch_size": 4,
    "max_steps": 3,
    "learning_rate": 1e-2,
    "lr_scheduler_type": "constant",
    "optim": "adamw_torch",
    "logging_steps": 1,
    "save_strategy": "no",
    "report_to": [],
    "seed": 0,
    "use_cpu": True,
    "disable_tqdm": True,
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny Llama (``model/``), a very different one (``other/``) and split files."""
    root = tmp_path_factory.mktemp("trl")
    world = build_world(SMALL)
    tok = build_word_tokenizer(world.vocabulary_texts())
    for name, seed in (("model", 0), ("other", 1)):
        model = build_tiny_model(SHAPE, tok, seed=seed)
        if name == "other":  # large weights: a teacher far from the student's near-uniform start
            generator = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for param in model.parameters():
                    if param.dim() > 1:
                        param.normal_(0.0, 0.3, generator=generator)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    by_pop: dict[str, list[Fact]] = {}
    for fact in world.facts():
        by_pop.setdefault(fact.meta["population"], []).append(fact)
    splits = root / "splits"
    splits.mkdir()
    write_facts(splits / "d_known.jsonl", by_pop["qa"][:8])
    write_facts(splits / "d_unknown.jsonl", by_pop["unseen"][:8])
    return {"root": root, "model": root / "model", "other": root / "other", "splits": splits}


def _facts(files: dict[str, Any]) -> list[Fact]:
    return read_facts(files["splits"] / "d_known.jsonl") + read_facts(
        files["splits"] / "d_unknown.jsonl"
    )


def _load(path: Path) -> Any:
    return AutoModelForCausalLM.from_pretrained(path, local_files_only=True)


def _tokenizer(files: dict[str, Any]) -> Any:
    return AutoTokenizer.from_pretrained(files["model"], local_files_only=True)


def _sft_config(out: Path, **extra: Any) -> SFTConfig:
    return SFTConfig(output_dir=str(out), bf16=False, **{**COMMON, **extra})


def _trl_trainer(files: dict[str, Any], out: Path, **kwargs: Any) -> FactkeepSFTTrainer:
    config = kwargs.pop("config", None) or _sft_config(out)
    return FactkeepSFTTrainer(
        kwargs.pop("model", None) or _load(files["model"]),
        config,
        train_dataset=kwargs.pop("train_dataset", None) or prompt_completion_dataset(_facts(files)),
        processing_class=_tokenizer(files),
        **kwargs,
    )


def _term_history(trainer: Any) -> list[dict[str, float]]:
    return [h for h in trainer.state.log_history if "loss" in h]


def _run_both(files: dict[str, Any], tmp_path: Path, cached: bool) -> tuple[list, list]:
    """The same 3 steps through ``FactTrainer`` (as ``factkeep train`` builds it) and through
    ``FactkeepSFTTrainer``, with a teacher that differs from the student from the start."""
    tok = _tokenizer(files)
    facts = _facts(files)
    terms = self_distillation_terms(weight=1.0, temperature=0.5, cached=cached)
    qa = QADataset.from_facts(tok, facts)
    teacher = Teacher(_load(files["other"]))
    cache = None
    if cached:
        sequences = [qa[i]["input_ids"] for i in range(len(qa))]
        cache = TeacherCache.build(
            teacher, sequences, temperature=0.5, k=8, pad_id=tok.pad_token_id, progress=False
        )
    fact_trainer = FactTrainer(
        model=_load(files["model"]),
        args=TrainingArguments(
            output_dir=str(tmp_path / "fact"), remove_unused_columns=False, **COMMON
        ),
        train_dataset=qa,
        data_collator=QACollator(tok.pad_token_id),
        processing_class=tok,
        loss_terms=terms,
        teacher=teacher,
        teacher_cache=cache,
    )
    fact_trainer.train()
    trl_trainer = _trl_trainer(
        files,
        tmp_path / "trl",
        loss_terms=self_distillation_terms(weight=1.0, temperature=0.5, cached=cached),
        teacher=Teacher(_load(files["other"])),
        cache_top_k=8,
    )
    if cached:
        assert trl_trainer.teacher is None  # the cache replaces it
        assert trl_trainer.teacher_cache is not None
        assert trl_trainer.teacher_cache.covers(qa[i]["input_ids"] for i in range(len(qa)))
    trl_trainer.train()
    return _term_history(fact_trainer), _term_history(trl_trainer)


def test_trl_batches_equal_the_batches_of_factkeep_train(files, tmp_path) -> None:
    """Same token ids, attention mask and labels (-100 on the prompt) for every example."""
    tok = _tokenizer(files)
    facts = _facts(files)
    trainer = _trl_trainer(files, tmp_path, loss_terms=[NLLTerm()])
    rows = [trainer.train_dataset[i] for i in range(len(facts))]
    trl_batch = trainer.data_collator([{k: r[k] for k in ("input_ids", "labels")} for r in rows])
    qa = QADataset.from_facts(tok, facts)
    fk_batch = QACollator(tok.pad_token_id)([qa[i] for i in range(len(qa))])
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(trl_batch[key], fk_batch[key]), key
    for fact, row in zip(facts, rows, strict=True):
        n_prompt = len(tok(format_prompt(fact.question))["input_ids"])
        assert all(label == IGNORE_INDEX for label in row["labels"][:n_prompt])
        assert row["labels"][n_prompt:] == row["input_ids"][n_prompt:]
        assert row["input_ids"][-1] == tok.eos_token_id


@pytest.mark.parametrize("cached", [False, True], ids=["teacher", "cached_teacher"])
def test_one_loss_implementation_same_terms_through_trl_and_fact_trainer(
    files, tmp_path, cached
) -> None:
    fact, trl = _run_both(files, tmp_path, cached)
    assert len(fact) == len(trl) == 3
    for a, b in zip(fact, trl, strict=True):
        assert b["loss_nll"] == pytest.approx(a["loss_nll"], abs=1e-5)
        assert b["loss_kl_to_teacher"] == pytest.approx(a["loss_kl_to_teacher"], abs=1e-5)
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-4)
    assert fact[0]["loss_kl_to_teacher"] > 0.01  # a real KL, not 0 == 0
    assert fact[-1]["loss_nll"] != fact[0]["loss_nll"]  # the steps trained


def test_completion_only_loss_keeps_prompt_tokens_out_of_the_nll(files, tmp_path) -> None:
    trainer = _trl_trainer(files, tmp_path, loss_terms=[NLLTerm()])
    rows = [trainer.train_dataset[i] for i in range(4)]
    batch = trainer.data_collator([{k: r[k] for k in ("input_ids", "labels")} for r in rows])
    model = trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    flat = logits[:, :-1].flatten(0, 1)
    answer_ce = torch.nn.functional.cross_entropy(flat, batch["labels"][:, 1:].flatten())
    all_labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
    all_ce = torch.nn.functional.cross_entropy(flat, all_labels[:, 1:].flatten())
    assert (batch["labels"] == IGNORE_INDEX).sum() > (batch["attention_mask"] == 0).sum()
    assert float(loss) == pytest.approx(float(answer_ce), abs=1e-6)
    assert abs(float(loss) - float(all_ce)) > 1e-3


def test_freezing_l2_ewc_and_an_ema_teacher_through_trl(files, tmp_path) -> None:
    tok = _tokenizer(files)
    model = _load(files["model"])
    teacher = snapshot_teacher(model)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    terms = [
        *self_distillation_terms(weight=1.0, temperature=0.5, positions="answer"),
        l2_anchor_term(model, weight=0.1),
        ewc_term(model, fact_batches(tok, read_facts(files["splits"] / "d_known.jsonl")), 0.1),
    ]
    trainer = _trl_trainer(
        files,
        tmp_path,
        model=model,
        loss_terms=terms,
        teacher=teacher,
        ema_decay=0.5,
        freeze="attention_only",
    )
    trainer.train()
    logged = _term_history(trainer)
    for name in ("nll", "kl_to_teacher", "l2_to_anchor", "ewc"):
        assert all(f"loss_{name}" in h for h in logged), name
    assert logged[-1]["loss_l2_to_anchor"] > 0 and logged[-1]["loss_ewc"] > 0
    groups = parameter_groups(model)
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], start[n]) for n in groups["mlp"])
    assert all(not params[n].requires_grad for n in groups["mlp"])
    assert any(not torch.equal(params[n], start[n]) for n in groups["attention"])
    moved = dict(teacher.model.named_parameters())
    name = groups["attention"][0]
    assert not torch.equal(moved[name], start[name])  # the EMA teacher follows the student
    assert not torch.equal(moved[name], params[name])


def test_snapshot_teacher_is_a_frozen_copy_that_ignores_trl_patches(files, tmp_path) -> None:
    model = _load(files["model"])
    trainer = _trl_trainer(files, tmp_path, model=model, loss_terms=[NLLTerm()])
    teacher = snapshot_teacher(trainer.model)  # after TRL patched the student's forward
    ids = torch.tensor([[2, 5, 6, 7]])
    mask = torch.ones_like(ids)
    before = teacher.logits(ids, mask)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    assert torch.equal(teacher.logits(ids, mask), before)
    assert all(not p.requires_grad for p in teacher.model.parameters())


def _example_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "trl_self_distill", ROOT / "examples" / "trl_self_distill.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_script_runs_end_to_end(files, tmp_path, capsys) -> None:
    out = tmp_path / "example"
    splits = files["splits"]
    argv = [
        "--model", str(files["model"]),
        "--facts", str(splits / "d_known.jsonl"), str(splits / "d_unknown.jsonl"),
        "--format-facts", str(splits / "d_known.jsonl"),
        "--format-epochs", "1", "--epochs", "1", "--lambda", "2.0", "--tau", "0.5",
        "--batch-size", "8", "--lr", "1e-3", "--output-dir", str(out), "--cpu",
    ]  # fmt: skip
    assert _example_module().main(argv) == 0
    printed = capsys.readouterr().out
    assert "kl_to_teacher" in printed
    assert (out / "model" / "config.json").is_file()
    trained = AutoModelForCausalLM.from_pretrained(out / "model", local_files_only=True)
    base = _load(files["model"])
    assert any(
        not torch.equal(a, b)
        for a, b in zip(trained.state_dict().values(), base.state_dict().values(), strict=True)
    )
    AutoTokenizer.from_pretrained(out / "model", local_files_only=True)


def test_example_script_reports_bad_input(files, tmp_path, capsys) -> None:
    module = _example_module()
    missing = ["--model", str(files["model"]), "--facts", str(tmp_path / "nope.jsonl")]
    assert module.main([*missing, "--output-dir", str(tmp_path / "o"), "--cpu"]) == 1
    assert "facts file not found" in capsys.readouterr().err
    bad_tau = ["--model", str(files["model"]), "--facts", str(files["splits"] / "d_known.jsonl")]
    assert module.main([*bad_tau, "--tau", "0", "--output-dir", str(tmp_path / "o")]) == 1
    assert "tau" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss_terms": []}, "at least one loss term"),
        ({"loss_terms": self_distillation_terms()}, "need a teacher"),
        ({"loss_terms": [NLLTerm()], "config": "packing"}, "packing is not supported"),
        ({"loss_terms": [NLLTerm()], "config": "padding_free"}, "padding_free"),
        ({"loss_terms": [NLLTerm()], "config": "dft"}, "loss_type"),
        ({"loss_terms": [NLLTerm()], "train_dataset": [{"question": "q", "answer": "a"}]},
         "expected 'prompt' and 'completion'"),
        ({"loss_terms": [NLLTerm()], "train_dataset": "data.jsonl"}, "must be a datasets"),
        ({"loss_terms": [KLToTeacher(cached=True)]}, "needs teacher_cache"),
        ({"loss_terms": [KLToTeacher(cached=True)], "teacher": "other", "ema_decay": 0.9},
         "fixed teacher"),
        ({"loss_terms": [NLLTerm()], "teacher": "other", "ema_decay": 1.5}, "ema_decay"),
    ],
)  # fmt: skip
def test_bad_input_gives_a_clear_error(files, tmp_path, kwargs, message) -> None:
    kwargs = dict(kwargs)
    if kwargs.get("teacher") == "other":
        kwargs["teacher"] = Teacher(_load(files["other"]))
    config = kwargs.pop("config", None)
    if config:
        extra = {
            "packing": {"packing": True},
            "padding_free": {"padding_free": True, "max_length": None},
            "dft": {"loss_type": "dft"},
        }[config]
        kwargs["config"] = _sft_config(tmp_path, **extra)
    with pytest.raises(FactkeepError, match=message):
        _trl_trainer(files, tmp_path, **kwargs)


def test_bad_freezing_spec_is_refused(files, tmp_path) -> None:
    with pytest.raises(FreezeSpecError, match="unknown"):
        _trl_trainer(files, tmp_path, loss_terms=[NLLTerm()], freeze="gills_only")


def test_missing_trl_says_how_to_install_it(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "trl", None)  # import trl now raises ImportError
    monkeypatch.delitem(sys.modules, "factkeep.integrations.trl")
    with pytest.raises(FactkeepError, match=r"pip install 'factkeep\[trl\]'"):
        importlib.import_module("factkeep.integrations.trl")
