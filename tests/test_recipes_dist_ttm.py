"""The shipped DIST, WTTM and WTTM+CRD recipes: their weights and settings, and that WTTM's say they are the published example."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.benchmark.tasks import TASKS
from distill.recipe.load import load_recipe

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes" / "cifar100"


def terms(method: str, task: str) -> dict:
    recipe = load_recipe(RECIPES / method / f"{task}.yaml")
    return {name: (spec.type, spec.weight, dict(spec.params)) for name, spec in recipe.losses.items()}


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_every_task_carries_the_settings(task):
    assert terms("dist", task.name) == {
        "ce": ("ce", 1.0, {}),
        "dist": ("dist", 2.0, {"tau": 4.0, "beta": 1.0, "gamma": 1.0}),
    }
    assert terms("wttm", task.name) == {"ce": ("ce", 1.0, {}), "wttm": ("wttm", 4.0, {"gamma": 0.2})}
    combined = terms("wttm_crd", task.name)
    assert combined["ce"][:2] == ("ce", 1.0) and combined["wttm"] == ("wttm", 4.0, {"gamma": 0.2})
    assert combined["crd"][:2] == ("crd", 0.8) and combined["crd"][2]["num_negatives"] == 16384
    for method in ("dist", "wttm", "wttm_crd"):
        recipe = load_recipe(RECIPES / method / f"{task.name}.yaml")
        assert recipe.optimizer.lr == task.lr and recipe.schedule.epochs == 240
        assert (recipe.teacher.name, recipe.student.arch) == (task.teacher, task.student)


@pytest.mark.parametrize("method", ["wttm", "wttm_crd"])
def test_wttm_recipes_and_fragments_say_their_settings_are_the_published_example(method):
    for task in TASKS:
        description = load_recipe(RECIPES / method / f"{task.name}.yaml").description
        assert "not the per-task settings" in description and "Appendix A.4, unread" in description
    fragment = (RECIPES / "_base_" / ("wttm.yaml" if method == "wttm" else "plus_wttm.yaml")).read_text()
    assert "NOT the per-task settings" in fragment and "Appendix A.4" in fragment
