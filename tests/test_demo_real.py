"""``factkeep demo source=entityquestions`` (the stages of ``preset=real``) on a tiny model that has
memorised part of a small EntityQuestions-shaped data set: every stage runs, then is reused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from factkeep.cli import main
from factkeep.models.tiny import TinyModelConfig, build_tiny_model
from factkeep.models.tokenizer import build_word_tokenizer

TEMPLATES = {"P1": "Where was [X] born ?", "P2": "Which country is [X] located in ?"}
ANSWERS = {"P1": [f"town{i}" for i in range(6)], "P2": [f"land{i}" for i in range(6)]}


def _qa(relation: str, i: int, split: str) -> dict:
    subject = f"{split}{relation}x{i}"
    answer = ANSWERS[relation][i % 6]
    return {"question": TEMPLATES[relation].replace("[X]", subject), "answers": [answer]}


@pytest.fixture(scope="module")
def eq_study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eqdemo")
    data = root / "eq"
    rows: dict[str, dict[str, list[dict]]] = {}
    for split, n in (("train", 40), ("dev", 10), ("test", 2)):
        (data / split).mkdir(parents=True)
        for rel in TEMPLATES:
            rows.setdefault(split, {})[rel] = [_qa(rel, i, split) for i in range(n)]
            (data / split / f"{rel}.{split}.json").write_text(json.dumps(rows[split][rel]))
    (data / "relation_query_templates.json").write_text(json.dumps(TEMPLATES))
    # The model memorises the dev facts (its exemplars) and the first half of the train facts,
    # in the few-shot form of the probe: those become HighlyKnown, the rest Unknown.
    known = [r for rel in TEMPLATES for r in rows["dev"][rel] + rows["train"][rel][:20]]
    texts = [f"Q: {r['question']}\nA: {r['answers'][0]}" for r in known]
    all_rows = [r for per in rows.values() for rel in per.values() for r in rel]
    tok = build_word_tokenizer(f"Q: {r['question']}\nA: {r['answers'][0]}" for r in all_rows)
    shape = TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128)
    model = build_tiny_model(shape, tok, seed=0)
    docs = ["\n\n".join(texts[i : i + 3]) + "\n" for i in range(0, len(texts), 3)]
    batch = tok(docs, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(150):
        loss = model(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return {"root": root, "eq": data, "model": root / "model"}


def test_demo_on_entityquestions_runs_every_stage_then_reuses_them(eq_study, tmp_path, capsys):
    out = tmp_path / "demo"
    args = [
        "demo",
        f"out={out}",
        "source=entityquestions",
        f"real_model={eq_study['model']}",
        f"eq_root={eq_study['eq']}",
        "relations=[P1,P2]",
        "per_relation=40",
        "probe_preset=fast",
        "probe_batch_size=16",
        "probe_max_new_tokens=3",
        "n_train=16",
        "unknown_fraction=0.5",
        "unknown_fraction_scope=overall",
        "n_held=8",
        "n_dev=4",
        "methods=[sft,known_only]",
        "epochs=2",
        "lr=1e-3",
        "train_overrides=[optim.batch_size=8,known_only:optim.lr=5e-4]",
        "jobs=1",
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    for stage in ("1/5 EntityQuestions", "2/5", "3/5", "4/5 training 1/2", "5/5 report"):
        assert f"[demo] {stage}" in text
    assert len((out / "data" / "facts.jsonl").read_text().splitlines()) == 80
    probe = json.loads((out / "probe" / "summary.json").read_text())
    assert probe["protocol"]["exemplar_sets"] == "per_relation"
    split = json.loads((out / "split" / "summary.json").read_text())
    assert split["totals"]["d_held"] == 8 and split["totals"]["d_unknown"] == 8
    for method in ("sft", "known_only"):
        results = json.loads((out / "runs" / method / "results.json").read_text())
        assert results["method"] == method
        assert set(results["final"]) == {"d_known", "d_unknown", "d_held"}
    summary = (out / "summary.md").read_text()
    assert "| sft |" in summary
    assert "Where the time went" in summary and "| evaluation |" in summary
    assert (out / "report.html").is_file()
    lrs = {m: _saved(out / "runs" / m)["optim"]["lr"] for m in ("sft", "known_only")}
    assert lrs == {"sft": 1e-3, "known_only": 5e-4}  # the method-scoped override

    assert main(args) == 0
    text = capsys.readouterr().out
    assert "reusing the facts" in text and "reusing the probe results" in text
    assert text.count("[demo] reusing") == 4  # facts, probe and both runs

    # Other splits in the same folder: the finished runs are trained again, not resumed
    assert main([*args, "n_held=6"]) == 0
    text = capsys.readouterr().out
    assert text.count("[demo] reusing") == 2 and "4/5 training 2/2" in text
    for method in ("sft", "known_only"):
        results = json.loads((out / "runs" / method / "results.json").read_text())
        assert results["n_facts"]["d_held"] == 6


def _saved(run: Path) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())


def test_a_method_scoped_override_must_name_a_method_of_the_study(eq_study, tmp_path, capsys):
    out = tmp_path / "demo"
    args = [
        "demo",
        f"out={out}",
        "source=entityquestions",
        f"real_model={eq_study['model']}",
        f"eq_root={eq_study['eq']}",
        "methods=[sft]",
        "train_overrides=[self_distil:loss.kl_weight=3]",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "'self_distil'" in err and "not in methods" in err
    assert not out.exists()
    args[-1] = "train_overrides=[sft:optim.lrr=3]"  # a typo fails before the probe, not after
    assert main(args) == 2
    assert "optim.lrr" in capsys.readouterr().err
    assert not out.exists()


def test_real_preset_sizes_the_study_for_smollm2() -> None:
    from factkeep.config import resolve_config
    from factkeep.study.demo import DemoConfig, apply_preset

    cfg = apply_preset(resolve_config(DemoConfig, None, ["preset=real", "n_held=200"]))
    assert cfg.source == "entityquestions" and cfg.real_model == "smollm2-135m"
    assert cfg.n_held == 200  # set by the user
    assert cfg.probe_preset == "fast" and cfg.unknown_fraction_scope == "overall"
    assert "self_distill" in cfg.methods and "optim.mixed_precision=bf16" in cfg.train_overrides
