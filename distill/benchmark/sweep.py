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

This module plans; :mod:`distill.benchmark.launchers` trains: on this machine
(``launchers.local``) or as Slurm jobs (``launchers.scheduler``), both from the same
:func:`cells_to_run`. A sweep records its grid in ``<output>/sweep.json``
(:func:`write_grid`) so that ``--status`` and ``--retry-failed`` find it again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from distill.benchmark.preflight import (
    DataChecks,
    load_cell_recipe,
    run_dir_problems,
    settings_differences,
    start_problems,
)
from distill.benchmark.tasks import TASKS, get_task
from distill.errors import DistillError
from distill.files.atomic import atomic_write_text
from distill.files.rundir import LAST_CHECKPOINT, RECIPE_FILE, is_finished, read_outcome
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

    @property
    def tags(self) -> dict[str, str]:
        """The cell's coordinates, given to the run's trackers so that a grid's runs can be filtered and grouped."""
        return {"task": self.task, "method": self.method, "seed": str(self.seed)}


GRID_FILE = "sweep.json"
"""The grid a sweep was started with, under its output folder: ``--status`` and ``--retry-failed`` read it."""


@dataclass(frozen=True)
class GridSpec:
    """What defines a grid: the recipe folder, methods, tasks, seeds and the overrides given to every cell."""

    recipes: str
    methods: tuple[str, ...]
    tasks: tuple[str, ...]
    seeds: tuple[int, ...]
    overrides: tuple[str, ...] = ()


def write_grid(output: Path, grid: GridSpec) -> None:
    """Record ``grid`` as ``<output>/sweep.json`` (replacing an earlier record: the last sweep started defines the grid)."""
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output / GRID_FILE, json.dumps(asdict(grid), indent=1) + "\n")


def read_grid(output: Path) -> GridSpec:
    """The grid recorded under ``output``; :class:`DistillError` saying what to do when there is none or it is damaged."""
    path = output / GRID_FILE
    if not path.is_file():
        raise DistillError(
            f"{output} holds no {GRID_FILE} (the record a sweep writes when it starts): give the grid with --methods "
            f"(and --tasks, --seeds, --recipes, -o as the sweep was run), or point at the sweep's --output folder"
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        grid = GridSpec(
            recipes=str(record["recipes"]),
            methods=tuple(str(name) for name in record["methods"]),
            tasks=tuple(str(name) for name in record["tasks"]),
            seeds=tuple(int(seed) for seed in record["seeds"]),
            overrides=tuple(str(text) for text in record.get("overrides", ())),
        )
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise DistillError(f"{path}: not a sweep record ({type(error).__name__}: {error}); give the grid with --methods") from None
    return grid


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


@dataclass
class SweepOutcome:
    done: list[SweepCell]
    skipped: list[SweepCell]
    failed: list[tuple[SweepCell, str]]
    other_settings: list[tuple[SweepCell, str]] = field(default_factory=list)
    """Cells not run because their run directory holds a run with other settings (the message says which)."""


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
                record_failure(outcome, cell, str(error), echo)
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


def record_failure(outcome: SweepOutcome, cell: SweepCell, message: str, echo: Callable[[str], None]) -> None:
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
