"""Fine-tuning runs: the phases of a method, on :class:`~factkeep.training.trainer.FactTrainer`.

:func:`train` is the Python API behind ``factkeep train``. It loads the model and the facts, plans
the phases of :mod:`factkeep.training.config` (``format`` -> ``main`` -> ``patch``) and runs each
as one ``Trainer.train`` call. The run folder::

    config.yaml, env.json        the resolved config and the environment
    metrics.jsonl                accuracy on the evaluation sets along training (all phases)
    samples/step-NNNNNN.jsonl    per-fact answers of each evaluation
    checkpoints/<phase>/checkpoint-N/   Trainer checkpoints (HF model folders + optimiser state)
    phases/<phase>/model/        the model at the end of an intermediate phase (the snapshot)
    phases/<phase>/done.json     steps, seconds and the Trainer's log history of a finished phase
    teacher_cache/<phase>.safetensors   precomputed top-k teacher targets (teacher.cache_top_k)
    tensorboard/                 TensorBoard event files of all phases (report_to=tensorboard)
    model/                       the final model and tokenizer (an ordinary HF model folder)

Run again on the same folder with ``resume=true`` (the default), a run continues where it was
interrupted: finished phases are skipped and the current one resumes from its last checkpoint
(same data order and random state, so the final metrics equal an uninterrupted run's). An
evaluation the interruption lost (the Trainer checkpoints a step before evaluating the epoch it
ends, and the end of training after its last checkpoint) is made when training resumes; a phase
whose early stopping had triggered ends at its checkpoint.

With ``report_to`` (tensorboard, wandb, mlflow, ...), the Trainer's trackers get the logged losses
and terms, every evaluation's accuracies and the run's final summary, all at global steps
(:func:`~factkeep.training.callbacks.route_trackers`, docs/trackers.md).

:class:`~factkeep.training.run_folder.RunFolder` reads a run folder back.
"""

from __future__ import annotations

import logging
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from torch.utils.data import DataLoader
from transformers import TrainingArguments

from factkeep.config import ConfigError, config_to_dict
from factkeep.data.fact_sets import fact_set_name, load_fact_set
from factkeep.data.facts import Fact
from factkeep.data.hf_facts import ColumnMap
from factkeep.errors import FactkeepError
from factkeep.methods.ewc import diagonal_fisher
from factkeep.methods.freezing import FreezeSpec, apply_freezing
from factkeep.methods.teacher import Teacher
from factkeep.methods.teacher_cache import TeacherCache
from factkeep.methods.terms import EWCTerm, KLToTeacher, L2ToAnchor, LossTerm, NLLTerm
from factkeep.models.loading import load_model_and_tokenizer, resolve_device
from factkeep.rundir import atomic_write_json, write_run_metadata
from factkeep.training.callbacks import (
    EMA_TEACHER_DIR,
    EMACallback,
    SplitEvalCallback,
    StoppedBeforeTraining,
    route_trackers,
)
from factkeep.training.config import TrainCommandConfig
from factkeep.training.costs import CostCallback, CostMeter
from factkeep.training.examples import QACollator, QADataset, ReplayMix, at_risk_pool
from factkeep.training.lora import add_lora
from factkeep.training.run_folder import MetricsRow, RunFolder, trim_metrics
from factkeep.training.trainer import FactTrainer

__all__ = [
    "TrainResult",
    "check_resumable",
    "is_main_process",
    "last_complete_checkpoint",
    "train",
]

log = logging.getLogger(__name__)

# Options that do not change what a run computes (may differ when resuming).
VOLATILE_OPTIONS = {
    "progress",
    "threads",
    "resume",
    "report_to",
    "save_total_limit",
    "keep_checkpoints",
}
"""Options that do not change what a run computes (ignored when comparing run configs)."""

TENSORBOARD_DIR = "tensorboard"
"""Sub-folder of a run folder with the TensorBoard event files of all its phases."""


@dataclass
class TrainResult:
    """What a finished run produced."""

    out: Path
    model_dir: Path
    metrics: list[dict[str, Any]]
    trainable_parameters: int = 0
    total_parameters: int = 0
    seconds: float = 0.0
    teacher_forwards: int = 0
    stopped_early_at: int | None = None
    phases: list[str] = field(default_factory=list)
    cost_seconds: dict[str, float] = field(default_factory=dict)


def _load_sets(entries: Sequence[str], splits_dir: str, columns: ColumnMap) -> list[Fact]:
    facts: list[Fact] = []
    for entry in entries:
        facts.extend(load_fact_set(entry, splits_dir, columns))
    return facts


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest ``checkpoint-N`` in ``folder`` that was completely written, or None.

    The Trainer writes ``trainer_state.json`` last; a checkpoint without it was cut short (the
    process was killed while saving) and is deleted so that it is never resumed from.
    """
    if not folder.is_dir():
        return None
    found = sorted(
        (int(p.name.split("-")[-1]), p)
        for p in folder.glob("checkpoint-*")
        if p.is_dir() and p.name.split("-")[-1].isdigit()
    )
    for _, path in reversed(found):
        if (path / "trainer_state.json").is_file():
            return str(path)
        log.warning("removing incomplete checkpoint %s", path)
        shutil.rmtree(path, ignore_errors=True)
    return None


def _subsample(facts: list[Fact], n: int, seed: int, name: str) -> list[Fact]:
    if n <= 0 or len(facts) <= n:
        return facts
    keep = set(random.Random(f"{seed}-eval-{name}").sample(range(len(facts)), n))
    return [f for i, f in enumerate(facts) if i in keep]


@dataclass
class _Phase:
    name: str
    data: list[str]
    epochs: float
    lr: float
    main: bool = False


def _plan(cfg: TrainCommandConfig) -> list[_Phase]:
    phases = []
    if cfg.format_phase.epochs > 0:
        lr = cfg.format_phase.lr or cfg.optim.lr
        phases.append(_Phase("format", cfg.format_phase.data, cfg.format_phase.epochs, lr))
    phases.append(_Phase("main", cfg.data.train, cfg.optim.epochs, cfg.optim.lr, main=True))
    if cfg.replay.patch_epochs > 0:
        phases.append(_Phase("patch", cfg.replay.patch_data, cfg.replay.patch_epochs, cfg.optim.lr))
    return phases


def _freeze_spec(cfg: TrainCommandConfig) -> FreezeSpec:
    """The main phase's freezing spec (group names are checked here)."""
    return FreezeSpec(
        train=tuple(cfg.freeze.train),
        freeze=tuple(cfg.freeze.freeze),
        layers=cfg.freeze.layers or None,
        train_regex=tuple(cfg.freeze.train_regex),
        freeze_regex=tuple(cfg.freeze.freeze_regex),
    )


def _check_inputs(cfg: TrainCommandConfig) -> None:
    """Check the freezing spec and read every facts file the run will use, so that bad input
    fails before anything is written."""
    _freeze_spec(cfg)
    entries = [*cfg.data.train, *cfg.data.eval]
    if cfg.format_phase.epochs > 0:
        entries += cfg.format_phase.data
    if cfg.replay.fraction > 0:
        entries += cfg.replay.pool
    if cfg.replay.patch_epochs > 0:
        entries += cfg.replay.patch_data
    if cfg.loss.ewc_weight > 0:
        entries += cfg.loss.ewc_data
    if cfg.eval.patience > 0:
        entries.append(cfg.eval.dev)
    for entry in dict.fromkeys(entries):
        load_fact_set(entry, cfg.data.splits, cfg.data.columns)
    if cfg.replay.fraction > 0 and cfg.replay.forecast:
        _replay_pool(cfg)


def _replay_pool(cfg: TrainCommandConfig) -> list[Fact]:
    """The replayed facts: ``replay.pool``, or its most-at-risk share with ``replay.forecast``."""
    pool = _load_sets(cfg.replay.pool, cfg.data.splits, cfg.data.columns)
    if cfg.replay.forecast:
        pool = at_risk_pool(pool, cfg.replay.forecast, cfg.replay.forecast_share)
    return pool


def check_resumable(cfg: TrainCommandConfig, out: Path) -> None:
    """Refuse to resume a run folder that was made with a different config.

    Raises:
        ConfigError: ``out`` holds a ``config.yaml`` that differs from ``cfg`` in an option that
            changes what the run computes (not one of :data:`VOLATILE_OPTIONS`), or that cannot
            be read.
    """
    run = RunFolder(out)
    if not run.has_config:
        return
    old = run.config_dict
    new = config_to_dict(cfg)
    diff = sorted(
        k for k in set(old) | set(new) if k not in VOLATILE_OPTIONS and old.get(k) != new.get(k)
    )
    if diff:
        raise ConfigError(
            f"{out} holds a run with a different config (differs in: {', '.join(diff)}); "
            "choose another out= or pass resume=false to start over"
        )


def _init_processes(device: str) -> None:
    """Join the process group when started by a launcher (torchrun, accelerate launch).

    Must run before anything else touches accelerate's shared state, so that a CPU run with
    several processes becomes a gloo DDP run (the state is created once per process).
    """
    PartialState(cpu=resolve_device(device).type == "cpu")


def is_main_process() -> bool:
    """Whether this is the process that writes files (always, unless run by a DDP launcher)."""
    return bool(PartialState().is_main_process)


def _device(name: str) -> str:
    """``auto`` is this process's device under a distributed launcher (``cuda:LOCAL_RANK``)."""
    if name != "auto" or PartialState().num_processes == 1:
        return name
    return str(PartialState().device)


def _barrier() -> None:
    """Wait for every process of a distributed run (no-op in a single process)."""
    PartialState().wait_for_everyone()


def _fresh_start(out: Path) -> None:
    for name in ("checkpoints", "phases", "samples", "model", "teacher_cache", TENSORBOARD_DIR):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in ("metrics.jsonl", "results.json"):
        (out / name).unlink(missing_ok=True)


def _training_args(cfg: TrainCommandConfig, phase: _Phase, out: Path) -> TrainingArguments:
    save_steps = cfg.save_every_steps
    return TrainingArguments(
        output_dir=str(RunFolder(out).checkpoints_dir(phase.name)),
        num_train_epochs=phase.epochs,
        optim=cfg.optim.optimizer,
        learning_rate=phase.lr,
        per_device_train_batch_size=cfg.optim.batch_size,
        gradient_accumulation_steps=cfg.optim.grad_accum,
        weight_decay=cfg.optim.weight_decay,
        warmup_steps=cfg.optim.warmup_ratio,
        lr_scheduler_type=cfg.optim.scheduler,
        max_grad_norm=cfg.optim.grad_clip,
        bf16=cfg.optim.mixed_precision == "bf16",
        fp16=cfg.optim.mixed_precision == "fp16",
        logging_steps=cfg.log_every_steps,
        save_strategy="no" if cfg.save_total_limit == 0 else "steps" if save_steps else "epoch",
        save_steps=save_steps or 500,
        save_total_limit=cfg.save_total_limit or None,
        seed=cfg.seed,
        report_to=[] if cfg.report_to == "none" else cfg.report_to.split(","),
        disable_tqdm=not cfg.progress,
        remove_unused_columns=False,
        use_cpu=resolve_device(cfg.device).type == "cpu",
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        dataloader_pin_memory=torch.cuda.is_available() and cfg.device != "cpu",
    )


def _make_trainer(**kwargs: Any) -> FactTrainer:
    """A :class:`FactTrainer`; what the Trainer refuses becomes a one-line factkeep error."""
    try:
        return FactTrainer(**kwargs)
    except ValueError as exc:
        reason = str(exc).split(". ")[0].strip()
        hint = ""
        if "quantized" in reason:
            hint = "; train LoRA adapters (lora.r > 0) or load the model unquantized"
        raise FactkeepError(f"the Trainer cannot fine-tune this model: {reason}{hint}") from exc


class _Runner:
    """Holds the state shared by the phases of one run."""

    def __init__(self, cfg: TrainCommandConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.run = RunFolder(self.out)
        self.meter = CostMeter()
        with self.meter.measure("load"):
            self.model, self.tokenizer = load_model_and_tokenizer(
                cfg.model, dtype=cfg.dtype, device=_device(cfg.device), gguf_file=cfg.gguf_file
            )
        self.collator = QACollator(int(self.tokenizer.pad_token_id))
        eval_names = list(cfg.data.eval)
        if cfg.eval.patience > 0 and cfg.eval.dev not in eval_names:
            eval_names.append(cfg.eval.dev)
        self.eval_sets = {
            fact_set_name(name): _subsample(
                load_fact_set(name, cfg.data.splits, cfg.data.columns),
                cfg.eval.max_facts,
                cfg.seed,
                name,
            )
            for name in eval_names
        }
        self.result = TrainResult(out=self.out, model_dir=self.out / "model", metrics=[])

    def dataset(self, entries: Sequence[str], replay: bool = False) -> Any:
        facts = _load_sets(entries, self.cfg.data.splits, self.cfg.data.columns)
        if not facts:
            raise ConfigError(f"no training facts in {list(entries)}")
        data: Any = QADataset.from_facts(self.tokenizer, facts, self.cfg.data.template)
        if replay and self.cfg.replay.fraction > 0:
            pool = _replay_pool(self.cfg)
            if self.cfg.replay.forecast:
                log.info("replaying the %d pool facts most at risk (replay.forecast)", len(pool))
            mix = ReplayMix(
                data,
                QADataset.from_facts(self.tokenizer, pool, self.cfg.data.template),
                self.cfg.replay.fraction,
                self.cfg.seed,
            )
            if is_main_process():
                atomic_write_json(self.run.replayed_path, {"ids": mix.replayed_ids})
            data = mix
        return data

    def teacher(self, args: TrainingArguments, last_checkpoint: str | None) -> Teacher | None:
        cfg = self.cfg
        kind = cfg.teacher.kind
        if kind == "none":
            return None
        source: str | Path = cfg.model
        if kind in ("snapshot", "ema") and self.run.phase_model_dir("format").is_dir():
            source = self.run.phase_model_dir("format")
        if kind == "ema" and last_checkpoint and (Path(last_checkpoint) / EMA_TEACHER_DIR).is_dir():
            source = Path(last_checkpoint) / EMA_TEACHER_DIR
        gguf = cfg.gguf_file if source == cfg.model else None
        with self.meter.measure("load"):
            return Teacher.from_pretrained(
                source, device=args.device, dtype=cfg.dtype, gguf_file=gguf
            )

    def terms(self, phase: _Phase, teacher: Teacher | None) -> list[LossTerm]:
        loss = self.cfg.loss
        if not phase.main:
            return [NLLTerm()]
        terms: list[LossTerm] = [NLLTerm(label_smoothing=loss.label_smoothing)]

        def kl(weight: float) -> KLToTeacher:
            return KLToTeacher(
                weight=weight,
                temperature=loss.temperature,
                positions=loss.kl_positions,
                direction=loss.kl_direction,
                top_k=loss.kl_top_k or None,
                chunk_size=loss.kl_chunk_size or None,
                min_teacher_prob=loss.kl_min_teacher_prob,
                exclude_target=loss.kl_exclude_target,
                cached=self.cfg.teacher.cache_top_k > 0,
            )

        if loss.kl_weight > 0:
            terms.append(kl(loss.kl_weight))
        if (loss.l2_weight > 0 or loss.l2_match_kl) and teacher is not None:
            anchor = {n: p.clone() for n, p in teacher.named_parameters()}
            terms.append(
                L2ToAnchor(
                    anchor=anchor,
                    weight=loss.l2_weight,
                    match=kl(loss.kl_match_weight) if loss.l2_match_kl else None,
                    every=loss.l2_match_every,
                )
            )
        if loss.ewc_weight > 0:
            terms.append(self._ewc_term())
        return terms

    def _ewc_term(self) -> EWCTerm:
        data = self.dataset(self.cfg.loss.ewc_data)
        loader = DataLoader(data, batch_size=self.cfg.optim.batch_size, collate_fn=self.collator)
        fisher = diagonal_fisher(self.model, loader, self.cfg.loss.ewc_batches)
        anchor = {n: p.detach().clone() for n, p in self.model.named_parameters() if n in fisher}
        return EWCTerm(anchor=anchor, fisher=fisher, weight=self.cfg.loss.ewc_weight)

    def teacher_cache(self, teacher: Teacher, data: Any, phase: _Phase) -> TeacherCache:
        """The teacher's top-k targets for every training sequence, built once per run."""
        cfg = self.cfg
        path = self.out / "teacher_cache" / f"{phase.name}.safetensors"
        sequences = [data[i]["input_ids"] for i in range(len(data))]
        if path.is_file():
            cache = TeacherCache.load(path)
            same = cache.temperature == cfg.loss.temperature and cache.k == cfg.teacher.cache_top_k
            if same and cache.covers(sequences):
                log.info("teacher cache reused from %s", path)
                return cache
        if not is_main_process():  # under DDP, one process builds and saves it, the others read it
            _barrier()
            return TeacherCache.load(path)
        with self.meter.measure("teacher_cache"):
            cache = self._build_cache(teacher, sequences, path)
        self.result.teacher_forwards += teacher.forward_calls
        teacher.forward_calls, teacher.forward_seconds = 0, 0.0  # the cache's, not the steps'
        log.info("teacher cache built in %.1f s", self.meter.seconds["teacher_cache"])
        return cache

    def _build_cache(self, teacher: Teacher, sequences: list[Any], path: Path) -> TeacherCache:
        cfg = self.cfg
        cache = TeacherCache.build(
            teacher,
            sequences,
            temperature=cfg.loss.temperature,
            k=cfg.teacher.cache_top_k,
            batch_size=cfg.teacher.cache_batch_size,
            pad_id=int(self.tokenizer.pad_token_id),
            progress=cfg.progress,
        )
        cache.save(path)
        _barrier()
        return cache

    def prepare_model(self, phase: _Phase) -> None:
        """Freezing / LoRA for the main phase; everything trainable otherwise."""
        cfg = self.cfg
        self.model.requires_grad_(True)
        if phase.main and cfg.lora.r > 0:
            self.model = add_lora(self.model, cfg.lora, cfg.seed)
            params = list(self.model.parameters())
            self.result.trainable_parameters = sum(p.numel() for p in params if p.requires_grad)
            self.result.total_parameters = sum(p.numel() for p in params)
        elif phase.main:
            trainable, total = apply_freezing(self.model, _freeze_spec(cfg))
            self.result.trainable_parameters, self.result.total_parameters = trainable, total

    def save_model(self, folder: Path) -> None:
        model = self.model
        if hasattr(model, "merge_and_unload"):  # LoRA: save a plain model with merged adapters
            model = model.merge_and_unload()
            self.model = model
        with self.meter.measure("save"):
            model.save_pretrained(folder)
            self.tokenizer.save_pretrained(folder)

    def run_phase(self, phase: _Phase, step_offset: int, first: bool) -> int:
        """Train one phase (resuming from its last checkpoint); returns its optimiser steps."""
        if self.run.phase_done(phase.name):
            steps = self.run.phase_steps(phase.name)
            log.info("phase %s already done (%d steps)", phase.name, steps)
            return steps
        args = _training_args(self.cfg, phase, self.out)
        last = last_complete_checkpoint(self.run.checkpoints_dir(phase.name))
        self.trim_evaluations(phase, step_offset, first, last)
        self.prepare_model(phase)
        teacher = self.teacher(args, last) if phase.main else None
        data = self.dataset(phase.data, replay=phase.main)
        eval_cb = self.eval_callback(phase, step_offset, first)
        trainer, teacher = self.build_trainer(phase, args, data, teacher, eval_cb)
        log.info(
            "phase %s: %d examples, %.3g epochs, lr %.3g%s",
            phase.name,
            len(data),
            phase.epochs,
            phase.lr,
            f", resuming from {last}" if last else "",
        )
        start = time.perf_counter()
        self.fit(trainer, last, teacher, eval_cb, start)
        self.finish_phase(phase, trainer, start)
        return int(trainer.state.global_step)

    def trim_evaluations(
        self, phase: _Phase, step_offset: int, first: bool, last: str | None
    ) -> None:
        """Drop the metrics rows the phase will make again: those of later phases, and its own
        after the checkpoint it resumes from (all of them without one)."""
        resumed_at = int(Path(last).name.split("-")[-1]) if last else -1

        def keep(row: MetricsRow) -> bool:
            if row.phase != phase.name:
                return row.step < step_offset or (row.step == step_offset and not first)
            return row.phase_step <= resumed_at

        if is_main_process():
            trim_metrics(self.run.metrics_path, keep)
        _barrier()

    def eval_callback(self, phase: _Phase, step_offset: int, first: bool) -> SplitEvalCallback:
        """The phase's evaluations, knowing those its interrupted run already made."""
        cfg = self.cfg
        eval_cb = SplitEvalCallback(
            self.tokenizer,
            self.eval_sets,
            self.out,
            phase=phase.name,
            step_offset=step_offset,
            every_steps=cfg.eval.every_steps,
            each_epoch=cfg.eval.each_epoch,
            every_epochs=cfg.eval.every_epochs,
            at_start=first,
            template=cfg.data.template,
            batch_size=cfg.eval.batch_size,
            max_new_tokens=cfg.eval.max_new_tokens,
            patience=cfg.eval.patience if phase.main else 0,
            meter=self.meter,
            last_phase=phase.name == self.result.phases[-1],
        )
        eval_cb.restore([row for row in self.run.metrics if row.phase == phase.name])
        return eval_cb

    def build_trainer(
        self,
        phase: _Phase,
        args: TrainingArguments,
        data: Any,
        teacher: Teacher | None,
        eval_cb: SplitEvalCallback,
    ) -> tuple[FactTrainer, Teacher | None]:
        """The phase's Trainer, and the teacher it runs while training (None if it never does:
        without one, or when a cache of its targets replaces it)."""
        cfg = self.cfg
        callbacks: list[Any] = [eval_cb]
        if teacher is not None and cfg.teacher.kind == "ema":
            callbacks.append(EMACallback(teacher, cfg.teacher.ema_decay))
        callbacks.append(CostCallback(self.meter))  # last: books the whole checkpoint write
        terms = self.terms(phase, teacher)
        cache = None
        if teacher is not None and cfg.teacher.cache_top_k > 0 and phase.main:
            cache = self.teacher_cache(teacher, data, phase)
            if not any(t.needs_teacher for t in terms):
                teacher = None  # training never runs it: free its memory
        trainer = _make_trainer(
            model=self.model,
            args=args,
            train_dataset=data,
            data_collator=self.collator,
            processing_class=self.tokenizer,
            loss_terms=terms,
            teacher=teacher,
            teacher_cache=cache,
            teacher_needs_full_parameters=cfg.teacher.kind == "ema"
            or any(isinstance(t, L2ToAnchor) for t in terms),
            callbacks=callbacks,
        )
        # Trackers (report_to) get the evaluations and the final summary, at global steps.
        route_trackers(trainer, eval_cb, self.out / TENSORBOARD_DIR)
        return trainer, teacher

    def fit(
        self,
        trainer: FactTrainer,
        last: str | None,
        teacher: Teacher | None,
        eval_cb: SplitEvalCallback,
        start: float,
    ) -> None:
        """Run the Trainer (from the checkpoint ``last``, if any) and book what it cost."""
        before = dict(self.meter.seconds)
        try:
            trainer.train(resume_from_checkpoint=last)
        except StoppedBeforeTraining as stop:
            log.info("%s; the phase ends with the model of %s", stop, last)
        if teacher is not None:
            self.result.teacher_forwards += teacher.forward_calls
            self.meter.add("teacher", teacher.forward_seconds)
        self.meter.training_loop(time.perf_counter() - start, before)
        if eval_cb.stopped_early_at is not None:
            self.result.stopped_early_at = eval_cb.stopped_early_at

    def finish_phase(self, phase: _Phase, trainer: FactTrainer, start: float) -> None:
        """Save the phase's model, delete its checkpoints (unless kept) and write ``done.json``."""
        if is_main_process():
            final = phase.name == self.result.phases[-1]
            self.save_model(self.run.model_dir if final else self.run.phase_model_dir(phase.name))
            if not self.cfg.keep_checkpoints:  # only needed to resume the phase, which is now done
                shutil.rmtree(self.run.checkpoints_dir(phase.name), ignore_errors=True)
            atomic_write_json(
                self.run.done_path(phase.name),
                {
                    "steps": trainer.state.global_step,
                    "seconds": round(time.perf_counter() - start, 2),
                    "log_history": trainer.state.log_history,
                },
            )
        _barrier()


def train(cfg: TrainCommandConfig) -> TrainResult:
    """Run a fine-tuning method end to end (see the module docstring).

    Args:
        cfg: the resolved options (e.g. from ``configs/self_distill.yaml``).

    Returns:
        The run's :class:`TrainResult` (its metrics rows are those of ``metrics.jsonl``).
    """
    cfg.validate()
    _check_inputs(cfg)
    out = Path(cfg.out)
    if cfg.resume:
        check_resumable(cfg, out)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    _init_processes(cfg.device)
    start = time.perf_counter()
    runner = _Runner(cfg)  # loads the model: a bad model path fails before anything is written
    if is_main_process():
        if not cfg.resume:
            _fresh_start(out)
        write_run_metadata(out, cfg, seed=cfg.seed)
    _barrier()
    phases = _plan(cfg)
    runner.result.phases = [p.name for p in phases]
    offset = 0
    stale_from: Path | None = None  # a skipped (finished) phase's model the next phase starts from
    for i, phase in enumerate(phases):
        if runner.run.phase_done(phase.name):
            final = i == len(phases) - 1
            stale_from = runner.run.model_dir if final else runner.run.phase_model_dir(phase.name)
        elif stale_from is not None:
            with runner.meter.measure("load"):
                runner.model, _ = load_model_and_tokenizer(
                    str(stale_from), dtype=cfg.dtype, device=_device(cfg.device)
                )
            stale_from = None
        offset += runner.run_phase(phase, offset, first=i == 0)
    runner.result.seconds = round(time.perf_counter() - start, 2)
    runner.result.cost_seconds = runner.meter.as_dict()
    runner.result.metrics = [row.to_dict() for row in runner.run.metrics]
    return runner.result
