"""The local launcher: the grid's cells trained on this machine, one after another or as N processes.

``jobs=1`` trains each cell in this process; ``jobs=N`` starts up to N independent
``distill train`` processes at once, handing out GPUs round-robin. Both share the
grid's planning with the cluster launcher (:func:`distill.benchmark.sweep.cells_to_run`:
finished cells skipped, unfinished ones resumed exactly, cells run with other settings
left alone) and write the same run directories, so ``distill report`` reads either.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from distill.benchmark.launchers.records import (
    FAILED,
    FINISHED,
    RUNNING,
    STOPPED,
    Submission,
    now,
    records_dir,
    write_job_report,
    write_submission,
)
from distill.benchmark.sweep import SweepCell, SweepOutcome, cells_to_run, last_line, record_failure
from distill.engine.signals import TrainingStopped
from distill.engine.trainer import train
from distill.errors import DistillError
from distill.recipe.load import load_recipe


class CellRecords:
    """The job records of a local sweep's cells (:mod:`~distill.benchmark.launchers.records`), as a scheduler's jobs have.

    The "job" of a local cell is this sweep process (its pid, executor ``local``): while it
    lives, a cell recorded ``running`` is running; ``distill sweep --status`` and
    ``--retry-failed`` read local and cluster sweeps alike. ``output=None`` records nothing.
    """

    def __init__(self, output: Path | None) -> None:
        self.output = output
        self.job_id = str(os.getpid())

    def start(self, cell: SweepCell, log: str = "") -> None:
        if self.output is None:
            return
        folder = records_dir(self.output, cell.method, cell.task, cell.seed)
        write_submission(folder, Submission(self.job_id, "local", now(), socket.gethostname(), log, log))
        write_job_report(folder, self.job_id, RUNNING)

    def end(self, cell: SweepCell, state: str, message: str = "") -> None:
        if self.output is not None:
            write_job_report(records_dir(self.output, cell.method, cell.task, cell.seed), self.job_id, state, message)


def train_arguments(cell: SweepCell, overrides: Sequence[str], tensorboard: bool) -> list[str]:
    """The ``distill train`` arguments that run one cell."""
    return [
        "train",
        str(cell.recipe),
        *overrides,
        f"seed={cell.seed}",
        "--run-dir",
        str(cell.run_dir),
        *[f"--tag={key}={value}" for key, value in cell.tags.items()],
        *([] if tensorboard else ["--no-tensorboard"]),
    ]


def run_in_process(cell: SweepCell, overrides: Sequence[str], tensorboard: bool) -> None:
    """Train one cell in this process (the sequential mode)."""
    recipe = load_recipe(cell.recipe, [*overrides, f"seed={cell.seed}"])
    train(recipe, run_dir=cell.run_dir, tensorboard=tensorboard, tags=cell.tags)


def run_subprocess(cell: SweepCell, overrides: Sequence[str], tensorboard: bool, log_file: Path, env: dict) -> None:
    """Train one cell as an independent ``distill train`` process; its output goes to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "distill.cli.main", *train_arguments(cell, overrides, tensorboard)]
    with log_file.open("w", encoding="utf-8") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        error = last_line(log_file.read_text(encoding="utf-8", errors="replace"))
        raise DistillError(f"exit status {code}; see {log_file}: {error}")



def run_sweep(
    cells: Iterable[SweepCell],
    overrides: Sequence[str] = (),
    *,
    jobs: int = 1,
    devices: Sequence[str] = (),
    tensorboard: bool = True,
    fail_fast: bool = False,
    log_dir: Path | None = None,
    records: Path | None = None,
    echo: Callable[[str], None] = print,
) -> SweepOutcome:
    """Run every cell that has not finished: in this process (``jobs=1``) or as ``jobs`` processes.

    A cell whose run directory holds a run (finished or not) with settings other than those
    the sweep would run now is not run and not counted as done: it goes to ``other_settings``.
    With processes, ``devices`` (e.g. ``["0", "1"]``) are handed out round-robin through
    ``CUDA_VISIBLE_DEVICES``. A failed cell is reported and the sweep goes on, unless
    ``fail_fast``. SIGTERM/SIGINT stop the sweep after the running cell checkpointed; the next
    sweep skips finished cells and resumes that one. ``records``: the sweep's output folder,
    where each cell's job records go (:class:`CellRecords`).
    """
    cells = list(cells)
    outcome = SweepOutcome([], [], [])
    todo = cells_to_run(cells, overrides, outcome, echo)
    other = f", {len(outcome.other_settings)} with other settings (not run)" if outcome.other_settings else ""
    echo(f"sweep: {len(cells)} runs, {len(outcome.skipped)} already finished{other}, {len(todo)} to run")
    if jobs <= 1:
        run_sequential(
            todo, overrides, outcome, tensorboard=tensorboard, fail_fast=fail_fast, records=CellRecords(records), echo=echo
        )
    else:
        run_parallel(
            todo, overrides, outcome, jobs=jobs, devices=devices, tensorboard=tensorboard, fail_fast=fail_fast,
            log_dir=log_dir or Path("."), records=CellRecords(records), echo=echo,
        )
    return outcome



def run_sequential(
    todo: Sequence[SweepCell],
    overrides: Sequence[str],
    outcome: SweepOutcome,
    *,
    tensorboard: bool,
    fail_fast: bool,
    records: CellRecords,
    echo: Callable[[str], None],
) -> None:
    """Train ``todo`` one after the other in this process, recording each result in ``outcome`` and ``records``.

    A failed cell is recorded and the next one runs (unless ``fail_fast``);
    :class:`~distill.engine.signals.TrainingStopped` (SIGTERM/SIGINT) ends the whole sweep.
    """
    for number, cell in enumerate(todo, start=1):
        echo(f"[{number}/{len(todo)}] {cell.label} → {cell.run_dir}")
        records.start(cell)
        try:
            run_in_process(cell, overrides, tensorboard)
        except TrainingStopped as stopped:  # SIGTERM/SIGINT stop the whole sweep; the cell checkpointed and resumes next time
            records.end(cell, STOPPED, str(stopped))
            raise
        except Exception as error:  # one broken cell must not end the sweep; the message says why
            message = str(error) if isinstance(error, DistillError) else f"{type(error).__name__}: {error}"
            records.end(cell, FAILED, last_line(message))
            record_failure(outcome, cell, message, echo)
            if fail_fast:
                break
        else:
            records.end(cell, FINISHED)
            outcome.done.append(cell)


def run_parallel(
    todo: Sequence[SweepCell],
    overrides: Sequence[str],
    outcome: SweepOutcome,
    *,
    jobs: int,
    devices: Sequence[str],
    tensorboard: bool,
    fail_fast: bool,
    log_dir: Path,
    records: CellRecords,
    echo: Callable[[str], None],
) -> None:
    """Train ``todo`` as up to ``jobs`` ``distill train`` processes at once, recording each result in ``outcome``.

    Cell number ``i`` (0-based, grid order) gets ``CUDA_VISIBLE_DEVICES=devices[i % len(devices)]``
    when ``devices`` are given; its output goes to ``<log_dir>/<method>/<task>/seed<seed>.log``.
    With ``fail_fast`` no new cell starts after a failure; the running ones finish.
    """
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        running: dict[Future, SweepCell] = {}
        queue = list(enumerate(todo))
        while queue or running:
            while queue and len(running) < jobs and not (fail_fast and outcome.failed):
                number, cell = queue.pop(0)
                env = dict(os.environ)
                if devices:
                    env["CUDA_VISIBLE_DEVICES"] = devices[number % len(devices)]
                log_file = log_dir / cell.method / cell.task / f"seed{cell.seed}.log"
                echo(f"[{number + 1}/{len(todo)}] started {cell.label} → {cell.run_dir} (output: {log_file})")
                records.start(cell, str(log_file))
                running[pool.submit(run_subprocess, cell, overrides, tensorboard, log_file, env)] = cell
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                cell = running.pop(future)
                error = future.exception()
                if error is None:
                    records.end(cell, FINISHED)
                    outcome.done.append(cell)
                    echo(f"finished {cell.label}")
                else:
                    records.end(cell, FAILED, last_line(str(error)))
                    record_failure(outcome, cell, str(error), echo)
