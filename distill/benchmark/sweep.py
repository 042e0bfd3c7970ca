"""Sweeps: the grid of tasks × methods × seeds, each cell a normal run directory.

A cell's recipe is ``<recipes>/<method>/<task>.yaml`` (the layout written by
``tools/write_task_recipes.py``) and its run directory is
``<output>/<method>/<task>/seed<seed>``. Those fixed names are what make a sweep
safe to interrupt and re-run: a cell whose run directory holds ``summary.json``
(written only when a run finishes) is skipped, a cell with an unfinished run is
resumed exactly from its last checkpoint (see :mod:`distill.engine.resume`), and
the rest run in grid order.

A cell whose run directory was run (or started) with settings that change the result,
compared with the recipe and overrides the sweep runs now, is neither skipped as done
nor trained: it is reported, and the sweep's exit status says so. ``--dry-run`` runs
every check a real start runs (see :mod:`distill.benchmark.preflight`) and lists the
problems of each cell.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from distill.benchmark.preflight import (
    DataChecks,
    load_cell_recipe,
    run_dir_problems,
    settings_differences,
    start_problems,
)
from distill.benchmark.tasks import TASKS, get_task
from distill.engine.signals import TrainingStopped
from distill.engine.trainer import train
from distill.errors import DistillError
from distill.files.rundir import LAST_CHECKPOINT, RECIPE_FILE, is_finished, read_outcome
from distill.recipe.load import load_recipe
from distill.registry import did_you_mean

DONE, UNFINISHED, FAILED, PENDING = "done", "unfinished", "failed", "pending"
STATUSES = (DONE, UNFINISHED, FAILED, PENDING)
"""``failed``: an error ended the cell's last run (``outcome.json``); the sweep retries it like an unfinished one."""

OTHER_SETTINGS_ADVICE = (
    "To run these cells with the settings given now, use another --output (a new runs directory) or delete "
    "their run directories; to keep them, sweep with the overrides they were run with."
)


@dataclass(frozen=True)
class SweepCell:
    """One run of the grid."""

    method: str
    task: str
    seed: int
    recipe: Path
    run_dir: Path

    @property
    def label(self) -> str:
        return f"{self.method} {self.task} seed {self.seed}"


def parse_tasks(text: str) -> list[str]:
    """``all`` or a comma-separated list of task names (``resnet32x4-resnet8x4,...``), in benchmark order."""
    if text.strip() == "all":
        return [task.name for task in TASKS]
    names = [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        try:
            get_task(name)
        except KeyError as error:
            raise DistillError(f"--tasks: {error.args[0]}") from None
    return list(dict.fromkeys(names))


def parse_seeds(text: str) -> list[int]:
    """``0,1,2`` or a range ``0-4``."""
    try:
        if "-" in text and "," not in text:
            low, high = (int(part) for part in text.split("-", 1))
            seeds = list(range(low, high + 1))
        else:
            seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise DistillError(f"--seeds: expected integers like '0,1,2' or a range '0-4', got {text!r}") from None
    if not seeds:
        raise DistillError(f"--seeds: no seed in {text!r}")
    return list(dict.fromkeys(seeds))


def available_methods(recipe_root: Path) -> list[str]:
    """Method folders under ``recipe_root`` that hold at least one task recipe."""
    task_names = {task.name for task in TASKS}
    return sorted(
        folder.name
        for folder in recipe_root.iterdir()
        if folder.is_dir() and any(path.stem in task_names for path in folder.glob("*.yaml"))
    )


def parse_methods(text: str, recipe_root: Path) -> list[str]:
    known = available_methods(recipe_root)
    names = known if text.strip() == "all" else [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        if name not in known:
            raise DistillError(
                f"--methods: no recipes for method {name!r} under {recipe_root}.{did_you_mean(name, known)} "
                f"Methods: {', '.join(known)}"
            )
    return list(dict.fromkeys(names))


def plan(
    recipe_root: Path, methods: Sequence[str], tasks: Sequence[str], seeds: Sequence[int], output: Path
) -> tuple[list[SweepCell], list[tuple[str, str]]]:
    """The grid in order (method, then task, then seed), and the (method, task) pairs without a recipe.

    A missing recipe is not an error: some methods do not apply to some tasks
    (FSP needs equal channel counts), and the report shows those cells as absent.
    """
    cells, absent = [], []
    for method in methods:
        for task in tasks:
            recipe = recipe_root / method / f"{task}.yaml"
            if not recipe.is_file():
                absent.append((method, task))
                continue
            for seed in seeds:
                cells.append(SweepCell(method, task, seed, recipe, output / method / task / f"seed{seed}"))
    return cells, absent


def cell_status(cell: SweepCell) -> str:
    """One of :data:`STATUSES`, from the cell's run directory alone."""
    if is_finished(cell.run_dir):
        return DONE
    if cell.run_dir.is_dir() and any(cell.run_dir.iterdir()):
        outcome = read_outcome(cell.run_dir)
        return FAILED if outcome is not None and outcome.ended_badly else UNFINISHED
    if cell.run_dir.exists():  # a file where the run directory should be: the run cannot start
        return UNFINISHED
    return PENDING


def last_line(message: str) -> str:
    """The last non-empty line of an error message (a traceback's last line names the error)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def other_settings(cell: SweepCell, overrides: Sequence[str]) -> list[str]:
    """How the run in the cell's directory differs from the one the sweep would run now (empty: same result).

    Raises :class:`DistillError` when the sweep's recipe does not load or the recorded one cannot be read.
    """
    if not (cell.run_dir / RECIPE_FILE).is_file():
        return []
    return settings_differences(cell.run_dir, load_cell_recipe(cell.recipe, overrides, cell.seed))


def other_settings_message(cell: SweepCell, differences: Sequence[str], finished: bool) -> str:
    """``kd resnet56-resnet20 seed 0 (runs/...): finished with other settings: schedule.epochs: run has 2, now 3``."""
    what = "finished" if finished else "started"
    return f"{cell.label} ({cell.run_dir}): {what} with other settings: {'; '.join(differences)}"


@dataclass(frozen=True)
class CellCheck:
    """A cell's status and everything that would stop the sweep from running it (or counting it as done)."""

    cell: SweepCell
    status: str
    problems: tuple[str, ...]


def check_cell(cell: SweepCell, overrides: Sequence[str], data: DataChecks) -> CellCheck:
    """Every check a real sweep and start run on ``cell``, short of training; all problems, not the first.

    A finished cell is only checked for its settings (a sweep never trains it again).
    Problems with the recipe itself stop the checks that need the recipe.
    """
    status = cell_status(cell)
    problems = [] if status == DONE else run_dir_problems(cell.run_dir)
    try:
        recipe = load_cell_recipe(cell.recipe, overrides, cell.seed)
    except DistillError as error:
        return CellCheck(cell, status, (*problems, f"recipe {cell.recipe}: {error}"))
    what = "finished" if status == DONE else "started"
    try:
        differences = settings_differences(cell.run_dir, recipe) if cell.run_dir.is_dir() else []
    except DistillError as error:
        problems.append(str(error))
    else:
        problems += [f"{what} with other settings: {difference}" for difference in differences]
    if status != DONE:
        problems += start_problems(recipe, data)
    return CellCheck(cell, status, tuple(problems))


def check_cells(cells: Iterable[SweepCell], overrides: Sequence[str]) -> list[CellCheck]:
    """:func:`check_cell` for every cell, reading each distinct dataset once."""
    data = DataChecks()
    return [check_cell(cell, overrides, data) for cell in cells]


def train_arguments(cell: SweepCell, overrides: Sequence[str], tensorboard: bool) -> list[str]:
    """The ``distill train`` arguments that run one cell."""
    return [
        "train",
        str(cell.recipe),
        *overrides,
        f"seed={cell.seed}",
        "--run-dir",
        str(cell.run_dir),
        *([] if tensorboard else ["--no-tensorboard"]),
    ]


def run_in_process(cell: SweepCell, overrides: Sequence[str], tensorboard: bool) -> None:
    """Train one cell in this process (the sequential mode)."""
    recipe = load_recipe(cell.recipe, [*overrides, f"seed={cell.seed}"])
    train(recipe, run_dir=cell.run_dir, tensorboard=tensorboard)


def run_subprocess(cell: SweepCell, overrides: Sequence[str], tensorboard: bool, log_file: Path, env: dict) -> None:
    """Train one cell as an independent ``distill train`` process; its output goes to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "distill.cli.main", *train_arguments(cell, overrides, tensorboard)]
    with log_file.open("w", encoding="utf-8") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        error = last_line(log_file.read_text(encoding="utf-8", errors="replace"))
        raise DistillError(f"exit status {code}; see {log_file}: {error}")


@dataclass
class SweepOutcome:
    done: list[SweepCell]
    skipped: list[SweepCell]
    failed: list[tuple[SweepCell, str]]
    other_settings: list[tuple[SweepCell, str]] = field(default_factory=list)
    """Cells not run because their run directory holds a run with other settings (the message says which)."""


def run_sweep(
    cells: Iterable[SweepCell],
    overrides: Sequence[str] = (),
    *,
    jobs: int = 1,
    devices: Sequence[str] = (),
    tensorboard: bool = True,
    fail_fast: bool = False,
    log_dir: Path | None = None,
    echo: Callable[[str], None] = print,
) -> SweepOutcome:
    """Run every cell that has not finished: in this process (``jobs=1``) or as ``jobs`` processes.

    A cell whose run directory holds a run (finished or not) with settings other than those
    the sweep would run now is not run and not counted as done: it goes to ``other_settings``.
    With processes, ``devices`` (e.g. ``["0", "1"]``) are handed out round-robin through
    ``CUDA_VISIBLE_DEVICES``. A failed cell is reported and the sweep goes on, unless
    ``fail_fast``. SIGTERM/SIGINT stop the sweep after the running cell checkpointed; the next
    sweep skips finished cells and resumes that one.
    """
    cells = list(cells)
    outcome = SweepOutcome([], [], [])
    todo = cells_to_run(cells, overrides, outcome, echo)
    other = f", {len(outcome.other_settings)} with other settings (not run)" if outcome.other_settings else ""
    echo(f"sweep: {len(cells)} runs, {len(outcome.skipped)} already finished{other}, {len(todo)} to run")
    if jobs <= 1:
        run_sequential(todo, overrides, outcome, tensorboard=tensorboard, fail_fast=fail_fast, echo=echo)
    else:
        run_parallel(
            todo, overrides, outcome, jobs=jobs, devices=devices, tensorboard=tensorboard, fail_fast=fail_fast,
            log_dir=log_dir or Path("."), echo=echo,
        )
    return outcome


def cells_to_run(
    cells: Sequence[SweepCell], overrides: Sequence[str], outcome: SweepOutcome, echo: Callable[[str], None]
) -> list[SweepCell]:
    """The cells still to train, in grid order; the others go to ``outcome`` (skipped, failed or other settings).

    A finished cell is skipped; an unfinished or failed one is resumed (said with ``echo``);
    a cell whose run directory was run with other settings is neither, and a finished cell
    whose settings cannot be read counts as failed.
    """
    todo = []
    for cell in cells:
        status = cell_status(cell)
        try:
            differences = other_settings(cell, overrides)
        except DistillError as error:
            if status == DONE:  # it cannot be told apart from a run of other settings: not counted as done
                _record_failure(outcome, cell, str(error), echo)
                continue
            differences = []  # running the cell reports the same error
        if differences:
            message = other_settings_message(cell, differences, finished=status == DONE)
            outcome.other_settings.append((cell, message))
            echo(f"NOT RUN {message}")
            continue
        if status == DONE:
            outcome.skipped.append(cell)
            continue
        if status in (UNFINISHED, FAILED):  # the trainer resumes it exactly (or starts it over without a checkpoint)
            how = "from its last checkpoint" if (cell.run_dir / LAST_CHECKPOINT).is_file() else "from the start"
            ended = read_outcome(cell.run_dir)
            if status == FAILED and ended is not None:
                echo(f"retrying failed run {cell.run_dir} {how} (it ended: {last_line(ended.message) or ended.status})")
            else:
                echo(f"resuming unfinished run {cell.run_dir} {how}")
        todo.append(cell)
    return todo


def run_sequential(
    todo: Sequence[SweepCell],
    overrides: Sequence[str],
    outcome: SweepOutcome,
    *,
    tensorboard: bool,
    fail_fast: bool,
    echo: Callable[[str], None],
) -> None:
    """Train ``todo`` one after the other in this process, recording each result in ``outcome``.

    A failed cell is recorded and the next one runs (unless ``fail_fast``);
    :class:`~distill.engine.signals.TrainingStopped` (SIGTERM/SIGINT) ends the whole sweep.
    """
    for number, cell in enumerate(todo, start=1):
        echo(f"[{number}/{len(todo)}] {cell.label} → {cell.run_dir}")
        try:
            run_in_process(cell, overrides, tensorboard)
        except TrainingStopped:  # SIGTERM/SIGINT stop the whole sweep; the cell checkpointed and resumes next time
            raise
        except Exception as error:  # one broken cell must not end the sweep; the message says why
            message = str(error) if isinstance(error, DistillError) else f"{type(error).__name__}: {error}"
            _record_failure(outcome, cell, message, echo)
            if fail_fast:
                break
        else:
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
                running[pool.submit(run_subprocess, cell, overrides, tensorboard, log_file, env)] = cell
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                cell = running.pop(future)
                error = future.exception()
                if error is None:
                    outcome.done.append(cell)
                    echo(f"finished {cell.label}")
                else:
                    _record_failure(outcome, cell, str(error), echo)


def _record_failure(outcome: SweepOutcome, cell: SweepCell, message: str, echo: Callable[[str], None]) -> None:
    outcome.failed.append((cell, message))
    echo(f"FAILED {cell.label}: {message}")


def format_plan(checks: Sequence[CellCheck], absent: Sequence[tuple[str, str]]) -> str:
    """The grid as text: one line per run with its status and, indented below, its problems; then the totals."""
    width = max((len(check.cell.label) for check in checks), default=0)
    lines = []
    for check in checks:
        lines.append(f"{check.cell.label:<{width}}  {check.status:<10}  {check.cell.run_dir}")
        for problem in check.problems:
            lines.append("    problem: " + problem.replace("\n", "\n      "))
    if absent:
        lines.append("no recipe (method not applicable to the task): " + ", ".join(f"{m} {t}" for m, t in absent))
    counts = {status: sum(check.status == status for check in checks) for status in STATUSES}
    with_problems = sum(bool(check.problems) for check in checks)
    lines.append(
        f"{len(checks)} runs: {counts[DONE]} done, {counts[UNFINISHED]} unfinished, {counts[FAILED]} failed, "
        f"{counts[PENDING]} pending; {with_problems} with problems ({time.strftime('%Y-%m-%d %H:%M')})"
    )
    return "\n".join(lines)
