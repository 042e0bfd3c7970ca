"""What one scheduler job runs: one grid cell, trained in the job's process(es), requeued on the scheduler's warning.

submitit pickles a :class:`CellJob` with the job and calls it on the compute node
(``python -m submitit.core._submit``). The call trains the cell into its fixed run
directory: a new run, or the exact resume of an unfinished one (the trainer decides
from the run directory, as for any ``distill train --run-dir``).

**Preemption and time limits.** Slurm warns a job ``signal_delay_s`` seconds before its
time limit (``--signal=USR2@N``, set by submitit) and, on clusters that preempt with a
warning, before a preemption. submitit's handler for that signal would requeue at
once, in the middle of a step; so while the cell trains, the trainer takes the signal
as a stop request (``stop_signals``): it finishes the step, agrees with the other
processes, writes a checkpoint at that exact step and raises
:class:`~distill.engine.signals.TrainingStopped`. Only then is submitit's handler
called: it pickles :meth:`CellJob.checkpoint` (the same cell: the run directory holds
the state) and requeues the job (``scontrol requeue``; the local executor restarts
it). The requeued job resumes from that checkpoint, bit-identically. SIGTERM and
SIGINT (``scancel``, Ctrl-C) also checkpoint, but end the job: it is recorded as
``stopped`` and the next submission resumes it.

**Several processes.** A cell with ``gpus_per_cell`` > 1 is one job with one task per
GPU; each task becomes one process of an Accelerate run: the rendezvous variables
(``MASTER_ADDR``/``PORT``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) are set from the
job's environment, exactly what ``torchrun`` would set.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import submitit
import torch
from submitit.helpers import DelayedSubmission, TorchDistributedEnvironment

from distill.benchmark.launchers.records import FAILED, FINISHED, REQUEUED, RUNNING, STOPPED, write_job_report
from distill.benchmark.sweep import last_line
from distill.distributed import end_process_group
from distill.engine.signals import EXIT_STOPPED, STOP_SIGNALS, TrainingStopped
from distill.engine.trainer import train
from distill.errors import DistillError
from distill.recipe.load import load_recipe


@dataclass(frozen=True)
class CellSpec:
    """Everything a job needs to train one cell (plain values: it is pickled into the job)."""

    recipe: str
    overrides: tuple[str, ...]
    seed: int
    run_dir: str
    records: str
    tags: Mapping[str, str] = field(default_factory=dict)
    tensorboard: bool = True


def warning_signal() -> signal.Signals:
    """The signal submitit asks Slurm to send before a time limit or preemption (``SUBMITIT_PREEMPT_SIGNAL``, USR2)."""
    return signal.Signals[f"SIG{submitit.JobEnvironment.USR_SIG}"]


def set_distributed_environment(job: submitit.JobEnvironment) -> None:
    """For a job of several tasks: the variables ``torchrun`` would set, from the scheduler's (Accelerate reads them).

    CUDA_VISIBLE_DEVICES is left as the scheduler set it: every task sees the node's
    GPUs and Accelerate picks ``cuda:LOCAL_RANK``.
    """
    if job.num_tasks > 1:
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)


def cpu_threads_from_scheduler(environ: Mapping[str, str] | None = None) -> int | None:
    """The cores Slurm gave each task (``SLURM_CPUS_PER_TASK``) unless the user set ``OMP_NUM_THREADS``.

    torch's default is one thread per core *of the node*, which on a shared node
    oversubscribes the cores the job was given.
    """
    environ = os.environ if environ is None else environ
    if environ.get("OMP_NUM_THREADS"):
        return None
    try:
        threads = int(environ.get("SLURM_CPUS_PER_TASK", ""))
    except ValueError:
        return None
    return threads if threads > 0 else None


class CellJob:
    """The callable a scheduler job runs: train one grid cell, requeue on the scheduler's warning.

    Returns the run's last-epoch top-1 (also in its ``summary.json``). Errors propagate
    (submitit records them as the job's result) after ``job.json`` says ``failed``.
    """

    def __init__(self, spec: CellSpec) -> None:
        self.spec = spec

    def checkpoint(self) -> DelayedSubmission:
        """What submitit requeues: the same cell (its run directory holds the state to resume from)."""
        return DelayedSubmission(self)

    def __call__(self) -> float:
        spec, job = self.spec, submitit.JobEnvironment()
        speaks = job.global_rank == 0
        records = Path(spec.records)
        if speaks:
            write_job_report(records, job.job_id, RUNNING)
        set_distributed_environment(job)
        threads = cpu_threads_from_scheduler()
        if threads is not None:
            torch.set_num_threads(threads)
        warning = warning_signal()
        try:
            recipe = load_recipe(Path(spec.recipe), [*spec.overrides, f"seed={spec.seed}"])
            result = train(
                recipe, run_dir=spec.run_dir, tensorboard=spec.tensorboard, tags=dict(spec.tags),
                stop_signals=(*STOP_SIGNALS, warning),
            )
        except TrainingStopped as stopped:
            if stopped.signal_name == warning.name:
                self._requeue(records, job, warning, str(stopped))
            if speaks:
                write_job_report(records, job.job_id, STOPPED, str(stopped))
            raise
        except BaseException as error:
            if speaks:
                message = str(error) if isinstance(error, DistillError) else f"{type(error).__name__}: {error}"
                write_job_report(records, job.job_id, FAILED, last_line(message))
            raise
        finally:
            end_process_group()
        if speaks:
            write_job_report(records, job.job_id, FINISHED, f"final top-1 {result.final_top1:.2f}")
        return result.final_top1

    def _requeue(self, records: Path, job: submitit.JobEnvironment, warning: signal.Signals, message: str) -> None:
        """Hand the stop to submitit's handler for the warning signal: it pickles :meth:`checkpoint`, requeues and exits.

        The trainer restored that handler when it stopped. Processes other than global
        rank 0 leave the requeue to it and exit; outside a submitit job (no handler) the
        stop propagates like any other.
        """
        handler = signal.getsignal(warning)
        if not callable(handler):
            return
        if job.global_rank == 0:
            write_job_report(records, job.job_id, REQUEUED, message)
        end_process_group()
        handler(warning, None)  # rank 0: requeues and exits (SystemExit); other ranks: returns
        sys.exit(EXIT_STOPPED)


def submit_specs(executor: submitit.Executor, specs: Sequence[CellSpec]) -> list[submitit.Job]:
    """Submit one job per cell in one batch: Slurm receives them as one job array (throttled by the executor)."""
    with executor.batch():
        jobs = [executor.submit(CellJob(spec)) for spec in specs]
    return jobs
