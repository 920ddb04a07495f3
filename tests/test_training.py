"""``factkeep train`` end to end on a tiny random model: methods, files, freezing, resume."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from factkeep.cli import main
from factkeep.config import resolve_config
from factkeep.data.facts import read_facts, write_facts
from factkeep.data.world import WorldSpec, build_world
from factkeep.models.tiny import TinyModelConfig, build_tiny_model
from factkeep.models.tokenizer import build_word_tokenizer
from factkeep.training.config import TrainCommandConfig
from factkeep.training.costs import COST_CATEGORIES
from factkeep.training.examples import QACollator, QADataset, encode_fact

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "src" / "factkeep" / "configs"
SMALL = WorldSpec(
    n_first_names=20, n_last_names=30, values_per_relation=25, n_qa=12, n_bio=8, n_unseen=8
)
FAST = ["optim.epochs=2", "optim.batch_size=8", "eval.max_new_tokens=3", "progress=false"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train")
    world = build_world(SMALL)
    tok = build_word_tokenizer(world.vocabulary_texts())
    for family in ("llama", "gpt2"):
        shape = TinyModelConfig(
            family=family, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64
        )
        model = build_tiny_model(shape, tok, seed=0)
        model.save_pretrained(root / family)
        tok.save_pretrained(root / family)
    facts = world.facts()
    by_pop: dict[str, list] = {}
    for f in facts:
        by_pop.setdefault(f.meta["population"], []).append(f)
    splits = root / "splits"
    splits.mkdir()
    write_facts(splits / "d_known.jsonl", by_pop["qa"][:24])
    write_facts(splits / "d_unknown.jsonl", by_pop["unseen"][:24])
    write_facts(splits / "d_held.jsonl", by_pop["bio"][:16])
    write_facts(splits / "dev.jsonl", by_pop["bio"][16:24])
    return {"llama": root / "llama", "gpt2": root / "gpt2", "splits": splits}


def _args(files: dict[str, Path], out: Path, config: str | None, *extra: str) -> list[str]:
    args = ["train", f"model={files['llama']}", f"data.splits={files['splits']}", f"out={out}"]
    if config:
        args += ["--config", config]
    return [*args, *FAST, *extra]


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_examples_mask_the_prompt_and_end_with_eos(files) -> None:
    tok = AutoTokenizer.from_pretrained(files["llama"])
    fact = read_facts(files["splits"] / "d_known.jsonl")[0]
    ex = encode_fact(tok, fact)
    answer = [t for t, lab in zip(ex["input_ids"], ex["labels"], strict=True) if lab != -100]
    assert tok.decode(answer[:-1]).strip() == fact.answers[0].lower()
    assert answer[-1] == tok.eos_token_id
    assert ex["labels"][0] == -100
    batch = QACollator(tok.pad_token_id)([ex, encode_fact(tok, read_facts(
        files["splits"] / "d_unknown.jsonl")[0])])  # fmt: skip
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    pad = batch["attention_mask"] == 0
    assert (batch["labels"][pad] == -100).all()
    assert len(QADataset.from_facts(tok, [fact])) == 1


def test_sft_end_to_end_writes_the_run_folder(files, tmp_path, capsys) -> None:
    out = tmp_path / "sft"
    assert main(_args(files, out, "sft")) == 0
    for name in ("config.yaml", "env.json", "metrics.jsonl", "results.json", "model"):
        assert (out / name).exists(), name
    rows = _metrics(out)
    assert rows[0]["step"] == 0  # the starting model is evaluated
    assert {r["phase"] for r in rows} == {"main"}
    assert len(rows) == 3  # start + 2 epochs
    for r in rows:
        assert set(r["acc"]) == {"d_known", "d_unknown", "d_held"}
        assert all(0.0 <= v <= 1.0 for v in r["acc"].values())
        sample_file = out / "samples" / f"step-{r['step']:06d}.jsonl"
        lines = sample_file.read_text().splitlines()
        assert len(lines) == sum(r["n"].values())
    res = _results(out)
    assert res["method"] == "sft" and res["teacher_forwards"] == 0
    assert res["trainable_parameters"] == res["total_parameters"] > 0
    assert res["forgetting"] is not None and 0.0 <= res["forgetting"] <= 1.0
    history = json.loads((out / "phases" / "main" / "done.json").read_text())["log_history"]
    assert all(math.isfinite(h["loss"]) for h in history if "loss" in h)
    AutoModelForCausalLM.from_pretrained(out / "model")
    AutoTokenizer.from_pretrained(out / "model")
    assert "forgetting of d_held" in capsys.readouterr().out


def test_every_epochs_evaluates_every_nth_epoch_and_the_end(files, tmp_path) -> None:
    out = tmp_path / "every2"
    assert main(_args(files, out, "sft", "optim.epochs=5", "eval.every_epochs=2")) == 0
    assert [r["epoch"] for r in _metrics(out)] == [0.0, 2.0, 4.0, 5.0]
    assert main(_args(files, tmp_path / "bad", "sft", "eval.every_epochs=0")) == 2
    assert not (tmp_path / "bad").exists()


def test_self_distill_runs_both_phases_with_the_snapshot_teacher(files, tmp_path) -> None:
    out = tmp_path / "sd"
    assert main(_args(files, out, "self_distill", "optim.epochs=1")) == 0
    rows = _metrics(out)
    assert [r["phase"] for r in rows] == ["format", "format", "main"]
    assert rows[-1]["step"] == 3 + 6  # 24 known facts / 8, then 48 facts / 8
    assert (out / "phases" / "format" / "model" / "config.json").is_file()
    res = _results(out)
    assert res["phases"] == ["format", "main"]
    assert res["teacher_forwards"] == 6  # once per main-phase batch, never in the format phase
    history = json.loads((out / "phases" / "main" / "done.json").read_text())["log_history"]
    assert any("train_loss_kl_to_teacher" in h for h in history)
    cost = res["cost_seconds"]
    assert list(cost) == list(COST_CATEGORIES)
    assert cost["teacher"] > 0 and cost["evaluation"] > 0 and cost["steps"] > 0
    assert cost["checkpoints"] > 0  # one checkpoint per epoch of each phase
    assert cost["teacher_cache"] == 0
    assert sum(cost.values()) <= res["seconds"] + 0.5  # parts of the run's time, rounded


def test_cached_teacher_runs_the_teacher_once_per_cache_batch_not_per_step(files, tmp_path) -> None:
    out = tmp_path / "sdc"
    assert main(_args(files, out, "self_distill_cached", "optim.epochs=1")) == 0
    res = _results(out)
    assert res["teacher_forwards"] == 3  # 48 distinct main-phase sequences, batches of 16
    assert (out / "teacher_cache" / "main.safetensors").is_file()
    history = json.loads((out / "phases" / "main" / "done.json").read_text())["log_history"]
    assert any(h.get("train_loss_kl_to_teacher", 0) > 0 for h in history)
    cost = res["cost_seconds"]
    assert cost["teacher_cache"] > 0 and cost["teacher"] == 0  # no forward during the steps
    bad = tmp_path / "bad"
    assert main(_args(files, bad, "self_distill_cached", "teacher.kind=ema")) == 2
    assert not bad.exists()


@pytest.mark.parametrize(
    "config",
    [
        "known_only",
        "freeze_ffn_only",
        "l2_anchor",
        "kl_to_base",
        "ewc",
        "label_smoothing",
        "self_distill_nontarget",
    ],
)
def test_controls_run_and_do_what_distinguishes_them(files, tmp_path, config) -> None:
    out = tmp_path / config
    assert main(_args(files, out, config, "optim.epochs=1", "log_every_steps=1")) == 0
    res = _results(out)
    assert res["method"] == config
    assert all(math.isfinite(v) for v in res["final"].values())
    logged = _history(out)
    if config == "known_only":  # 24 known facts, no unknown ones: 3 steps of 8
        assert res["steps"] == 3 and res["phases"] == ["main"]
    if config == "freeze_ffn_only":
        assert 0 < res["trainable_parameters"] < res["total_parameters"]
    if config == "kl_to_base":  # the base model is the teacher: no format phase, and it runs
        assert res["phases"] == ["main"] and res["teacher_forwards"] == 6
        assert any(h.get("loss_kl_to_teacher", 0) > 0 for h in logged)
    if config == "ewc":  # the penalty is 0 at the anchor, then grows and is logged
        assert any(h.get("loss_ewc", 0) > 0 for h in logged)
    if config == "self_distill_nontarget":
        assert res["phases"] == ["format", "main"]
        assert any(h.get("loss_kl_to_teacher", 0) > 0 for h in logged)
    if config == "label_smoothing":  # the same first batch and weights as SFT, another loss
        sft = tmp_path / "sft"
        assert main(_args(files, sft, "sft", "optim.epochs=1", "log_every_steps=1")) == 0
        assert abs(logged[0]["loss_nll"] - _history(sft)[0]["loss_nll"]) > 1e-4


def _history(out: Path, phase: str = "main") -> list[dict]:
    """The Trainer's logged entries of a finished phase (its per-term losses)."""
    done = json.loads((out / "phases" / phase / "done.json").read_text())
    return [h for h in done["log_history"] if "loss" in h]


def test_lambda_reaches_the_kl_term_and_scales_it(files, tmp_path) -> None:
    """At the first step the student is its teacher: the KL and its gradient are 0, so the first
    update is the same for any λ, and the second step's logged KL term scales with λ."""
    kl = {}
    for weight in (1.0, 2.5):
        out = tmp_path / f"kl{weight}"
        extra = ["optim.epochs=1", "log_every_steps=1", f"loss.kl_weight={weight}"]
        assert main(_args(files, out, "kl_to_base", *extra)) == 0
        kl[weight] = [h["loss_kl_to_teacher"] for h in _history(out)]
    assert kl[1.0][0] == kl[2.5][0] == 0.0
    assert kl[1.0][1] > 0
    assert kl[2.5][1] == pytest.approx(2.5 * kl[1.0][1], rel=1e-3)


def test_l2_control_matches_the_kl_gradient_norm(files, tmp_path) -> None:
    out = tmp_path / "l2"
    assert main(_args(files, out, "l2_anchor", "optim.epochs=2", "optim.lr=1e-3")) == 0
    history = json.loads((out / "phases" / "main" / "done.json").read_text())["log_history"]
    mus = [h["l2_mu"] for h in history if "l2_mu" in h]
    assert mus and mus[-1] > 0 and mus[-1] != 0.0


def test_replay_patch_and_early_stopping(files, tmp_path) -> None:
    out = tmp_path / "replay"
    assert main(_args(files, out, "replay", "optim.epochs=1")) == 0
    # 24 unknown + 24 replayed known (fraction 0.5) = 48 examples = 6 steps
    assert _metrics(out)[-1]["step"] == 6
    out = tmp_path / "patch"
    assert main(_args(files, out, "known_patch", "optim.epochs=1", "replay.patch_epochs=1")) == 0
    assert [r["phase"] for r in _metrics(out)] == ["main", "main", "patch"]
    out = tmp_path / "early"
    args = _args(files, out, "early_stopping", "optim.epochs=6", "eval.patience=1")
    assert main(args) == 0
    res = _results(out)
    rows = _metrics(out)
    assert "dev" in rows[0]["acc"]
    if res["stopped_early_at"] is not None:
        assert rows[-1]["step"] < 6 * 6


def test_lora_trains_adapters_and_saves_a_merged_model(files, tmp_path) -> None:
    pytest.importorskip("peft")
    out = tmp_path / "lora"
    assert main(_args(files, out, "lora", "optim.epochs=1")) == 0
    res = _results(out)
    assert 0 < res["trainable_parameters"] < res["total_parameters"]
    weights = load_file(out / "model" / "model.safetensors")
    assert not any("lora" in k for k in weights)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_attention_only_leaves_everything_else_bit_identical(files, tmp_path, family) -> None:
    out = tmp_path / f"att_{family}"
    args = _args(files, out, "freeze_attention_only", f"model={files[family]}", "optim.lr=1e-2")
    assert main(args) == 0
    before = load_file(files[family] / "model.safetensors")
    after = load_file(out / "model" / "model.safetensors")
    attention = ("self_attn.", ".attn.")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "nothing trained"
    assert all(any(a in k for a in attention) for k in changed), changed
    res = _results(out)
    assert 0 < res["trainable_parameters"] < res["total_parameters"]


def test_same_seed_same_metrics(files, tmp_path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(_args(files, a, "sft", "optim.lr=1e-2")) == 0
    assert main(_args(files, b, "sft", "optim.lr=1e-2")) == 0
    assert _metrics(a) == _metrics(b)
    assert (a / "samples" / "step-000006.jsonl").read_text() == (
        b / "samples" / "step-000006.jsonl"
    ).read_text()


def test_sigkill_then_resume_reaches_the_same_final_metrics(files, tmp_path) -> None:
    extra = ["optim.epochs=4", "optim.lr=1e-2", "save_every_steps=2", "save_total_limit=10"]
    ref = tmp_path / "ref"
    assert main(_args(files, ref, "self_distill", *extra)) == 0

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "factkeep", *_args(files, out, "self_distill", *extra)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    target = out / "checkpoints" / "main" / "checkpoint-8" / "trainer_state.json"
    deadline = time.time() + 120
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists()
    assert main(_args(files, out, "self_distill", *extra)) == 0
    assert _metrics(out) == _metrics(ref)
    assert _results(out)["final"] == _results(ref)["final"]


def _killed_after_checkpoint(out: Path, checkpoint: int, rows: list[dict]) -> None:
    """Put a finished single-phase run back where a kill right after its main-phase
    ``checkpoint-N`` was saved leaves it: later checkpoints, the evaluations from step N on and
    everything written at the end of the phase are gone."""
    for folder in (out / "checkpoints" / "main").glob("checkpoint-*"):
        if int(folder.name.split("-")[-1]) > checkpoint:
            shutil.rmtree(folder)
    (out / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows if r["step"] < checkpoint)
    )
    for row in rows:
        if row["step"] >= checkpoint:
            (out / "samples" / f"step-{row['step']:06d}.jsonl").unlink()
    shutil.rmtree(out / "model")
    (out / "phases" / "main" / "done.json").unlink()
    (out / "results.json").unlink()


def test_resume_makes_the_evaluation_an_interruption_lost(files, tmp_path) -> None:
    """The Trainer saves a step checkpoint before the epoch-end evaluation of the same step, and
    evaluates the end of training after its last checkpoint: a run killed in between resumes at
    an evaluation point with no metrics row, and must evaluate it before training on."""
    out = tmp_path / "run"
    extra = ["optim.lr=1e-2", "save_every_steps=3", "save_total_limit=10", "keep_checkpoints=true"]
    assert main(_args(files, out, "sft", *extra)) == 0
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [0, 6, 12]  # 6 steps an epoch, checkpoints every 3
    samples = {p.name: p.read_text() for p in (out / "samples").glob("*.jsonl")}
    model = load_file(out / "model" / "model.safetensors")
    for checkpoint in (12, 6):  # the end of training, then the end of the first epoch
        _killed_after_checkpoint(out, checkpoint, rows)
        assert main(_args(files, out, "sft", *extra)) == 0
        assert _metrics(out) == rows, f"resumed from checkpoint-{checkpoint}"
        assert {p.name: p.read_text() for p in (out / "samples").glob("*.jsonl")} == samples
        resumed = load_file(out / "model" / "model.safetensors")
        assert all(torch.equal(model[k], resumed[k]) for k in model)


def test_resume_after_an_early_stop_trains_no_further(files, tmp_path) -> None:
    """Killed after early stopping decided to stop but before the phase was marked done, the run
    ends at its checkpoint instead of training on; so does a run killed between the checkpoint
    and the evaluation that stops it (lr 0: dev accuracy never improves, so patience 1 stops at
    the first epoch's end, step 6, where a checkpoint is saved first)."""
    out = tmp_path / "early"
    extra = ["optim.lr=0", "optim.epochs=4", "eval.patience=1", "save_every_steps=3"]
    extra += ["save_total_limit=10", "keep_checkpoints=true"]
    assert main(_args(files, out, "early_stopping", *extra)) == 0
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [0, 6] and _results(out)["stopped_early_at"] == 6
    for checkpoint in (7, 6):  # both evaluations written; the stopping one lost
        _killed_after_checkpoint(out, checkpoint, rows)
        assert main(_args(files, out, "early_stopping", *extra)) == 0
        assert _metrics(out) == rows, f"killed after checkpoint {checkpoint}"
        assert _results(out)["stopped_early_at"] == 6
        assert json.loads((out / "phases" / "main" / "done.json").read_text())["steps"] == 6


def test_resuming_with_another_config_is_refused(files, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(_args(files, out, "sft", "optim.epochs=1")) == 0
    assert main(_args(files, out, "sft", "optim.epochs=1", "optim.lr=5e-4")) != 0
    assert "different config" in capsys.readouterr().err
    assert main(_args(files, out, "sft", "optim.epochs=1", "optim.lr=5e-4", "resume=false")) == 0


def test_nonfinite_loss_stops_with_a_clear_message(files, tmp_path, capsys) -> None:
    out = tmp_path / "nan"
    assert main(_args(files, out, "sft", "optim.lr=1e30", "optim.grad_clip=0")) != 0
    assert "non-finite" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["loss.kl_weight=1"], "need a teacher"),
        (["teacher.kind=snapshot", "loss.kl_weight=1"], "format phase"),
        (["freeze.train=[bogus]"], "bogus"),
        (["optim.optimizer=adamz"], "optim.optimizer"),
        (
            ["--config", str(CONFIGS / "self_distill_nontarget.yaml"), "teacher.cache_top_k=8"],
            "loss.kl_exclude_target",
        ),
        (["data.train=[nope]"], "nope.jsonl"),
        (['model=""'], "model= is required"),
    ],
)
def test_bad_options_exit_nonzero_with_a_message(files, tmp_path, capsys, extra, message) -> None:
    out = tmp_path / "bad"
    assert main(_args(files, out, None, *extra)) != 0
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_shipped_configs_are_valid(files) -> None:
    names = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    assert {"sft", "known_only", "self_distill", "freeze_attention_only", "l2_anchor"} <= set(names)
    for name in names:
        # forecast_replay replays what an audit puts at risk: it needs the audit's folder.
        extra = ["replay.forecast=runs/audit"] if name == "forecast_replay" else []
        cfg = resolve_config(TrainCommandConfig, str(CONFIGS / f"{name}.yaml"), ["model=x", *extra])
        cfg.validate()
        assert cfg.method == name
        assert yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["method"] == name


def test_self_distill_ffn_only_trains_the_mlps_after_the_format_phase(files, tmp_path) -> None:
    out = tmp_path / "sd_ffn"
    assert main(_args(files, out, "self_distill_ffn_only", "optim.lr=1e-2")) == 0
    res = _results(out)
    assert res["phases"] == ["format", "main"] and res["teacher_forwards"] == 12
    assert res["trainable_parameters"] < res["total_parameters"]
    teacher = load_file(out / "phases" / "format" / "model" / "model.safetensors")
    final = load_file(out / "model" / "model.safetensors")
    mlp = [k for k in final if ".mlp." in k]
    others = [k for k in final if ".mlp." not in k]
    assert mlp and others
    assert all(not torch.equal(final[k], teacher[k]) for k in mlp)
    assert all(torch.equal(final[k], teacher[k]) for k in others)


def test_ema_teacher_follows_the_student_and_is_checkpointed(files, tmp_path) -> None:
    out = tmp_path / "ema"
    extra = ["teacher.kind=ema", "teacher.ema_decay=0.5", "loss.kl_positions=prompt"]
    extra += ["keep_checkpoints=true", "save_total_limit=5"]
    assert main(_args(files, out, "self_distill", "optim.lr=1e-2", *extra)) == 0
    checkpoints = sorted((out / "checkpoints" / "main").glob("checkpoint-*"))
    assert checkpoints and all((c / "ema_teacher" / "config.json").is_file() for c in checkpoints)
    snapshot = load_file(out / "phases" / "format" / "model" / "model.safetensors")
    ema = load_file(checkpoints[-1] / "ema_teacher" / "model.safetensors")
    assert any(not torch.equal(snapshot[k], ema[k]) for k in snapshot)
    assert _results(out)["teacher_forwards"] == 12  # 2 epochs x 6 batches


def test_optimizer_option_reaches_the_trainer(files, tmp_path) -> None:
    out = tmp_path / "sgd"
    extra = ["optim.epochs=1", "optim.optimizer=sgd", "keep_checkpoints=true"]
    assert main(_args(files, out, "sft", *extra)) == 0
    (checkpoint,) = sorted((out / "checkpoints" / "main").glob("checkpoint-*"))[-1:]
    state = torch.load(checkpoint / "optimizer.pt", weights_only=False)
    assert "momentum" in state["param_groups"][0]  # torch.optim.SGD's own option
    assert "betas" not in state["param_groups"][0]
