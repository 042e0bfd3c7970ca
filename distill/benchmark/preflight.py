"""What a real start of a run would refuse, checked without training: for ``distill sweep --dry-run``.

``distill train`` refuses to start when the recipe (with its overrides) does not
validate, when the teacher's checkpoint cannot be found, when the dataset is not
where ``data.root`` says, and when it would continue a run directory that was
started with settings that change the result. Each check here is one of those,
as a small function that returns the problems it found (empty: fine), so that a
dry run can list every problem of every cell instead of stopping at the first.

A finished run is never trained again, so the only check that applies to it is
whether it was run with the settings the sweep asks for now (a sweep that counted
it as done despite other settings would report a result of another experiment).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from distill.engine.loaders import build_datasets
from distill.engine.resume import plan_run_dir, recipe_differences, recorded_form, recorded_recipe
from distill.engine.tracking import check_trackers_available
from distill.errors import DistillError
from distill.recipe.load import load_recipe
from distill.recipe.resolve import missing_checkpoints, resolve_teacher_checkpoint
from distill.recipe.schema import DataSpec, Recipe


def load_cell_recipe(recipe_path: Path, overrides: Sequence[str], seed: int) -> Recipe:
    """The recipe a sweep runs for one cell: the task recipe, the sweep's overrides, then the cell's seed."""
    return load_recipe(recipe_path, [*overrides, f"seed={seed}"])


def settings_differences(run_dir: Path, recipe: Recipe) -> list[str]:
    """``key: run has A, now B`` for each result-changing key where ``run_dir``'s recipe differs from ``recipe``.

    Empty when they agree or when the run directory holds no ``recipe.yaml``. Keys that
    do not change the result (``data.root``, ``teacher.checkpoint``, ...) are ignored,
    exactly as a resume ignores them (:data:`distill.engine.resume.RESULT_NEUTRAL_KEYS`).

    Raises:
        ResumeError: the run's ``recipe.yaml`` cannot be read.
    """
    recorded = recorded_recipe(run_dir)
    return [] if recorded is None else recipe_differences(recorded, recorded_form(recipe))


def run_dir_problems(run_dir: Path) -> list[str]:
    """Why a run could not start or continue in ``run_dir`` (a file, foreign files, a finished run)."""
    try:
        plan_run_dir(run_dir)
    except DistillError as error:
        return [str(error)]
    return []


def checkpoint_problems(recipe: Recipe) -> list[str]:
    """The teacher (and student) checkpoint files the recipe names that cannot be found.

    Resolves the teacher's file into ``recipe`` (a cell's own, freshly loaded copy) as a start does.
    """
    if recipe.teacher is not None:
        try:
            recipe.teacher.checkpoint = resolve_teacher_checkpoint(recipe.teacher)
        except DistillError as error:
            return [f"teacher: {error}", *(message for role, message in missing_checkpoints(recipe) if role == "student")]
    return [message for _, message in missing_checkpoints(recipe)]


class DataChecks:
    """Whether each data spec's dataset can be built, remembered per spec (a grid shares one dataset)."""

    def __init__(self) -> None:
        self._seen: dict[str, str | None] = {}

    def problem(self, spec: DataSpec) -> str | None:
        """Why the dataset cannot be built from ``spec`` (None: it can, or a real start would download it).

        Building reads the files once (and checks their checksums if ``data.verify``),
        exactly as a run does; with ``data.download`` a missing dataset is fetched at
        the start, so a dry run, which downloads nothing, does not count it as missing.
        """
        if spec.download:
            return None
        key = repr((spec.dataset, spec.root, spec.verify, spec.options))
        if key not in self._seen:
            self._seen[key] = _build_problem(spec)
        return self._seen[key]


def _build_problem(spec: DataSpec) -> str | None:
    try:
        build_datasets(spec)
    except DistillError as error:
        return f"data: {error}"
    except Exception as error:  # noqa: BLE001  (a plugin dataset may raise anything; a dry run reports it)
        return f"data: {type(error).__name__}: {error}"
    return None


def start_problems(recipe: Recipe, data: DataChecks) -> list[str]:
    """What would stop ``recipe`` from starting, apart from its run directory: trackers, checkpoints, then data."""
    problems = []
    try:
        check_trackers_available(recipe.tracking.log_with)
    except DistillError as error:
        problems.append(str(error))
    problems += checkpoint_problems(recipe)
    data_problem = data.problem(recipe.data)
    if data_problem is not None:
        problems.append(data_problem)
    return problems
