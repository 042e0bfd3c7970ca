"""From YAML files (plus overrides) to a validated :class:`Recipe`, and back.

Everything a recipe names (models, dataset, loss types and their parameters) is
checked here, before any work starts, so a typo costs a second, not an epoch.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from distill.data import list_datasets
from distill.data.registry import check_dataset_options
from distill.data.views import build_views
from distill.errors import DistillError, RecipeError, UnknownNameError
from distill.losses import LOSSES, loss_schema
from distill.models import is_model, list_models
from distill.models.options import ModelOptionError
from distill.models.registry import check_model_options
from distill.recipe.compose import ComposedRecipe, KeyPath, apply_overrides, deep_merge
from distill.recipe.manifest import load_manifest
from distill.recipe.parse import compose_recipe, parse_composed, recipe_error, recipe_name_from_path
from distill.recipe.plugins import load_plugin, resolve_plugin
from distill.recipe.schema import LossSpec, Recipe, TeacherSpec
from distill.registry import did_you_mean
from distill.schema import ValidationIssue, check_options


def _parse_losses(composed: ComposedRecipe) -> dict[str, LossSpec]:
    raw = composed.data.get("losses")
    if raw is None:
        raise recipe_error(composed, ("losses",), "required key is missing: name at least one loss term, e.g. 'ce: {weight: 1.0}'")
    if not isinstance(raw, dict):
        raise recipe_error(composed, ("losses",), f"expected a mapping of term name → parameters, got {raw!r}")
    specs: dict[str, LossSpec] = {}
    for name, entry in raw.items():
        path: KeyPath = ("losses", str(name))
        if entry is None:
            continue  # `losses.NAME=null` removes an inherited term
        if not isinstance(entry, dict):
            raise recipe_error(composed, path, f"expected a mapping with 'weight' and the loss's parameters, got {entry!r}")
        loss_type = entry.get("type", name)
        if not isinstance(loss_type, str):
            raise recipe_error(composed, (*path, "type"), f"expected a loss name (str), got {loss_type!r}")
        try:
            loss_cls = LOSSES.get(loss_type)
        except UnknownNameError as error:
            key = (*path, "type") if "type" in entry else path
            raise recipe_error(composed, key, str(error)) from None
        if "weight" not in entry:
            raise recipe_error(composed, (*path, "weight"), "required key is missing (expected float): the term's weight in the total loss")
        try:
            params = check_options(entry, loss_schema(loss_cls), path, f"loss {loss_type!r}")
        except ValidationIssue as issue:
            raise recipe_error(composed, issue.path, issue.message) from None
        weight = params.pop("weight")
        params.pop("type", None)
        specs[str(name)] = LossSpec(name=str(name), type=loss_type, weight=weight, params=params)
    if not specs:
        raise recipe_error(composed, ("losses",), "no loss term left: name at least one, e.g. 'ce: {weight: 1.0}'")
    return specs


def _cross_check(recipe: Recipe, composed: ComposedRecipe) -> None:
    if recipe.teacher is not None:
        _resolve_teacher_arch(recipe.teacher, composed)
    for role, spec in (("student", recipe.student), ("teacher", recipe.teacher)):
        if spec is not None and not is_model(spec.arch):
            raise recipe_error(
                composed,
                (role, "arch"),
                f"unknown model {spec.arch!r}.{did_you_mean(spec.arch, list_models())} "
                f"Zoo models: {', '.join(list_models())}; any timm model as 'timm/<name>'",
            )
    if recipe.data.dataset not in list_datasets():
        raise recipe_error(
            composed,
            ("data", "dataset"),
            f"unknown dataset {recipe.data.dataset!r}.{did_you_mean(recipe.data.dataset, list_datasets())} "
            f"Available: {', '.join(list_datasets())}",
        )
    _check_options(recipe, composed)
    if recipe.data.views is not None:
        try:
            build_views(recipe.data.views, image_size=32, seed=0)  # names, options and their values
        except RecipeError as error:
            raise RecipeError(f"{composed.source_of(('data', 'views'))}: {error}") from None
        if recipe.teacher is None and recipe.data.views.shared is None:
            raise recipe_error(composed, ("data", "views"), "views give the teacher and the student different inputs, "
                        "but the recipe has no teacher; remove data.views or add a teacher")
    if recipe.teacher is None:
        for spec in recipe.losses.values():
            if LOSSES.get(spec.type).requires_teacher:
                raise recipe_error(
                    composed,
                    ("losses", spec.name),
                    f"loss {spec.type!r} needs a teacher, but the recipe has no 'teacher:' section; "
                    f"add one (teacher.name, or teacher.arch and teacher.checkpoint) or remove this term",
                )
    elif recipe.teacher.checkpoint is None and recipe.teacher.name is None:
        raise recipe_error(
            composed,
            ("teacher", "checkpoint"),
            "a teacher needs its trained weights: name a manifest teacher (teacher.name=resnet32x4, "
            "see 'distill teachers list') or set teacher.checkpoint=PATH "
            "(a RepDistiller/mdistiller ckpt_epoch_240.pth or a distill run's checkpoint)",
        )


def _check_options(recipe: Recipe, composed: ComposedRecipe) -> None:
    """Check the models' and the dataset's options against their builders' signatures, before any work starts."""
    for role, spec in (("student", recipe.student), ("teacher", recipe.teacher)):
        if spec is None:
            continue
        try:
            check_model_options(spec.arch, spec.options)
        except ModelOptionError as error:
            raise RecipeError(f"{composed.source_of((role, *error.key.split('.')))}: {error.under(role)}") from None
    try:
        check_dataset_options(recipe.data.dataset, recipe.data.options)
    except ValidationIssue as issue:
        raise recipe_error(composed, issue.path, issue.message) from None


def _resolve_teacher_arch(teacher: TeacherSpec, composed: ComposedRecipe) -> None:
    """Fill ``teacher.arch`` from the manifest when the recipe names the teacher.

    The checkpoint is resolved later, when a run starts (:func:`resolve_teacher_checkpoint`):
    a recipe stays loadable (``distill recipes``, validation) before its teacher is fetched.
    """
    if teacher.name is None:
        if teacher.arch is None:
            raise recipe_error(
                composed,
                ("teacher",),
                "a teacher needs 'name' (a manifest teacher, see 'distill teachers list') or 'arch' and 'checkpoint'",
            )
        return
    try:
        entry = load_manifest(teacher.manifest).get(teacher.name)
    except DistillError as error:
        raise recipe_error(composed, ("teacher", "name"), str(error)) from None
    if teacher.arch is None:
        teacher.arch = entry.arch
    elif teacher.arch != entry.arch:
        raise recipe_error(
            composed,
            ("teacher", "arch"),
            f"{teacher.arch!r} contradicts the manifest, where teacher {teacher.name!r} is a {entry.arch}; "
            f"drop teacher.arch to use the manifest's teacher, or set teacher.name=null and give "
            f"teacher.checkpoint to use another network",
        )


def _load_plugins(composed: ComposedRecipe) -> list[str]:
    """Import the recipe's plugins before anything is looked up in a registry.

    File entries are rewritten as absolute paths, so the resolved recipe written
    into a run directory still finds them.
    """
    entries = composed.data.get("plugins")
    if entries is None:
        return []
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise recipe_error(composed, ("plugins",), f"expected a list of Python files or module names, got {entries!r}")
    resolved = []
    for index, entry in enumerate(entries):
        source = composed.source_of(("plugins", str(index)))
        resolved.append(resolve_plugin(entry, source))
        load_plugin(resolved[-1], f"{source}: plugins[{index}]")
    composed.data["plugins"] = resolved
    return resolved


def validate_composed(composed: ComposedRecipe, default_name: str = "run") -> Recipe:
    """Check a composed mapping against the schema (first: it needs no torch), then every registry."""
    recipe = parse_composed(composed, default_name)
    recipe.plugins = _load_plugins(composed)
    recipe.losses = _parse_losses(composed)
    _cross_check(recipe, composed)
    return recipe


def load_recipe(path: str | Path, overrides: Iterable[str] = ()) -> Recipe:
    """Read, compose, override and validate a recipe file."""
    return validate_composed(compose_recipe(path, overrides), default_name=recipe_name_from_path(Path(path)))


def recipe_from_dict(data: dict[str, Any], source: str = "<recipe>", overrides: Iterable[str] = ()) -> Recipe:
    """Validate a recipe given as a Python mapping (used by the quickstart and tests)."""
    composed = ComposedRecipe(data={}, root_file=source)
    deep_merge(composed.data, data, source, composed.sources)
    apply_overrides(composed, list(overrides))
    return validate_composed(composed)


