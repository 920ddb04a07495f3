"""``factkeep sweep``: a grid of training runs (methods x options x seeds), with Ray or in-process.

Each trial is an ordinary ``factkeep train`` run folder, ``<out>/<trial>/`` (config.yaml, env.json,
metrics.jsonl, results.json, model/), so ``factkeep report runs=[<out>]`` compares the trials like
any other runs. ``<out>/sweep.json`` lists the trials with their options, folder, status and time.
Running the same sweep again skips the trials whose folder has results.json and resumes
interrupted ones from their last checkpoint; a failed trial is recorded with its error, the others
go on, and the command exits 1.

The sweep's options are a typed config like every command's. Config sections are fixed, so the
open-ended ``grid`` and ``overrides`` are *lists* whose items are either

* mappings ``{train option: value}`` (dotted keys), the form of a YAML file; a grid item
  maps options to lists of values and may name the methods it applies to under ``methods``; or
* strings ``option=value`` (``overrides``, as for ``factkeep train``) and ``option=[v1, v2]`` or
  ``option=v1,v2`` (``grid``), the form of the command line.

Every grid option is an axis: a method's trials are the product of the values of its axes. All is
checked before a trial starts: the methods resolve, every key is a ``factkeep train`` option and
every trial's config is valid (else a configuration error, exit code 2, nothing written).

Example ``grid.yaml`` (``examples/sweep_grid.yaml`` documents every option)::

    methods: [sft, self_distill]
    grid:
      - loss.kl_weight: [1, 3]
        methods: [self_distill]       # this axis only for self_distill
      - seed: [0, 1, 2]
    overrides:
      - model: runs/demo/world/model
      - data.splits: runs/demo/split
    out: runs/sweep

    factkeep sweep --config grid.yaml                  # local Ray, one trial per core
    factkeep sweep --config grid.yaml backend=local    # worker processes, no Ray needed
    factkeep sweep --config grid.yaml backend=serial   # in this process, one after another
    factkeep sweep --config grid.yaml address=auto     # on a running Ray cluster
    factkeep sweep methods=[sft] grid=[seed=0,1] overrides=[model=M,data.splits=S]
"""

from __future__ import annotations

import difflib
import itertools
import json
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from factkeep.config import ConfigError, config_to_dict, help_field, iter_options, resolve_config
from factkeep.configs import method_names, resolve_config_path
from factkeep.errors import FactkeepError
from factkeep.eval.document import md_table
from factkeep.rundir import atomic_write_json
from factkeep.study.jobs import Job, Outcome, run_jobs, worker_plan
from factkeep.study.train import train_job
from factkeep.training.config import TrainCommandConfig
from factkeep.training.run import check_resumable
from factkeep.training.run_folder import RunFolder

__all__ = ["SweepCommandConfig", "Trial", "format_table", "plan_trials", "run_sweep", "run_trial"]

log = logging.getLogger(__name__)

_RESERVED = {"out": "each trial writes to <out>/<trial>", "threads": "set threads_per_trial"}
_KEY = re.compile(r"^\s*[A-Za-z_][\w.]*\s*=")


@dataclass
class SweepCommandConfig:
    """Options of ``factkeep sweep``."""

    methods: list[str] = help_field(
        [], "Required. Method configs: shipped names (sft, self_distill, ...) or YAML paths."
    )
    grid: list[str | dict[str, Any]] = help_field(
        [],
        "Axes of the grid, each a train option and its values: 'option=[v1, v2]' or, in YAML, "
        "{option: [v1, v2]} with an optional 'methods: [...]' restricting the axis. Every "
        "combination is a trial.",
    )
    overrides: list[str | dict[str, Any]] = help_field(
        [],
        "Train options of every trial: 'option=value' or, in YAML, {option: value} (e.g. model, "
        "data.splits, optim.epochs).",
    )
    out: str = help_field("runs/sweep", "Output folder: sweep.json and one run folder per trial.")
    backend: Literal["ray", "local", "serial"] = help_field(
        "ray",
        "ray: trials as Ray tasks, in parallel; local: in worker processes on this machine "
        "(max_concurrent at once, 0 = one per core), no Ray needed; serial: in this process, "
        "one at a time.",
    )
    address: str = help_field(
        "", "A running Ray cluster to use (auto, or its head's host:port); empty: a local Ray."
    )
    num_cpus: int = help_field(0, "CPUs of the local Ray (0 = all cores); not with address.")
    cpus_per_trial: float = help_field(1.0, "CPUs Ray reserves for each trial.")
    gpus_per_trial: float = help_field(0.0, "GPUs Ray reserves for each trial.")
    threads_per_trial: int = help_field(
        0, "torch threads of each trial (its 'threads' option; 0 = cpus_per_trial, at least 1)."
    )
    max_concurrent: int = help_field(
        0, "The most trials running at once (0 = as Ray's CPUs allow, or one per core)."
    )
    trial_logs: bool = help_field(
        False, "Forward the output of the Ray workers (the trials' logs)."
    )


@dataclass
class Trial:
    """One run of the grid: a method config with its swept values."""

    name: str
    method: str
    config: str
    values: dict[str, Any]
    overrides: list[str]
    folder: str
    train: TrainCommandConfig = field(repr=False)


def _parse(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _as_text(value: Any) -> str:
    """An override's right-hand side that parses back to ``value``."""
    return value if isinstance(value, str) and _parse(value) == value else json.dumps(value)


def _items(items: Sequence[str | dict[str, Any]], what: str) -> list[tuple[str, Any, Any]]:
    """``(key, value, methods)`` per option; strings split by a comma are joined back."""
    entries: list[tuple[str, Any, Any]] = []
    joined: list[Any] = []
    for item in items:
        if isinstance(item, str) and not _KEY.match(item):
            if not (joined and isinstance(joined[-1], str)):
                raise ConfigError(f"{what}: cannot read {item!r}: expected option=value")
            joined[-1] += f",{item}"  # the command line splits 'seed=0,1' at its comma
        else:
            joined.append(item)
    for item in joined:
        if isinstance(item, str):
            key, text = item.split("=", 1)
            entries.append((key.strip(), _parse(text.strip()), None))
        else:
            rest = dict(item)
            only = rest.pop("methods", None) if what == "grid" else None
            entries += [(key, value, only) for key, value in rest.items()]
    known = [o.key for o in iter_options(TrainCommandConfig)]
    for key, _, _ in entries:
        if key in _RESERVED:
            raise ConfigError(f"{what}: '{key}' is set by the sweep ({_RESERVED[key]})")
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{what}: '{key}' is not a 'factkeep train' option{hint}")
    return entries


def _values(value: Any) -> list[Any]:
    if isinstance(value, str) and "," in value:
        value = [_parse(v.strip()) for v in value.split(",")]
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _label(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(map(_label, value)) or "none"
    text = f"{value:g}" if isinstance(value, float) else str(value)
    text = text.lower() if isinstance(value, bool) or value is None else text
    return re.sub(r"[^\w.+-]+", "_", text).strip("_.") or "_"


def _methods(cfg: SweepCommandConfig) -> dict[str, str]:
    """Each method's label (its name or file stem) -> YAML path."""
    if not cfg.methods:
        raise ConfigError("methods= is required: e.g. methods=[sft,self_distill]")
    paths: dict[str, str] = {}
    for method in cfg.methods:
        path = resolve_config_path(method)
        if not Path(path).is_file():
            raise ConfigError(
                f"methods: '{method}' is neither a shipped config ({', '.join(method_names())}) "
                "nor a YAML file"
            )
        label = Path(path).stem
        if label in paths:
            raise ConfigError(f"methods: '{label}' appears twice")
        paths[label] = path
    return paths


def plan_trials(cfg: SweepCommandConfig) -> list[Trial]:
    """Every trial of the sweep, its ``factkeep train`` config resolved and validated.

    Raises:
        ConfigError: naming the method, option or trial that is wrong; nothing is written.
    """

    if cfg.cpus_per_trial <= 0 or min(cfg.threads_per_trial, cfg.max_concurrent, cfg.num_cpus) < 0:
        raise ConfigError(
            "cpus_per_trial must be > 0; threads_per_trial, max_concurrent, num_cpus >= 0"
        )
    methods = _methods(cfg)
    fixed = [f"{k}={_as_text(v)}" for k, v, _ in _items(cfg.overrides, "overrides")]
    axes: dict[str, tuple[list[Any], list[str]]] = {}
    for key, value, only in _items(cfg.grid, "grid"):
        scope = list(methods) if only is None else _values(only)
        if key in axes or any(o.split("=", 1)[0].strip() == key for o in fixed):
            raise ConfigError(f"grid: '{key}' is swept twice or also fixed in overrides")
        if not _values(value):
            raise ConfigError(f"grid: '{key}' has no values")
        if unknown := [m for m in scope if m not in methods]:
            raise ConfigError(f"grid: '{key}' names methods not in methods=: {unknown}")
        axes[key] = (_values(value), scope)
    leaves = [k.rsplit(".", 1)[-1] for k in axes]
    short = {k: k if leaves.count(k.rsplit(".", 1)[-1]) > 1 else k.rsplit(".", 1)[-1] for k in axes}
    threads = cfg.threads_per_trial or max(1, int(cfg.cpus_per_trial))
    trials: list[Trial] = []
    for label, path in methods.items():
        keys = [k for k, (_, scope) in axes.items() if label in scope]
        for combo in itertools.product(*(axes[k][0] for k in keys)):
            values = dict(zip(keys, combo, strict=True))
            name = "__".join([label, *(f"{short[k]}={_label(v)}" for k, v in values.items())])
            if any(t.name == name for t in trials):
                raise ConfigError(f"two trials are named '{name}': give distinct values")
            folder = str(Path(cfg.out) / name)
            options = [*fixed, *(f"{k}={_as_text(v)}" for k, v in values.items())]
            try:
                train = resolve_config(TrainCommandConfig, path, options)
                train.out, train.threads = folder, threads
                train.validate()
                if train.resume:
                    check_resumable(train, Path(folder))
            except ConfigError as exc:
                raise ConfigError(f"trial '{name}': {exc}") from exc
            overrides = [*options, f"out={folder}", f"threads={threads}"]
            trials.append(Trial(name, label, path, values, overrides, folder, train))
    return trials


def run_trial(train: TrainCommandConfig) -> dict[str, Any]:
    """Train one trial and write its ``results.json``; a failure is returned, never raised.

    Returns:
        ``{"status": "done" | "failed", "seconds": ..., "error": ...}``.
    """
    start, error = time.perf_counter(), None
    try:
        train_job(train)
    except Exception as exc:  # a failed trial is recorded, and the others go on
        error = f"{type(exc).__name__}: {exc}"
    status = "failed" if error else "done"
    return {"status": status, "seconds": round(time.perf_counter() - start, 1), "error": error}


def _ray_trial(train: TrainCommandConfig, cwd: str) -> dict[str, Any]:
    """:func:`run_trial` in a Ray worker: relative paths are the driver's, logs like the CLI's."""
    if Path(cwd).is_dir():
        os.chdir(cwd)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return run_trial(train)


def _results(trial: Trial) -> dict[str, Any] | None:
    """The trial's ``results.json`` if it finished (an unreadable one counts as not finished)."""
    run = RunFolder(trial.folder)
    return run.results if run.has_results else None


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise FactkeepError(
            "backend=ray needs Ray: pip install 'factkeep[sweep]' (or use backend=serial)"
        ) from exc
    return ray


def _run_ray(cfg: SweepCommandConfig, todo: list[Trial], record: Callable[..., None]) -> None:
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        start = time.perf_counter()
        extra: dict[str, Any] = {"address": cfg.address} if cfg.address else {}
        if not cfg.address and cfg.num_cpus > 0:
            extra["num_cpus"] = cfg.num_cpus
        try:
            ray.init(include_dashboard=False, log_to_driver=cfg.trial_logs, **extra)
        except Exception as exc:  # e.g. no cluster at 'address'
            raise FactkeepError(f"cannot start Ray ({cfg.address or 'local'}): {exc}") from exc
        log.info("Ray started in %.1f s", time.perf_counter() - start)
    try:
        cpus = ray.cluster_resources().get("CPU", 0.0)
        if not cfg.address and cfg.cpus_per_trial > cpus:
            raise FactkeepError(f"cpus_per_trial={cfg.cpus_per_trial} but Ray has {cpus:g} CPUs")
        task = ray.remote(num_cpus=cfg.cpus_per_trial, num_gpus=cfg.gpus_per_trial, max_retries=0)
        remote = task(_ray_trial)
        queue = list(todo)
        running: dict[Any, Trial] = {}
        while queue or running:
            while queue and len(running) < (cfg.max_concurrent or len(todo)):
                trial = queue.pop(0)
                running[remote.remote(trial.train, os.getcwd())] = trial
            [ref], _ = ray.wait(list(running), num_returns=1)
            trial = running.pop(ref)
            try:
                outcome = ray.get(ref)
            except ray.exceptions.RayError as exc:  # the worker died (memory, node lost, ...)
                outcome = {"status": "failed", "seconds": None, "error": str(exc).splitlines()[0]}
            record(trial, outcome)
    finally:
        if started:
            ray.shutdown()


def _run_here(cfg: SweepCommandConfig, todo: list[Trial], record: Callable[..., None]) -> None:
    """The trials in this process (serial) or in local worker processes (local)."""
    processes = 1
    if cfg.backend == "local":
        processes = cfg.max_concurrent or worker_plan(0, 1, len(todo), on_gpu=False)[0]
    by_name = {t.name: t for t in todo}

    def done(job: Job, outcome: Outcome) -> None:
        status = {"status": outcome.status, "seconds": outcome.seconds, "error": outcome.error}
        record(by_name[job.name], status)

    jobs = [Job(t.name, t.train) for t in todo]
    run_jobs(jobs, processes, on_done=done, stop_on_error=False)


def _forgetting(results: dict[str, Any]) -> str:
    value = results.get("forgetting")
    return "-" if value is None else f"{value:.1%}"


def format_table(trials: Sequence[Trial]) -> str:
    """A Markdown table: trial, method, swept values, final accuracy per set, forgetting, time."""
    keys = list(dict.fromkeys(k for t in trials for k in t.values))
    results = {t.name: _results(t) for t in trials}
    order = ["d_known", "d_unknown", "d_held"]
    sets = sorted({s for r in results.values() if r for s in r["final"]}, key=lambda s: (
        order.index(s) if s in order else len(order), s))  # fmt: skip
    rows = []
    for t in trials:
        r = results[t.name]
        swept = [_label(t.values[k]) if k in t.values else "-" for k in keys]
        if r is None:  # failed, or not run
            scores = ["-"] * len(sets) + ["failed", "-"]
        else:
            finals = [f"{r['final'][s]:.3f}" if s in r["final"] else "-" for s in sets]
            scores = [*finals, _forgetting(r), f"{r.get('seconds') or 0:.0f} s"]
        rows.append([t.name, t.method, *swept, *scores])
    return md_table(["trial", "method", *keys, *sets, "forgetting", "time"], rows)


def run_sweep(cfg: SweepCommandConfig) -> int:
    """Run ``factkeep sweep``: returns the exit code (1 if a trial failed).

    Raises:
        ConfigError: for a bad method, option or value, before anything is written or started.
        FactkeepError: if backend=ray and Ray is not installed.
    """
    trials = plan_trials(cfg)
    if cfg.backend == "ray":
        _import_ray()  # before anything is written
    out = Path(cfg.out)
    status: dict[str, dict[str, Any]] = {}
    for t in trials:
        done = _results(t)
        seconds = done.get("seconds") if done else None
        status[t.name] = {
            "status": "done" if done else "pending",
            "seconds": seconds,
            "error": None,
        }
    todo = [t for t in trials if status[t.name]["status"] == "pending"]
    finished = len(trials) - len(todo)

    def save() -> None:
        rows = [
            {"name": t.name, "method": t.method, "config": t.config, "values": t.values,
             "overrides": t.overrides, "folder": t.folder, **status[t.name]}
            for t in trials
        ]  # fmt: skip
        atomic_write_json(out / "sweep.json", {"sweep": config_to_dict(cfg), "trials": rows})

    def record(trial: Trial, outcome: dict[str, Any]) -> None:
        nonlocal finished
        finished += 1
        status[trial.name] = outcome
        save()
        progress = (finished, len(trials), trial.name)
        r = _results(trial)
        if outcome["status"] == "done" and r is not None:
            took, forgetting = outcome["seconds"], _forgetting(r)
            log.info("[%d/%d] %s: done in %.0f s, forgetting %s", *progress, took, forgetting)
        else:
            log.error("[%d/%d] %s failed: %s", *progress, outcome["error"])

    save()
    log.info(
        "%d trials in %s, %d already done (backend %s)", len(trials), out, finished, cfg.backend
    )
    if todo and cfg.backend == "ray":
        _run_ray(cfg, todo, record)
    elif todo:
        _run_here(cfg, todo, record)
    print(format_table(trials))
    failed = [name for name, s in status.items() if s["status"] == "failed"]
    print(f"\n{len(trials)} trials in {out} ({out / 'sweep.json'}); compare them with:")
    print(f"  factkeep report runs=[{out}] out={out / 'report.html'}")
    if failed:
        print(f"{len(failed)} failed: {', '.join(failed)}")
    return 1 if failed else 0
