"""Deciding what a run directory means for a new ``distill train``: start, resume or refuse.

A run directory that already holds a run is continued rather than refused:

* it has ``checkpoints/last.pt`` → the run resumes from it, exactly;
* it has no checkpoint yet (killed before the first one) → the run starts over
  in place (nothing it wrote could be mistaken for a result);
* it is finished (``summary.json``) → refused: there is nothing to resume, unless
  forced with a longer ``schedule.epochs`` (the run is then extended from its last
  checkpoint).

Resuming with a recipe that differs from the run's ``recipe.yaml`` in anything
that changes the result, or with a teacher checkpoint whose sha256 differs from
the one the run trained with, is refused with the differences listed, unless
forced (``--force``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from distill.errors import DistillError
from distill.files.atomic import TEMPORARY_MARK
from distill.files.rundir import (
    CHECKPOINT_DIR,
    LAST_CHECKPOINT,
    LOCK_FILE,
    LOG_FILE,
    RECIPE_FILE,
    RUN_ENTRIES,
    SUMMARY_FILE,
    is_finished,
)
from distill.recipe.schema import Recipe
from distill.recipe.serialize import flatten_recipe, recipe_to_yaml

RESULT_NEUTRAL_KEYS = (
    "name",
    "description",
    "output_dir",
    "log_every",
    "checkpoint_every_steps",
    "async_checkpoint",
    "skip_nonfinite",
    "tracking",
    "data.root",
    "data.download",
    "data.verify",
    "data.num_workers",
    "teacher.checkpoint",
    "teacher.manifest",
    "optimizer.reference_batch_size",
)
"""Recipe keys a resume may change freely: they move files or change reporting, not the result.

(The teacher's *file* may move; its content is checked by sha256 instead.)
"""


class ResumeError(DistillError):
    """A run directory cannot be resumed as asked (finished, foreign files, other recipe or teacher)."""


@dataclass(frozen=True)
class RunDirPlan:
    """What to do with a run directory: ``checkpoint`` to resume from, or ``restart`` an unfinished run in place."""

    path: Path
    checkpoint: Path | None = None
    restart: bool = False
    auto_named: bool = False
    """A new run under a time-stamped name: claimed with a free suffix if another run took the name."""
    extends: bool = False
    """The run had finished; it continues from its last checkpoint to a longer schedule."""

    @property
    def resumes(self) -> bool:
        return self.checkpoint is not None


def plan_run_dir(path: Path, *, extend_finished: bool = False) -> RunDirPlan:
    """Look at ``path`` and decide: a new run, a resume, a restart in place, or an error.

    ``extend_finished``: a finished run is continued from its last checkpoint
    (``--force`` with a longer schedule) instead of refused.

    Raises:
        ResumeError: ``path`` is a finished run, a file, or a folder with files a run does not write.
    """
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return RunDirPlan(path)
    if not path.is_dir():
        raise ResumeError(f"run directory {path} is a file; choose another --run-dir")
    strangers = sorted(entry.name for entry in path.iterdir() if entry.name not in RUN_ENTRIES)
    if strangers:
        raise ResumeError(
            f"run directory {path} already exists and holds files a run does not write "
            f"({', '.join(strangers[:5])}); choose another --run-dir, or leave it out to get a fresh, time-stamped one"
        )
    last = path / LAST_CHECKPOINT
    if is_finished(path):
        if extend_finished and last.is_file():
            return RunDirPlan(path, checkpoint=last, extends=True)
        raise ResumeError(
            f"run directory {path} holds a finished run ({SUMMARY_FILE} exists): there is nothing to resume. "
            f"To train it longer: distill train --resume {path} schedule.epochs=N --force. "
            f"To train again, choose another --run-dir."
        )
    if last.is_file():
        return RunDirPlan(path, checkpoint=last)
    return RunDirPlan(path, restart=True)


def clear_for_restart(path: Path) -> None:
    """Remove what an unfinished run without a checkpoint wrote, except its log (appended to) and its lock (held)."""
    for name in RUN_ENTRIES - {LOG_FILE, LOCK_FILE}:
        entry = path / name
        if entry.is_dir():
            shutil.rmtree(entry)
        elif entry.exists():
            entry.unlink()


def remove_stale_temporaries(path: Path) -> None:
    """Delete checkpoint temporaries a killed process left half-written (``checkpoints/.last.pt.tmp-PID``)."""
    for temporary in (path / CHECKPOINT_DIR).glob(f".*{TEMPORARY_MARK}*"):
        temporary.unlink(missing_ok=True)


def _is_neutral(key: str) -> bool:
    return any(key == neutral or key.startswith(neutral + ".") for neutral in RESULT_NEUTRAL_KEYS)


def differing_keys(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ between two recipes, neutral keys left out, sorted."""
    old, new = flatten_recipe(recorded), flatten_recipe(current)
    return [
        key
        for key in sorted(old.keys() | new.keys())
        if not _is_neutral(key) and old.get(key, "<unset>") != new.get(key, "<unset>")
    ]


def recipe_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The keys (dotted paths) whose values differ, as ``key: run has A, now B``; neutral keys left out."""
    old, new = flatten_recipe(recorded), flatten_recipe(current)
    return [
        f"{key}: run has {old.get(key, '<unset>')!r}, now {new.get(key, '<unset>')!r}"
        for key in differing_keys(recorded, current)
    ]


def recorded_form(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain data, the way a run directory's ``recipe.yaml`` records it (to compare with one)."""
    return yaml.safe_load(recipe_to_yaml(recipe))


def recorded_recipe(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``recipe.yaml`` as plain data (``None`` if it was never written)."""
    path = run_dir / RECIPE_FILE
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ResumeError(f"{path}: cannot be read ({error}); the run cannot be checked for resuming") from None
    if not isinstance(data, dict):
        raise ResumeError(f"{path}: expected a mapping; the run cannot be checked for resuming")
    return data


def check_same_recipe(run_dir: Path, current: dict[str, Any], *, force: bool) -> list[str]:
    """Refuse (unless ``force``) to continue ``run_dir`` with a recipe that changes the result.

    Returns the differences that were accepted (non-empty only when forced).
    """
    recorded = recorded_recipe(run_dir)
    if recorded is None:
        return []
    differences = recipe_differences(recorded, current)
    if differences and not force:
        shown = "\n  ".join(differences[:12]) + (f"\n  … and {len(differences) - 12} more" if len(differences) > 12 else "")
        raise ResumeError(
            f"the recipe differs from the one {run_dir} was started with ({run_dir / RECIPE_FILE}):\n  {shown}\n"
            f"Resume with the run's own recipe ('distill train --resume {run_dir}'), choose another --run-dir "
            f"for a new run, or pass --force to continue this run with the new recipe anyway."
        )
    return differences


def check_same_teacher(run_dir: Path, recorded_sha256: str | None, current_sha256: str | None, *, force: bool) -> str | None:
    """Refuse (unless ``force``) to continue with a teacher file whose content differs; returns a note when forced."""
    if recorded_sha256 == current_sha256:
        return None
    message = (
        f"the teacher checkpoint differs from the one {run_dir} trained with "
        f"(sha256 {recorded_sha256 or 'none'} then, {current_sha256 or 'none'} now)"
    )
    if not force:
        raise ResumeError(
            f"{message}. Point teacher.checkpoint at the original file, or pass --force to continue with this teacher."
        )
    return message
