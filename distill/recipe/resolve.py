"""A loaded recipe resolved to the files a run uses: the teacher's checkpoint and its sha256.

Loading a recipe checks names (a recipe stays loadable before its teacher is
fetched); resolving it, when a run is about to start, finds the files: a teacher
named through the manifest gets its checkpoint path filled in, every checkpoint path
becomes absolute (the run directory's ``recipe.yaml`` must reproduce the run from
any working directory), a missing file is refused with the way to get it, and the
teacher file is hashed (a resume checks that the teacher is the same file, by content).
The trainer takes only a :class:`ResolvedRecipe`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from distill.errors import DistillError, RecipeError
from distill.files.hashing import sha256_file
from distill.recipe.manifest import load_manifest
from distill.recipe.schema import Recipe, TeacherSpec

MISSING_TEACHER_HINT = (
    " Fetch a published teacher ('distill teachers fetch <name>', then use teacher.name=<name>) "
    "or train one with 'distill train recipes/cifar100/teachers/<arch>.yaml'."
)


@dataclass(frozen=True)
class ResolvedRecipe:
    """A recipe whose checkpoint files exist (absolute paths), with the teacher file's sha256."""

    recipe: Recipe
    teacher_sha256: str | None


def resolve_teacher_checkpoint(teacher: TeacherSpec) -> str:
    """The checkpoint file a teacher spec points to: its own ``checkpoint``, else the manifest's file."""
    if teacher.checkpoint is not None:
        return teacher.checkpoint
    if teacher.name is None:
        raise RecipeError("teacher.checkpoint is not set and the teacher has no manifest name")
    return str(load_manifest(teacher.manifest).require_checkpoint(teacher.name))


def missing_checkpoints(recipe: Recipe) -> list[tuple[str, str]]:
    """``(role, "role.checkpoint: file PATH does not exist")`` for each checkpoint file the recipe names that is missing.

    The teacher's file must be resolved first (:func:`resolve_teacher_checkpoint`);
    a start refuses on the first of these, a dry run lists them all.
    """
    return [
        (role, f"{role}.checkpoint: file {spec.checkpoint} does not exist")
        for role, spec in (("student", recipe.student), ("teacher", recipe.teacher))
        if spec is not None and spec.checkpoint is not None and not Path(spec.checkpoint).is_file()
    ]


def with_resolved_files(recipe: Recipe) -> Recipe:
    """A copy of ``recipe`` with the teacher's checkpoint filled in and every checkpoint path absolute."""
    resolved = copy.deepcopy(recipe)
    if resolved.teacher is not None:
        resolved.teacher.checkpoint = resolve_teacher_checkpoint(resolved.teacher)
    for spec in (resolved.student, resolved.teacher):
        if spec is not None and spec.checkpoint is not None:
            spec.checkpoint = str(Path(spec.checkpoint).absolute())
    return resolved


def resolve_recipe(recipe: Recipe | ResolvedRecipe) -> ResolvedRecipe:
    """Resolve ``recipe``'s files (a :class:`ResolvedRecipe` is returned as it is).

    Raises:
        DistillError: a checkpoint file the recipe names (or the manifest gives) does
            not exist; for the teacher, the message says how to fetch or train one.
    """
    if isinstance(recipe, ResolvedRecipe):
        return recipe
    resolved = with_resolved_files(recipe)
    missing = missing_checkpoints(resolved)
    if missing:
        role, message = missing[0]
        raise DistillError(f"{message}.{MISSING_TEACHER_HINT if role == 'teacher' else ''}")
    teacher = resolved.teacher
    digest = sha256_file(teacher.checkpoint) if teacher is not None and teacher.checkpoint is not None else None
    return ResolvedRecipe(recipe=resolved, teacher_sha256=digest)
