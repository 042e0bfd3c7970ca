"""Every shipped recipe loads, validates, builds its models and losses for its pair, and takes one step.

The teachers come through a copy of the real manifest whose files are random-weight
checkpoints (the ``random_teachers`` fixture), so ``teacher: {name: ...}`` is resolved
the way a user's run resolves it. The data is the small fake CIFAR-100; the batch is 4.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distill.benchmark.tasks import TASKS, TEACHERS
from distill.cli.recipes import list_recipes
from distill.data.views import SharedViews, views_per_step
from distill.engine.trainer import Trainer
from distill.recipe.load import load_recipe
from distill.recipe.manifest import MANIFEST_ENV, load_manifest
from distill.recipe.resolve import resolve_recipe

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
ALL_RECIPES = [path.resolve().relative_to(RECIPES) for path, _ in list_recipes(RECIPES)]
BATCH = 4


def test_every_method_has_its_13_tasks_and_the_teachers_their_6_recipes():
    task_names = {task.name for task in TASKS}
    by_method: dict[str, set[str]] = {}
    for path in ALL_RECIPES:
        by_method.setdefault(path.parts[-2], set()).add(path.stem)
    assert by_method.pop("teachers") == set(TEACHERS)
    not_applicable = {task.name for task in TASKS if not task.same_family} | {"wrn_40_2-wrn_40_1"}
    for method, tasks in by_method.items():
        expected = task_names - not_applicable if method == "fsp" else task_names
        assert tasks == expected, method


@pytest.mark.slow  # ~350 recipes: about half of the inner loop's time; the full suite runs them
@pytest.mark.parametrize("relative", ALL_RECIPES, ids=lambda p: str(p.with_suffix("")))
def test_recipe_builds_and_takes_one_step(relative, random_teachers, fake_cifar100, tmp_path, monkeypatch):
    monkeypatch.setenv(MANIFEST_ENV, str(random_teachers))
    recipe = load_recipe(
        RECIPES / relative,
        [
            f"data.root={fake_cifar100}",
            "data.verify=false",
            "data.download=false",
            f"data.batch_size={BATCH}",
            "data.num_workers=0",
            f"output_dir={tmp_path}",
        ],
    )
    if relative.parts[-2] != "teachers":
        task = next(task for task in TASKS if task.name == relative.stem)
        assert (recipe.teacher and recipe.teacher.arch, recipe.student.arch) in {
            (task.teacher, task.student),
            (None, task.student),  # the vanilla baseline
        }
    trainer = Trainer(resolve_recipe(recipe), tmp_path / "run", tensorboard=False, echo=lambda line: None)
    if recipe.teacher is not None:
        expected = load_manifest(random_teachers).locate(recipe.teacher.name)
        assert Path(trainer.recipe.teacher.checkpoint) == expected  # resolved through the manifest
    student = trainer.unwrapped.student
    before = [p.detach().clone() for p in student.parameters()]
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(BATCH, 3, 32, 32, generator=generator)
    views = views_per_step(recipe.data.views)
    if views > 1:  # a batch as the loader makes it: one tensor per shared view
        inputs = SharedViews((inputs, *(torch.randn(BATCH, 3, 32, 32, generator=generator) for _ in range(views - 1))))
    labels = torch.randint(0, 100, (BATCH,), generator=generator)
    indices = torch.randperm(trainer.built.train_size, generator=generator)[:BATCH]
    terms, total = trainer.train_step(inputs, labels, indices)
    assert set(terms) == set(recipe.losses)
    assert torch.isfinite(total) and all(torch.isfinite(value) for value in terms.values())
    moved = any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    assert moved, "the student did not change after one optimisation step"
    if trainer.built.teacher is not None:
        assert all(p.grad is None and not p.requires_grad for p in trainer.built.teacher.module.parameters())
