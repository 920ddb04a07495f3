"""DDP: a 2-process CPU (gloo) run of ``factkeep train`` matches a 1-process run of the same batch.

The 2-process run uses ``optim.batch_size=8`` per process (global batch 16), the 1-process run
``optim.batch_size=16``: same number of optimiser steps, same learning rate. The data order
differs (a DistributedSampler shards a different permutation), so losses agree within a tolerance,
not exactly. One process writes the run folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def setup(tiny_study) -> Path:
    return tiny_study("ddp")["root"]


def _train(setup: Path, out: Path, processes: int, batch: int) -> subprocess.CompletedProcess:
    args = [
        "-m",
        "factkeep",
        "train",
        "--config",
        "self_distill",
        f"model={setup / 'model'}",
        f"data.splits={setup / 'splits'}",
        f"out={out}",
        f"optim.batch_size={batch}",
        "optim.epochs=12",
        "optim.lr=3e-3",
        "eval.max_new_tokens=3",
        "progress=false",
        "threads=1",
        "device=cpu",
    ]
    launcher = [sys.executable]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}"]
        launcher += ["--standalone"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [*launcher, *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _losses(out: Path) -> tuple[list[float], float]:
    history = json.loads((out / "phases" / "main" / "done.json").read_text())["log_history"]
    logged = [h["loss"] for h in history if "loss" in h]
    return logged, next(h["train_loss"] for h in history if "train_loss" in h)


def test_two_gloo_processes_match_one_process(setup, tmp_path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    _train(setup, one, processes=1, batch=16)
    proc = _train(setup, two, processes=2, batch=8)
    assert proc.stdout.count("steps in") == 1  # one process reports
    rows1 = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
    rows2 = [json.loads(x) for x in (two / "metrics.jsonl").read_text().splitlines()]
    # Same evaluations at the same steps, each written once.
    assert [(r["phase"], r["step"]) for r in rows2] == [(r["phase"], r["step"]) for r in rows1]
    assert rows2[-1]["step"] == 2 + 12 * 3  # 24 known / 16, then 48 facts / 16 per epoch
    for r1, r2 in zip(rows1, rows2, strict=True):
        for split in r1["acc"]:
            assert abs(r1["acc"][split] - r2["acc"][split]) <= 0.15
    logged1, final1 = _losses(one)
    logged2, final2 = _losses(two)
    assert len(logged1) == len(logged2)
    for a, b in zip(logged1, logged2, strict=True):
        assert b == pytest.approx(a, rel=0.03)
    assert final2 == pytest.approx(final1, rel=0.03)
    res = json.loads((two / "results.json").read_text())
    assert res["teacher_forwards"] > 0
    assert (two / "model" / "model.safetensors").is_file()


def test_teacher_placement_single_process_and_refusals(setup) -> None:
    from types import SimpleNamespace

    import torch
    from accelerate.utils import DistributedType

    from factkeep.errors import FactkeepError
    from factkeep.methods.teacher import Teacher
    from factkeep.methods.teacher_placement import is_sharded, place_teacher

    teacher = Teacher.from_pretrained(setup / "model")
    teacher.model.train()
    plain = SimpleNamespace(
        distributed_type=DistributedType.NO, device=torch.device("cpu"), state=SimpleNamespace()
    )
    place_teacher(teacher, plain, needs_full_parameters=True)
    assert not teacher.model.training and not is_sharded(plain)
    assert all(p.device.type == "cpu" and not p.requires_grad for p in teacher.model.parameters())
    zero3 = SimpleNamespace(
        distributed_type=DistributedType.DEEPSPEED,
        device=torch.device("cpu"),
        state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=3)),
    )
    fsdp = SimpleNamespace(distributed_type=DistributedType.FSDP, device=torch.device("cpu"))
    for acc in (zero3, fsdp):
        assert is_sharded(acc)
        with pytest.raises(FactkeepError, match="do not support FSDP or DeepSpeed ZeRO-3"):
            place_teacher(teacher, acc, needs_full_parameters=True)
