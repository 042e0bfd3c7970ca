"""Independent training runs in worker processes: one torch thread each, as many at once as there are CPUs.

Why: the demonstration's seeds are independent, and its models are small: running
seeds side by side, one thread each, keeps every core busy on its own work instead of
splitting each small convolution across cores and waiting for the slowest.

How: a ``spawn`` process pool (a fresh interpreter per worker, safe with torch and on
every platform) of at most ``os.cpu_count()`` workers. Each :class:`Job` is a recipe
as a plain mapping plus a run directory; the worker validates and trains it, its
console output (progress lines, warnings) going to ``<run_dir>.console.txt`` so that
the parent's terminal shows only what the caller prints; the run's own log stays in
``<run_dir>/log.txt``. A :class:`~distill.errors.DistillError` in a worker comes back
as an :class:`Outcome` with its message; :func:`run_jobs` then stops the other
workers and raises it in the parent, naming the run and its log. A worker process that
dies (killed, out of memory) is reported the same way.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from distill.engine.trainer import train
from distill.errors import DistillError
from distill.recipe.load import recipe_from_dict


@dataclass(frozen=True)
class Job:
    """One training run: ``name`` says which to the user, ``tag`` is the caller's own key for it."""

    name: str
    tag: Any
    recipe: dict[str, Any]
    run_dir: str
    tensorboard: bool = True


@dataclass(frozen=True)
class Outcome:
    """What a worker returns: last-epoch top-1 and the run's CPU and wall seconds, or the error message."""

    job: Job
    top1: float | None
    cpu_s: float
    wall_s: float
    error: str | None = None


def console_file(run_dir: str | Path) -> Path:
    """Where a worker's console output goes: beside the run directory, not inside it (the trainer owns that)."""
    run_dir = Path(run_dir)
    return run_dir.with_name(run_dir.name + ".console.txt")


def _one_thread() -> None:
    """Worker initialiser: one torch thread, so that the workers share the cores instead of fighting over them."""
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def run_job(job: Job) -> Outcome:
    """Validate and train ``job`` (in a worker); a user-caused error becomes the outcome's ``error``."""
    cpu, wall = time.process_time(), time.perf_counter()
    console = console_file(job.run_dir)
    console.parent.mkdir(parents=True, exist_ok=True)
    try:
        with console.open("a", encoding="utf-8") as stream, contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
            recipe = recipe_from_dict(job.recipe, source=job.name)
            top1 = train(recipe, run_dir=job.run_dir, tensorboard=job.tensorboard, echo=_silent).final_top1
    except DistillError as error:
        return Outcome(job, None, time.process_time() - cpu, time.perf_counter() - wall, str(error))
    return Outcome(job, top1, time.process_time() - cpu, time.perf_counter() - wall)


def _silent(line: str) -> None:
    """The trainer's echo in a worker: its lines are kept in the run's ``log.txt`` only."""


def _failure(job: Job, message: str) -> DistillError:
    return DistillError(f"{job.name} failed: {message} (its log: {Path(job.run_dir) / 'log.txt'}, console: {console_file(job.run_dir)})")


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the workers now, instead of waiting for their runs to finish."""
    # ProcessPoolExecutor has no public way to end busy workers before Python 3.14.
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()


def run_jobs(
    jobs: Iterable[Job],
    then: Callable[[Outcome], Iterable[Job]],
    workers: int | None = None,
    worker: Callable[[Job], Outcome] = run_job,
) -> list[Outcome]:
    """Run ``jobs`` in worker processes; after each success, also run the jobs ``then(outcome)`` returns.

    ``then`` runs in the parent as each job finishes (in the order they finish): it is
    where the caller reports progress and submits follow-ups (students after their
    teacher). ``workers`` defaults to ``os.cpu_count()``. Returns every outcome.

    Raises:
        DistillError: a job failed with a user-caused error, or a worker process died;
            the message names the job and its log.
    """
    workers = max(1, workers or os.cpu_count() or 1)
    outcomes: list[Outcome] = []
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_one_thread)
    pending: dict[Future, Job] = {}
    try:
        for job in jobs:
            pending[pool.submit(worker, job)] = job
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                job = pending.pop(future)
                try:
                    outcome = future.result()
                except BrokenProcessPool as error:
                    raise _failure(job, f"its worker process died ({error})") from None
                if outcome.error is not None:
                    raise _failure(job, outcome.error)
                outcomes.append(outcome)
                for follow_up in then(outcome):
                    pending[pool.submit(worker, follow_up)] = follow_up
    except BaseException:
        _stop(pool)
        raise
    pool.shutdown(wait=True)
    return outcomes
