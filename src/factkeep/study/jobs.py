"""Running several training runs: one after another in this process, or in worker processes.

``factkeep demo`` and ``factkeep sweep`` (``backend=serial`` / ``local``) both hand their runs to
:func:`run_jobs`; each run is :func:`~factkeep.study.train.train_job` (train, then write
``results.json``), as for ``factkeep train``. ``factkeep sweep backend=ray`` hands them to Ray
instead (:mod:`factkeep.study.sweep`).

With one process the runs train here, in order, their logs going where this process's go. With
several, each run trains in a fresh worker interpreter (``spawn``: no forked torch threads) and
writes what it prints and logs to ``<run>/train.log``; the slowest runs start first, and the next
run starts whenever one ends. :func:`worker_plan` shares the CPU cores among the workers.

Example::

    def done(job: Job, outcome: Outcome) -> None:
        print(job.name, outcome.status, outcome.summary["forgetting"] if outcome.summary else "")

    run_jobs([Job("sft", sft_cfg), Job("self_distill", sd_cfg)], processes=2, on_done=done)
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from factkeep.study.train import train_job
from factkeep.training.config import TrainCommandConfig

__all__ = ["WORKER_LOG", "Job", "Outcome", "cpu_cores", "run_jobs", "worker_plan"]

WORKER_LOG = "train.log"
"""A run trained in a worker process writes what it prints and logs here, in its run folder."""


@dataclass
class Job:
    """One training run to do: a name for messages and its resolved config."""

    name: str
    config: TrainCommandConfig


@dataclass
class Outcome:
    """How a run ended: ``summary`` is its ``results.json`` (``None`` if it failed)."""

    status: Literal["done", "failed"]
    seconds: float
    summary: dict[str, Any] | None = None
    error: str | None = None


def cpu_cores() -> int:
    """The CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def worker_plan(jobs: int, threads: int, pending: int, on_gpu: bool) -> tuple[int, int]:
    """``(processes, threads per process)`` for ``pending`` runs.

    ``jobs = 0`` picks one process per CPU core (at most 8 and at most ``pending``), or one on a
    GPU; ``threads = 0`` shares the cores among the processes (0 = torch's default when one
    process runs them all).
    """
    if jobs <= 0:
        jobs = 1 if on_gpu else min(8, cpu_cores())
    processes = max(1, min(jobs, pending))
    if threads <= 0 and processes > 1:
        threads = max(1, cpu_cores() // processes)
    return processes, threads


def _cost(cfg: TrainCommandConfig) -> int:
    """A rough rank of a run's cost, to start the slow ones first when several run at once."""
    return int(cfg.teacher.kind != "none") + 2 * int(cfg.loss.l2_match_kl)


def _run(cfg: TrainCommandConfig) -> dict[str, Any]:
    """Train one run; its summary (``{}`` in a DDP process that writes nothing)."""
    return train_job(cfg)[1] or {}


def _run_logged(cfg: TrainCommandConfig) -> dict[str, Any]:
    """:func:`_run` with the run's output and log records sent to ``<run>/train.log``."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    with (
        open(out / WORKER_LOG, "a", encoding="utf-8") as stream,
        contextlib.redirect_stdout(stream),
        contextlib.redirect_stderr(stream),
    ):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            return _run(cfg)
        finally:
            root.removeHandler(handler)


def _conclude(
    job: Job,
    start: float,
    summary_of: Callable[[], dict[str, Any]],
    on_done: Callable[[Job, Outcome], None],
    stop_on_error: bool,
) -> None:
    """Report how ``job`` ended: ``summary_of()`` gives its summary or raises its error."""
    try:
        summary = summary_of()
    except Exception as exc:
        if stop_on_error:
            raise
        error = f"{type(exc).__name__}: {exc}"
        on_done(job, Outcome("failed", round(time.perf_counter() - start, 1), error=error))
        return
    on_done(job, Outcome("done", round(time.perf_counter() - start, 1), summary))


def _in_this_process(
    jobs: Sequence[Job],
    on_start: Callable[[Job], None],
    on_done: Callable[[Job, Outcome], None],
    stop_on_error: bool,
) -> None:
    previous = torch.get_num_threads()  # a run may set its own thread count
    try:
        for job in jobs:
            on_start(job)
            start = time.perf_counter()
            run = functools.partial(_run, job.config)
            _conclude(job, start, run, on_done, stop_on_error)
    finally:
        torch.set_num_threads(previous)


def _in_workers(
    jobs: Sequence[Job],
    processes: int,
    on_start: Callable[[Job], None],
    on_done: Callable[[Job, Outcome], None],
    stop_on_error: bool,
) -> None:
    queue = sorted(jobs, key=lambda job: -_cost(job.config))  # stable: the given order otherwise
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch threads
    running: dict[Future[dict[str, Any]], tuple[Job, float]] = {}
    with ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool:
        try:
            while queue or running:
                while queue and len(running) < processes:
                    job = queue.pop(0)
                    on_start(job)
                    future = pool.submit(_run_logged, job.config)
                    running[future] = (job, time.perf_counter())
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    job, start = running.pop(future)
                    _conclude(job, start, future.result, on_done, stop_on_error)
        except BaseException:
            for future in running:
                future.cancel()
            raise


def run_jobs(
    jobs: Sequence[Job],
    processes: int = 1,
    on_start: Callable[[Job], None] | None = None,
    on_done: Callable[[Job, Outcome], None] | None = None,
    stop_on_error: bool = True,
) -> None:
    """Train every job (see the module docstring).

    Args:
        jobs: the runs, in the order to start them (with several processes the slowest first).
        processes: 1 = in this process, one after another; more = that many worker processes
            (set each job's ``threads`` beforehand, e.g. from :func:`worker_plan`).
        on_start: called as a run starts.
        on_done: called as a run ends, with its :class:`Outcome`.
        stop_on_error: re-raise a run's error (the runs not started yet are dropped, running
            workers are left to finish); else report it as a failed outcome and go on.
    """

    def ignore(*_: Any) -> None:
        return None

    started, finished = on_start or ignore, on_done or ignore
    if processes <= 1:
        _in_this_process(jobs, started, finished, stop_on_error)
    else:
        _in_workers(jobs, processes, started, finished, stop_on_error)
