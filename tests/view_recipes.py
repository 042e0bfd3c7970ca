"""Loading a recipe with view overrides: the CRD recipe on the fake data and tiny teacher, and refusals by message."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from distill.errors import RecipeError
from distill.recipe.load import load_recipe

REPO = Path(__file__).resolve().parent.parent
CRD_RECIPE = REPO / "recipes/cifar100/crd/resnet32x4-resnet8x4.yaml"


def teacher_overrides(data_root: Path, teacher: Path) -> list[str]:
    """The CRD recipe on the fake CIFAR-100 with the tiny resnet14 teacher."""
    return [f"data.root={data_root}", "teacher.name=null", "teacher.arch=resnet14", f"teacher.checkpoint={teacher}"]


def assert_each_refused(base: list[str], cases: dict[str, str]) -> None:
    """Each override added to ``base`` makes loading the CRD recipe fail with a RecipeError containing its message."""
    for override, message in cases.items():
        with pytest.raises(RecipeError, match=re.escape(message)):
            load_recipe(CRD_RECIPE, [*base, override])
