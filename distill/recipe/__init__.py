"""Recipes: YAML files that wire a teacher, a student, data, losses and a schedule."""

from distill.recipe.load import load_recipe, recipe_from_dict, recipe_to_dict, recipe_to_yaml
from distill.recipe.schema import DataSpec, LossSpec, ModelSpec, OptimizerSpec, Recipe, ScheduleSpec, TeacherSpec

__all__ = [
    "DataSpec",
    "LossSpec",
    "ModelSpec",
    "OptimizerSpec",
    "Recipe",
    "ScheduleSpec",
    "TeacherSpec",
    "load_recipe",
    "recipe_from_dict",
    "recipe_to_dict",
    "recipe_to_yaml",
]
