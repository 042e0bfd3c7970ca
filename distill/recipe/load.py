"""From YAML files (plus overrides) to a validated :class:`Recipe`, and back.

Everything a recipe names (models, dataset, loss types and their parameters) is
checked here, before any work starts, so a typo costs a second, not an epoch.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable

from distill.errors import DistillError, RecipeError, UnknownNameError
from distill.recipe.compose import ComposedRecipe, KeyPath, apply_overrides, compose_file, format_key
from distill.recipe.schema import LossSpec, Recipe, TeacherSpec
from distill.recipe.validate import ValidationIssue, build_dataclass, check_value
from distill.recipe.yaml_io import dump_yaml

LOSS_RESERVED_KEYS = ("type", "weight")


def _fail(composed: ComposedRecipe, path: KeyPath, message: str) -> RecipeError:
    return RecipeError(f"{composed.source_of(path)}: {format_key(path)}: {message}")


def recipe_name_from_path(path: Path) -> str:
    """``recipes/cifar100/kd/a-b.yaml`` → ``cifar100/kd/a-b``; elsewhere the file stem."""
    parts = path.resolve().with_suffix("").parts
    if "recipes" in parts:
        index = len(parts) - 1 - parts[::-1].index("recipes")
        if index < len(parts) - 1:
            return "/".join(parts[index + 1 :])
    return path.stem


def _parse_losses(composed: ComposedRecipe) -> dict[str, LossSpec]:
    from distill.losses import LOSSES, loss_parameters

    raw = composed.data.get("losses")
    if raw is None:
        raise _fail(composed, ("losses",), "required key is missing: name at least one loss term, e.g. 'ce: {weight: 1.0}'")
    if not isinstance(raw, dict):
        raise _fail(composed, ("losses",), f"expected a mapping of term name → parameters, got {raw!r}")
    specs: dict[str, LossSpec] = {}
    for name, entry in raw.items():
        path: KeyPath = ("losses", str(name))
        if entry is None:
            continue  # `losses.NAME=null` removes an inherited term
        if not isinstance(entry, dict):
            raise _fail(composed, path, f"expected a mapping with 'weight' and the loss's parameters, got {entry!r}")
        loss_type = entry.get("type", name)
        if not isinstance(loss_type, str):
            raise _fail(composed, (*path, "type"), f"expected a loss name (str), got {loss_type!r}")
        try:
            loss_cls = LOSSES.get(loss_type)
        except UnknownNameError as error:
            key = (*path, "type") if "type" in entry else path
            raise _fail(composed, key, str(error)) from None
        if "weight" not in entry:
            raise _fail(composed, (*path, "weight"), "required key is missing (expected float): the term's weight in the total loss")
        try:
            weight = check_value(entry["weight"], float, (*path, "weight"))
            accepted = loss_parameters(loss_cls)
            params: dict[str, Any] = {}
            for key, value in entry.items():
                if key in LOSS_RESERVED_KEYS:
                    continue
                if key not in accepted:
                    from distill.registry import did_you_mean

                    valid = [*LOSS_RESERVED_KEYS, *accepted]
                    raise ValidationIssue(
                        (*path, key),
                        f"unknown parameter of loss {loss_type!r}.{did_you_mean(key, valid)} "
                        f"Rename it to one of the valid keys or remove it: {', '.join(valid)}",
                    )
                params[key] = check_value(value, accepted[key].annotation, (*path, key))
            for key, parameter in accepted.items():
                if parameter.required and key not in params:
                    raise ValidationIssue((*path, key), f"required parameter of loss {loss_type!r} is missing")
        except ValidationIssue as issue:
            raise _fail(composed, issue.path, issue.message) from None
        specs[str(name)] = LossSpec(name=str(name), type=loss_type, weight=weight, params=params)
    if not specs:
        raise _fail(composed, ("losses",), "no loss term left: name at least one, e.g. 'ce: {weight: 1.0}'")
    return specs


def _cross_check(recipe: Recipe, composed: ComposedRecipe) -> None:
    from distill.data import list_datasets
    from distill.losses import LOSSES
    from distill.models import is_model, list_models
    from distill.registry import did_you_mean

    if recipe.teacher is not None:
        _resolve_teacher_arch(recipe.teacher, composed)
    for role, spec in (("student", recipe.student), ("teacher", recipe.teacher)):
        if spec is not None and not is_model(spec.arch):
            raise _fail(
                composed,
                (role, "arch"),
                f"unknown model {spec.arch!r}.{did_you_mean(spec.arch, list_models())} "
                f"Zoo models: {', '.join(list_models())}; any timm model as 'timm/<name>'",
            )
    if recipe.data.dataset not in list_datasets():
        raise _fail(
            composed,
            ("data", "dataset"),
            f"unknown dataset {recipe.data.dataset!r}.{did_you_mean(recipe.data.dataset, list_datasets())} "
            f"Available: {', '.join(list_datasets())}",
        )
    if recipe.data.views is not None:
        from distill.data.views import build_views

        try:
            build_views(recipe.data.views, image_size=32, seed=0)  # names, options and their values
        except RecipeError as error:
            raise RecipeError(f"{composed.source_of(('data', 'views'))}: {error}") from None
        if recipe.teacher is None:
            raise _fail(composed, ("data", "views"), "views give the teacher and the student different inputs, "
                        "but the recipe has no teacher; remove data.views or add a teacher")
    if recipe.teacher is None:
        for spec in recipe.losses.values():
            if LOSSES.get(spec.type).requires_teacher:
                raise _fail(
                    composed,
                    ("losses", spec.name),
                    f"loss {spec.type!r} needs a teacher, but the recipe has no 'teacher:' section; "
                    f"add one (teacher.name, or teacher.arch and teacher.checkpoint) or remove this term",
                )
    elif recipe.teacher.checkpoint is None and recipe.teacher.name is None:
        raise _fail(
            composed,
            ("teacher", "checkpoint"),
            "a teacher needs its trained weights: name a manifest teacher (teacher.name=resnet32x4, "
            "see 'distill teachers list') or set teacher.checkpoint=PATH "
            "(a RepDistiller/mdistiller ckpt_epoch_240.pth or a distill run's checkpoint)",
        )
    positive = {
        ("data", "batch_size"): recipe.data.batch_size,
        ("data", "test_batch_size"): recipe.data.test_batch_size,
        ("schedule", "epochs"): recipe.schedule.epochs,
        ("log_every",): recipe.log_every,
    }
    for path, value in positive.items():
        if value <= 0:
            raise _fail(composed, path, f"must be positive, got {value}")
    non_negative = {
        ("data", "num_workers"): recipe.data.num_workers,
        ("checkpoint_every_steps",): recipe.checkpoint_every_steps,
        ("skip_nonfinite",): recipe.skip_nonfinite,
    }
    for path, value in non_negative.items():
        if value < 0:
            raise _fail(composed, path, f"must be 0 or more, got {value}")
    if not 0 <= recipe.seed < 2**32:
        raise _fail(composed, ("seed",), f"must be an integer from 0 to 2**32 - 1 (NumPy's seed range), got {recipe.seed}")
    if recipe.optimizer.lr <= 0:
        raise _fail(composed, ("optimizer", "lr"), f"must be positive, got {recipe.optimizer.lr}")
    if recipe.schedule.milestones != sorted(recipe.schedule.milestones):
        raise _fail(composed, ("schedule", "milestones"), f"must be increasing, got {recipe.schedule.milestones}")


def _resolve_teacher_arch(teacher: TeacherSpec, composed: ComposedRecipe) -> None:
    """Fill ``teacher.arch`` from the manifest when the recipe names the teacher.

    The checkpoint is resolved later, when a run starts (:func:`resolve_teacher_checkpoint`):
    a recipe stays loadable (``distill recipes``, validation) before its teacher is fetched.
    """
    if teacher.name is None:
        if teacher.arch is None:
            raise _fail(
                composed,
                ("teacher",),
                "a teacher needs 'name' (a manifest teacher, see 'distill teachers list') or 'arch' and 'checkpoint'",
            )
        return
    from distill.teachers import load_manifest

    try:
        entry = load_manifest(teacher.manifest).get(teacher.name)
    except DistillError as error:
        raise _fail(composed, ("teacher", "name"), str(error)) from None
    if teacher.arch is None:
        teacher.arch = entry.arch
    elif teacher.arch != entry.arch:
        raise _fail(
            composed,
            ("teacher", "arch"),
            f"{teacher.arch!r} contradicts the manifest, where teacher {teacher.name!r} is a {entry.arch}; "
            f"drop teacher.arch to use the manifest's teacher, or set teacher.name=null and give "
            f"teacher.checkpoint to use another network",
        )


def resolve_teacher_checkpoint(teacher: TeacherSpec) -> str:
    """The checkpoint file a teacher spec points to: its own ``checkpoint``, else the manifest's file."""
    if teacher.checkpoint is not None:
        return teacher.checkpoint
    if teacher.name is None:
        raise RecipeError("teacher.checkpoint is not set and the teacher has no manifest name")
    from distill.teachers import load_manifest

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


def _load_plugins(composed: ComposedRecipe) -> None:
    """Import the recipe's plugins before anything is looked up in a registry.

    File entries are rewritten as absolute paths, so the resolved recipe written
    into a run directory still finds them.
    """
    from distill.recipe.plugins import load_plugin, resolve_plugin

    entries = composed.data.get("plugins")
    if entries is None:
        return
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise _fail(composed, ("plugins",), f"expected a list of Python files or module names, got {entries!r}")
    resolved = []
    for index, entry in enumerate(entries):
        source = composed.source_of(("plugins", str(index)))
        resolved.append(resolve_plugin(entry, source))
        load_plugin(resolved[-1], f"{source}: plugins[{index}]")
    composed.data["plugins"] = resolved


def validate_composed(composed: ComposedRecipe, default_name: str = "run") -> Recipe:
    """Check a composed mapping against the schema and every registry."""
    _load_plugins(composed)
    data = dict(composed.data)
    data["losses"] = {}
    data.setdefault("name", default_name)
    try:
        recipe = build_dataclass(Recipe, data, ())  # first: the schema needs no torch, the registries do
    except ValidationIssue as issue:
        raise _fail(composed, issue.path, issue.message) from None
    recipe.losses = _parse_losses(composed)
    _cross_check(recipe, composed)
    return recipe


def load_recipe(path: str | Path, overrides: Iterable[str] = ()) -> Recipe:
    """Read, compose, override and validate a recipe file."""
    return load_recipe_with_sources(path, overrides)[0]


def load_recipe_with_sources(path: str | Path, overrides: Iterable[str] = ()) -> tuple[Recipe, ComposedRecipe]:
    """:func:`load_recipe`, plus the composed mapping that knows which file (or override) set each key."""
    path = Path(path)
    composed = apply_overrides(compose_file(path), list(overrides))
    return validate_composed(composed, default_name=recipe_name_from_path(path)), composed


def flatten_recipe(data: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves by dotted key; an empty mapping has no leaves (``options: {}`` equals an unset ``options``)."""
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(flatten_recipe(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): data}


def recipe_from_dict(data: dict[str, Any], source: str = "<recipe>", overrides: Iterable[str] = ()) -> Recipe:
    """Validate a recipe given as a Python mapping (used by the quickstart and tests)."""
    composed = ComposedRecipe(data={}, root_file=source)
    from distill.recipe.compose import deep_merge

    deep_merge(composed.data, data, source, composed.sources)
    apply_overrides(composed, list(overrides))
    return validate_composed(composed)


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The fully resolved recipe as plain data, in the YAML layout (losses flattened)."""
    data = dataclasses.asdict(recipe)
    data["losses"] = {
        spec.name: {
            **({"type": spec.type} if spec.type != spec.name else {}),
            "weight": spec.weight,
            **spec.params,
        }
        for spec in recipe.losses.values()
    }
    ordered = {key: data.pop(key) for key in ("name", "description")}
    ordered.update(data)
    return ordered


def recipe_to_yaml(recipe: Recipe) -> str:
    return dump_yaml(recipe_to_dict(recipe))
