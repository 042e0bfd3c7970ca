"""A recipe as plain data: the YAML layout a run directory records, and its leaves by dotted key."""

from __future__ import annotations

import dataclasses
from typing import Any

from distill.recipe.schema import Recipe
from distill.recipe.yaml_io import dump_yaml


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


def flatten_recipe(data: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves by dotted key; an empty mapping has no leaves (``options: {}`` equals an unset ``options``)."""
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(flatten_recipe(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): data}
