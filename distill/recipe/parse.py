"""The schema check of a composed recipe: every key known, every value of its type.

Needs neither torch nor a registry, so a misspelt key or a wrong type fails in a
fraction of a second; :mod:`distill.recipe.load` then checks the names the recipe
gives (models, dataset, losses, views, the teacher) against the registries.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from distill.errors import RecipeError
from distill.recipe.compose import ComposedRecipe, KeyPath, apply_overrides, compose_file, format_key
from distill.recipe.schema import Recipe
from distill.schema import ValidationIssue, build_dataclass


def recipe_error(composed: ComposedRecipe, path: KeyPath, message: str) -> RecipeError:
    """An error at ``path`` that names the file (or override) which set it."""
    return RecipeError(f"{composed.source_of(path)}: {format_key(path)}: {message}")


def recipe_name_from_path(path: Path) -> str:
    """``recipes/cifar100/kd/a-b.yaml`` → ``cifar100/kd/a-b``; elsewhere the file stem."""
    parts = path.resolve().with_suffix("").parts
    if "recipes" in parts:
        index = len(parts) - 1 - parts[::-1].index("recipes")
        if index < len(parts) - 1:
            return "/".join(parts[index + 1 :])
    return path.stem


def compose_recipe(path: str | Path, overrides: Iterable[str] = ()) -> ComposedRecipe:
    """A recipe file with its ``_base_`` files merged and ``key.path=value`` overrides applied; not yet validated."""
    return apply_overrides(compose_file(path), list(overrides))


def parse_composed(composed: ComposedRecipe, default_name: str = "run") -> Recipe:
    """The composed mapping as a :class:`Recipe`, checked against the schema; loss terms are left empty.

    The losses are parsed by :func:`distill.recipe.load.validate_composed`: their
    parameters come from the loss registry.
    """
    data = dict(composed.data)
    data["losses"] = {}
    data.setdefault("name", default_name)
    try:
        return build_dataclass(Recipe, data, ())
    except ValidationIssue as issue:
        raise recipe_error(composed, issue.path, issue.message) from None
