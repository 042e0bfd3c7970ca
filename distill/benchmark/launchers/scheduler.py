"""The cluster launcher: the grid's cells submitted to Slurm (or submitit's local executor) as one job array.

``distill sweep --launcher slurm`` plans the grid exactly as the local launcher does
(:func:`distill.benchmark.sweep.cells_to_run`: finished cells skipped, unfinished or
failed ones resumed, cells run with other settings left alone), then also leaves alone
every cell a job already holds (queued or running, :mod:`distill.benchmark.grid_status`),
so submitting twice never trains a cell twice. The rest become one job each
(:class:`~distill.benchmark.launchers.cell_job.CellJob`), submitted in one batch: a
Slurm job array throttled to ``max_running`` at once. Each cell's job id is recorded
(:mod:`distill.benchmark.launchers.records`) before this command returns; the jobs run
on without it. ``wait_for_jobs`` (``--wait``) follows them to the end.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import submitit
from submitit.helpers import clean_env

from distill.benchmark.grid_status import IN_FLIGHT, Alive, CellState, cell_state
from distill.benchmark.launchers.cell_job import CellSpec, submit_specs
from distill.benchmark.launchers.liveness import job_alive
from distill.benchmark.launchers.records import JOBS_DIR, Submission, now, read_job_report, records_dir, write_submission
from distill.benchmark.sweep import SweepCell, SweepOutcome, cells_to_run
from distill.files.rundir import is_finished

SUBMITIT_DIR = "submitit"
"""submitit's own files (pickled jobs, each job's stdout and stderr) under ``<output>/jobs/``."""


@dataclass
class Submitted:
    """What one submission did: the jobs it submitted (cell by cell), and the cells it left alone and why."""

    jobs: list[tuple[SweepCell, submitit.Job]] = field(default_factory=list)
    in_flight: list[CellState] = field(default_factory=list)
    outcome: SweepOutcome = field(default_factory=lambda: SweepOutcome([], [], []))


def submitit_folder(output: Path) -> Path:
    """Where submitit keeps its pickles and the jobs' logs (``%j``: one folder per job id)."""
    return Path(output) / JOBS_DIR / SUBMITIT_DIR / "%j"


def cell_spec(cell: SweepCell, overrides: Sequence[str], output: Path, tensorboard: bool) -> CellSpec:
    return CellSpec(
        recipe=str(cell.recipe),
        overrides=tuple(overrides),
        seed=cell.seed,
        run_dir=str(cell.run_dir),
        records=str(records_dir(output, cell.method, cell.task, cell.seed)),
        tags=cell.tags,
        tensorboard=tensorboard,
    )


def submit_sweep(
    cells: Sequence[SweepCell],
    overrides: Sequence[str],
    executor: submitit.Executor,
    executor_name: str,
    output: Path,
    *,
    tensorboard: bool = True,
    echo: Callable[[str], None] = print,
    alive: Alive = job_alive,
) -> Submitted:
    """Submit every cell that is neither finished, nor held by a job, nor run with other settings; record the job ids.

    ``executor``: from :func:`~distill.benchmark.launchers.profile.make_executor` with
    :func:`submitit_folder`; ``executor_name`` (``slurm`` or ``local``) goes into the records,
    to ask the right place whether a job still exists.
    """
    submitted = Submitted()
    free = []
    for cell in cells:
        state = cell_state(cell, output, alive)
        if state.state in IN_FLIGHT:
            submitted.in_flight.append(state)
            echo(f"left alone: {cell.label} is {state.state} (job {state.job_id})")
        else:
            free.append(cell)
    todo = cells_to_run(free, overrides, submitted.outcome, echo)
    if not todo:
        return submitted
    with clean_env():  # a sweep submitted from inside a job must not hand the jobs its own Slurm and rendezvous variables
        jobs = submit_specs(executor, [cell_spec(cell, overrides, output, tensorboard) for cell in todo])
    host = socket.gethostname()
    for cell, job in zip(todo, jobs):
        write_submission(
            records_dir(output, cell.method, cell.task, cell.seed),
            Submission(job.job_id, executor_name, now(), host, str(job.paths.stdout), str(job.paths.stderr)),
        )
        submitted.jobs.append((cell, job))
    return submitted


def wait_for_jobs(
    jobs: Sequence[tuple[SweepCell, submitit.Job]],
    output: Path,
    *,
    poll_seconds: float = 5.0,
    echo: Callable[[str], None] = print,
) -> SweepOutcome:
    """Follow the submitted jobs to their end (requeues included), saying each cell's result as it comes.

    A cell counts as done when its run directory holds ``summary.json``; otherwise as
    failed, with what its job recorded (or its log's location).
    """
    outcome = SweepOutcome([], [], [])
    waiting = list(jobs)
    while waiting:
        still = []
        for cell, job in waiting:
            if not job.done():
                still.append((cell, job))
                continue
            if is_finished(cell.run_dir):
                outcome.done.append(cell)
                echo(f"finished {cell.label} (job {job.job_id})")
            else:
                report = read_job_report(records_dir(output, cell.method, cell.task, cell.seed))
                why = report.message if report is not None and report.message else f"see {job.paths.stdout}"
                outcome.failed.append((cell, f"job {job.job_id}: {why}"))
                echo(f"FAILED {cell.label} (job {job.job_id}): {why}")
        waiting = still
        if waiting:
            time.sleep(poll_seconds)
    return outcome
