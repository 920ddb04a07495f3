"""Models from GGUF files and the model catalog: load, train (full and LoRA), save, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("gguf")

from factkeep.cli import main
from factkeep.data.facts import Fact, write_facts
from factkeep.errors import FactkeepError
from factkeep.models import catalog
from factkeep.models.loading import load_model_and_tokenizer
from gguf_files import write_tiny_llama_gguf

FAST = ["optim.epochs=2", "optim.batch_size=4", "eval.max_new_tokens=3", "progress=false"]


def _facts(prefix: str, n: int) -> list[Fact]:
    return [
        Fact(f"{prefix}{i}", f"Where is thing {prefix}{i}?", [f"in {i}"], "P1", f"thing {i}")
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def gguf_study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("gguf")
    (root / "model").mkdir()
    source = write_tiny_llama_gguf(root / "model" / "tiny.gguf")
    splits = root / "splits"
    splits.mkdir()
    write_facts(splits / "d_known.jsonl", _facts("k", 8))
    write_facts(splits / "d_unknown.jsonl", _facts("u", 8))
    write_facts(splits / "d_held.jsonl", _facts("h", 8))
    return {"root": root, "folder": root / "model", "source": source, "splits": splits}


def _train(study: dict, out: Path, *extra: str) -> int:
    return main(
        [
            "train",
            f"model={study['folder']}",
            "gguf_file=tiny.gguf",
            f"data.splits={study['splits']}",
            f"out={out}",
            *FAST,
            *extra,
        ]
    )


def test_gguf_loads_as_a_dense_model_with_the_source_logits(gguf_study) -> None:
    model, tok = load_model_and_tokenizer(str(gguf_study["folder"]), gguf_file="tiny.gguf")
    assert not getattr(model, "is_quantized", False)
    assert not hasattr(model.config, "quantization_config")
    assert all(p.is_floating_point() for p in model.parameters())
    ids = tok("Q: Where is thing k1?\nA:", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, gguf_study["source"](ids).logits)


def test_full_fine_tuning_of_a_gguf_model_saves_an_ordinary_folder(gguf_study, tmp_path) -> None:
    out = tmp_path / "sft"
    assert _train(gguf_study, out, "optim.lr=1e-2") == 0
    config = json.loads((out / "model" / "config.json").read_text())
    assert "quantization_config" not in config
    trained = load_file(out / "model" / "model.safetensors")
    start = gguf_study["source"].state_dict()
    changed = [n for n, t in trained.items() if not torch.equal(t, start[n])]
    assert len(changed) == len(trained)  # full fine-tuning: every weight moved
    # The saved folder loads without the GGUF file.
    model, _ = load_model_and_tokenizer(str(out / "model"))
    assert torch.equal(model.state_dict()["lm_head.weight"], trained["lm_head.weight"])


def test_self_distillation_with_a_base_teacher_from_gguf(gguf_study, tmp_path) -> None:
    out = tmp_path / "kl"
    assert _train(gguf_study, out, "--config", "kl_to_base") == 0
    result = json.loads((out / "results.json").read_text())
    assert result["teacher_forwards"] > 0


def test_lora_on_a_gguf_model(gguf_study, tmp_path) -> None:
    pytest.importorskip("peft")
    out = tmp_path / "lora"
    assert _train(gguf_study, out, "lora.r=2", "optim.lr=1e-2") == 0
    assert (out / "model" / "model.safetensors").is_file()


def test_what_the_trainer_refuses_is_a_one_line_error(gguf_study, tmp_path, monkeypatch, capsys):
    # A model marked quantized (as transformers may leave a GGUF model): the Trainer refuses it,
    # and the user reads a factkeep error naming the option to change, not a traceback.
    def marked(model, name):
        model.is_quantized = True
        return model

    monkeypatch.setattr("factkeep.models.loading._dense", marked)
    assert _train(gguf_study, tmp_path / "refused") == 1
    err = capsys.readouterr().err
    assert "the Trainer cannot fine-tune this model" in err
    assert "lora.r > 0" in err
    assert "Traceback" not in err


def test_checkpoints_are_kept_only_while_a_phase_runs(gguf_study, tmp_path) -> None:
    out = tmp_path / "ckpt"
    assert _train(gguf_study, out, "--config", "self_distill") == 0
    assert not list((out / "checkpoints").glob("*/checkpoint-*"))
    assert (out / "phases" / "format" / "model" / "model.safetensors").is_file()
    kept = tmp_path / "kept"
    assert _train(gguf_study, kept, "keep_checkpoints=true", "save_total_limit=5") == 0
    assert len(list((kept / "checkpoints" / "main").glob("checkpoint-*"))) == 2  # 2 epochs


def test_save_total_limit_zero_writes_no_checkpoint(gguf_study, tmp_path, monkeypatch) -> None:
    seen: list[str] = []
    import shutil

    real = shutil.rmtree

    def spy(path, *args, **kwargs):  # look before the finished phase's folder is removed
        seen.extend(str(p) for p in Path(path).glob("checkpoint-*"))
        return real(path, *args, **kwargs)

    monkeypatch.setattr("factkeep.training.run.shutil.rmtree", spy)
    assert _train(gguf_study, tmp_path / "none", "save_total_limit=0") == 0
    assert seen == []
    seen.clear()
    assert _train(gguf_study, tmp_path / "one", "save_total_limit=1") == 0
    assert [Path(p).name for p in seen] == ["checkpoint-8"]  # 2 epochs of 4 steps: the newest


def test_catalog_names_resolve_to_installed_packages(tmp_path, monkeypatch) -> None:
    package = tmp_path / "fake_models_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('never imported')\n")
    (package / "model.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = catalog.CatalogModel(
        name="fake-1m",
        package="fake_models_pkg",
        gguf_file="model.gguf",
        install=("fake-models==1.0",),
        license="MIT",
        description="a test entry",
    )
    monkeypatch.setitem(catalog.CATALOG, entry.name, entry)
    assert catalog.resolve_model("fake-1m", None) == (str(package), "model.gguf")
    assert catalog.resolve_model("some/hub-id", "x.gguf") == ("some/hub-id", "x.gguf")
    missing = catalog.CatalogModel("gone-1m", "no_such_pkg_here", "m.gguf", ("gone==1",), "-", "-")
    monkeypatch.setitem(catalog.CATALOG, missing.name, missing)
    with pytest.raises(FactkeepError, match=r"make models.*gone==1"):
        catalog.resolve_model("gone-1m", None)


def test_models_command_lists_the_catalog_and_checks_one(monkeypatch, capsys) -> None:
    gone = catalog.CatalogModel("gone-1m", "no_such_pkg_here", "m.gguf", ("gone==1",), "-", "-")
    monkeypatch.setattr(catalog, "CATALOG", {gone.name: gone})
    monkeypatch.setattr("factkeep.study.models.CATALOG", catalog.CATALOG)
    assert main(["models"]) == 0
    assert "gone-1m" in capsys.readouterr().out
    assert main(["models", "check=gone-1m"]) == 1
    assert main(["models", "check=nope"]) == 1
    assert "unknown catalog model 'nope'" in capsys.readouterr().err
