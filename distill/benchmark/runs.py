"""Reading the run directories that ``distill train`` writes, for reports.

A run directory holds ``recipe.yaml`` (the resolved recipe), ``run.json`` (versions,
device, processes), ``metrics.jsonl`` (one JSON row per record), ``outcome.json`` (how
its last process ended) and, once training finished, ``summary.json``. This module
turns each into a :class:`RunRecord`: which method and benchmark task the run belongs
to, whether it finished or an error ended it, its accuracies, its test-accuracy curve
and what it cost (wall time, device, processes).

A damaged run must not sink a report over hundreds of others, so unreadable
files skip that run with a warning that names the file.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.benchmark.cost import RunCost
from distill.benchmark.tasks import TASKS
from distill.errors import DistillError
from distill.files.rundir import (
    OUTCOME_FILE,
    RECIPE_FILE,
    RUN_INFO_FILE,
    SUMMARY_FILE,
    MetricsFileError,
    RunOutcome,
    is_finished,
    read_metrics,
    read_outcome,
)
from distill.recipe.yaml_io import read_yaml_file

TEACHER_METHOD = "teacher"
"""The method of a run that trains a teacher from scratch (recipe ``<dataset>/teachers/<arch>``)."""

TASK_NAMES = tuple(task.name for task in TASKS)

Warn = Callable[[str], None]


class RunReadError(Exception):
    """One file of a run directory is unreadable or malformed (the run is skipped, the report goes on)."""


@dataclass(frozen=True)
class RunRecord:
    """What a report needs to know about one training run."""

    path: Path
    name: str
    """The recipe's name, e.g. ``cifar100/kd/resnet32x4-resnet8x4``."""
    method: str
    task: str
    """A benchmark task name; for teacher runs the teacher's arch; otherwise ``<teacher>-<student>`` or the student."""
    teacher_arch: str | None
    student_arch: str
    seed: int | None
    complete: bool
    """True when ``summary.json`` exists: training ran to its last epoch."""
    final_top1: float | None
    """Last-epoch test top-1 from ``summary.json`` (None while the run is incomplete)."""
    best_top1: float | None
    """Best-epoch test top-1 of a finished run (``summary.json``, else the curve's maximum)."""
    epochs_done: int
    epochs_planned: int | None
    curve: tuple[tuple[int, float], ...]
    """(epoch, test top-1) for every finished epoch, in epoch order."""
    teacher_top1_measured: float | None
    """The teacher's test top-1 measured before training (the ``epoch: 0`` row), if logged."""
    outcome: RunOutcome | None = None
    """How the run's last process ended (``outcome.json``); None for runs from before it was recorded."""
    recipe_missing: bool = False
    """An error ended the run before it wrote ``recipe.yaml``: method, task and archs are unknown (empty)."""
    wall_seconds: float | None = None
    """Training wall time: ``summary.json``'s ``seconds`` once finished, else the sum of the logged epoch times."""
    device: str | None = None
    """``run.json``'s ``device`` (``cuda:0``, ``cpu``); None when not recorded."""
    num_processes: int | None = None
    """``run.json``'s ``num_processes``: how many devices trained the run together."""
    views: int = 1
    """Views of each image the networks saw per step: the length of ``data.views.shared``, else 1."""

    @property
    def cost(self) -> RunCost | None:
        """The run's wall time and device, or None when no wall time was recorded."""
        return None if self.wall_seconds is None else RunCost(self.wall_seconds, self.device, self.num_processes)

    @property
    def failed(self) -> bool:
        """An error (not a stop signal, not a kill) ended the run before it finished: it is no result at all."""
        return not self.complete and self.outcome is not None and self.outcome.ended_badly


def default_warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def classify(name: str, teacher_arch: str | None, student_arch: str) -> tuple[str, str]:
    """The (method, task) of a run, from its recipe name and architectures.

    ``.../<method>/<task>`` with a benchmark task name gives both, provided the
    run's archs are that task's (a recipe run with another student is not the
    benchmark task: its task then comes from the archs). ``<dataset>/teachers/<arch>``
    is a teacher run. Any other run keeps its recipe name as the method and gets
    its task from the archs.
    """
    parts = name.split("/")
    arch_task = f"{teacher_arch}-{student_arch}" if teacher_arch else student_arch
    if len(parts) >= 2 and parts[-1] in TASK_NAMES:
        task = next(t for t in TASKS if t.name == parts[-1])
        if student_arch == task.student and teacher_arch in (None, task.teacher):
            return parts[-2], task.name
        return parts[-2], arch_task
    if len(parts) >= 2 and parts[-2] == "teachers":
        return TEACHER_METHOD, student_arch
    return name, arch_task


def _arch(recipe: Mapping[str, Any], key: str, where: Path) -> str:
    section = recipe.get(key)
    if not isinstance(section, dict) or not isinstance(section.get("arch"), str):
        raise RunReadError(f"{where}: missing '{key}.arch'")
    return section["arch"]


def read_recipe(run_dir: Path) -> dict[str, Any]:
    """The run's resolved recipe as a mapping."""
    path = run_dir / RECIPE_FILE
    try:
        data = read_yaml_file(path)
    except DistillError as error:
        raise RunReadError(str(error)) from None
    if not isinstance(data, dict):
        raise RunReadError(f"{path}: expected a recipe mapping, got {type(data).__name__}")
    return data


def read_metric_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl`` (none if the file does not exist yet)."""
    try:
        return read_metrics(run_dir)
    except MetricsFileError as error:
        raise RunReadError(str(error)) from None


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """``summary.json``, or None when the run has not finished."""
    if not is_finished(run_dir):
        return None
    path = run_dir / SUMMARY_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunReadError(f"{path}: cannot be read: {error}") from None
    if not isinstance(data, dict) or not _is_number(data.get("final_top1")):
        raise RunReadError(f"{path}: expected a JSON object with a numeric 'final_top1'")
    return data


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """``run.json``, or an empty mapping for a run without one (older runs, or one that is just starting)."""
    path = run_dir / RUN_INFO_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunReadError(f"{path}: cannot be read: {error}") from None
    if not isinstance(data, dict):
        raise RunReadError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def wall_seconds(summary: Mapping[str, Any] | None, rows: Iterable[Mapping[str, Any]]) -> float | None:
    """A finished run's ``seconds`` (summary.json); else the logged ``time/epoch_s``, summed once per epoch.

    A resumed run logs an epoch again; the latest row of each epoch counts, as in the curve.
    """
    if summary is not None and _is_number(summary.get("seconds")):
        return float(summary["seconds"])
    by_epoch: dict[int, float] = {}
    for row in rows:
        epoch, seconds = row.get("epoch"), row.get("time/epoch_s")
        if row.get("stage") != "init" and _is_number(epoch) and _is_number(seconds):
            by_epoch[int(epoch)] = float(seconds)
    return sum(by_epoch.values()) if by_epoch else None


def recipe_views(recipe: Mapping[str, Any]) -> int:
    """Views per step of a run's resolved recipe: ``len(data.views.shared)`` when listed, else 1.

    (The plain-data twin of :func:`distill.data.views.views_per_step`: the report reads
    ``recipe.yaml`` without building the recipe, so a run of an older toolkit still reads.)
    """
    data = recipe.get("data")
    views = data.get("views") if isinstance(data, dict) else None
    shared = views.get("shared") if isinstance(views, dict) else None
    return len(shared) if isinstance(shared, list) and shared else 1


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def top1_curve(rows: Iterable[Mapping[str, Any]]) -> tuple[tuple[int, float], ...]:
    """(epoch, test top-1) of the training epochs; a resumed run's repeated epoch keeps its latest value.

    The ``epoch: 0`` row (teacher accuracy) and the init-stage rows are not epochs of training.
    """
    by_epoch: dict[int, float] = {}
    for row in rows:
        epoch, top1 = row.get("epoch"), row.get("test/top1")
        if row.get("stage") == "init" or not _is_number(epoch) or epoch < 1 or not _is_number(top1):
            continue
        by_epoch[int(epoch)] = float(top1)
    return tuple(sorted(by_epoch.items()))


def measured_teacher_top1(rows: Iterable[Mapping[str, Any]]) -> float | None:
    """The teacher's top-1 logged in the ``epoch: 0`` row, if there is one."""
    for row in rows:
        if row.get("epoch") == 0 and _is_number(row.get("teacher/top1")):
            return float(row["teacher/top1"])
    return None


def read_run(run_dir: Path) -> RunRecord:
    """One run directory as a record; raises :class:`RunReadError` naming the bad file."""
    recipe = read_recipe(run_dir)
    student = _arch(recipe, "student", run_dir / RECIPE_FILE)
    teacher = None if recipe.get("teacher") is None else _arch(recipe, "teacher", run_dir / RECIPE_FILE)
    name = recipe.get("name") if isinstance(recipe.get("name"), str) else run_dir.name
    schedule = recipe.get("schedule")
    planned = schedule.get("epochs") if isinstance(schedule, dict) else None
    seed = recipe.get("seed")
    rows = read_metric_rows(run_dir)
    summary = read_summary(run_dir)
    info = read_run_info(run_dir)
    curve = top1_curve(rows)
    method, task = classify(name, teacher, student)
    epochs_done = max((epoch for epoch, _ in curve), default=0)
    if summary is not None and _is_number(summary.get("epochs")):
        epochs_done = max(epochs_done, int(summary["epochs"]))
    best = summary.get("best_top1") if summary is not None else None
    if summary is not None and not _is_number(best) and curve:
        best = max(top1 for _, top1 in curve)
    return RunRecord(
        path=run_dir,
        name=name,
        method=method,
        task=task,
        teacher_arch=teacher,
        student_arch=student,
        seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        complete=summary is not None,
        final_top1=float(summary["final_top1"]) if summary is not None else None,
        best_top1=float(best) if _is_number(best) else None,
        epochs_done=epochs_done,
        epochs_planned=planned if isinstance(planned, int) and not isinstance(planned, bool) else None,
        curve=curve,
        teacher_top1_measured=measured_teacher_top1(rows),
        outcome=read_outcome(run_dir),
        wall_seconds=wall_seconds(summary, rows),
        device=info["device"] if isinstance(info.get("device"), str) else None,
        num_processes=_positive_int(info.get("num_processes")),
        views=recipe_views(recipe),
    )


def failed_before_recipe(run_dir: Path, outcome: RunOutcome) -> RunRecord:
    """A run that an error ended before it wrote ``recipe.yaml``: only its folder and outcome are known."""
    return RunRecord(
        path=run_dir,
        name="",
        method="",
        task="",
        teacher_arch=None,
        student_arch="",
        seed=None,
        complete=False,
        final_top1=None,
        best_top1=None,
        epochs_done=0,
        epochs_planned=None,
        curve=(),
        teacher_top1_measured=None,
        outcome=outcome,
        recipe_missing=True,
    )


def run_directories(root: Path) -> Iterator[Path]:
    """Every directory under ``root`` (itself included) that holds a ``recipe.yaml`` or an ``outcome.json``.

    ``_base_`` folders (recipe fragments, not runs) are skipped.
    """
    for current, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "_base_")
        if RECIPE_FILE in files or OUTCOME_FILE in files:
            yield Path(current)


def read_run_directory(run_dir: Path) -> RunRecord | None:
    """:func:`read_run`, or for a folder without ``recipe.yaml`` a failed record if an error ended it, else None.

    A run without a recipe that did not fail has just started (or was killed while starting):
    there is nothing to report yet.
    """
    if (run_dir / RECIPE_FILE).is_file():
        return read_run(run_dir)
    outcome = read_outcome(run_dir)
    if outcome is not None and outcome.ended_badly:
        return failed_before_recipe(run_dir, outcome)
    return None


def find_runs(paths: Iterable[Path | str], warn: Warn = default_warn) -> list[RunRecord]:
    """The runs found under ``paths`` (searched recursively), in path order.

    A run whose files cannot be read is skipped with a ``warn`` message naming the
    file. Raises :class:`DistillError` when a path does not exist or no run at all is found.
    """
    roots = [Path(path) for path in paths]
    for root in roots:
        if not root.exists():
            raise DistillError(f"{root} does not exist; give run directories or folders that contain them")
    records: list[RunRecord] = []
    seen: set[Path] = set()
    for root in roots:
        start = root.parent if root.is_file() and root.name == RECIPE_FILE else root
        for run_dir in run_directories(start):
            key = run_dir.resolve()
            if key in seen:
                continue
            seen.add(key)
            try:
                record = read_run_directory(run_dir)
            except RunReadError as error:
                warn(f"skipping run {run_dir}: {error}")
                continue
            if record is not None:
                records.append(record)
    if not records:
        given = ", ".join(str(root) for root in roots)
        raise DistillError(
            f"no runs found under {given}: a run directory holds the recipe.yaml that 'distill train' "
            "writes; give the folder you trained into (e.g. runs/)"
        )
    return records
