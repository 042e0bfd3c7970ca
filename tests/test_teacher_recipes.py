"""Recipes that name their teacher (``teacher: {name: ...}``) and the six teacher-training recipes.

The name is resolved through the teacher manifest: the architecture when the recipe
is loaded, the checkpoint when a run starts (so a recipe stays loadable before its
teacher is fetched), and the run directory's recipe.yaml records the file used.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from distill.benchmark.tasks import TEACHERS
from distill.cli.main import main
from distill.engine.trainer import Trainer
from distill.errors import DistillError, RecipeError
from distill.models import create_model
from distill.recipe.load import load_recipe
from distill.recipe.manifest import MANIFEST_ENV, load_manifest
from distill.recipe.resolve import resolve_recipe
from distill.recipe.yaml_io import read_yaml_file

REPO = Path(__file__).resolve().parent.parent
KD_RECIPE = REPO / "recipes/cifar100/kd/resnet56-resnet20.yaml"


def data_overrides(root: Path) -> list[str]:
    return [f"data.root={root}", "data.verify=false", "data.download=false", "data.num_workers=0", "data.batch_size=64"]


@pytest.fixture
def empty_manifest(tmp_path, monkeypatch) -> Path:
    """A copy of the shipped manifest with none of its files present."""
    path = tmp_path / "teachers" / "cifar100.yaml"
    path.parent.mkdir()
    shutil.copy(REPO / "teachers" / "cifar100.yaml", path)
    monkeypatch.setenv(MANIFEST_ENV, str(path))
    return path


def test_the_architecture_comes_from_the_manifest(empty_manifest):
    recipe = load_recipe(KD_RECIPE)
    assert recipe.teacher.name == "resnet56" and recipe.teacher.arch == "resnet56"
    assert recipe.teacher.checkpoint is None  # resolved when a run starts


def test_an_unknown_teacher_name_suggests_the_closest(empty_manifest):
    with pytest.raises(RecipeError, match="teacher.name") as error:
        load_recipe(KD_RECIPE, ["teacher.name=resnet65"])
    assert "Did you mean 'resnet56'" in str(error.value)


def test_an_architecture_that_contradicts_the_name_is_refused(empty_manifest):
    with pytest.raises(RecipeError, match="teacher.arch") as error:
        load_recipe(KD_RECIPE, ["teacher.arch=resnet110"])
    assert "teacher.name=null" in str(error.value)
    assert load_recipe(KD_RECIPE, ["teacher.name=null", "teacher.arch=resnet110", "teacher.checkpoint=t.pth"]).teacher.arch == "resnet110"


def test_a_teacher_without_name_arch_or_checkpoint_is_refused(empty_manifest):
    with pytest.raises(RecipeError, match="teacher"):
        load_recipe(KD_RECIPE, ["teacher.name=null"])


def test_a_missing_manifest_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(MANIFEST_ENV, str(tmp_path / "nowhere.yaml"))
    with pytest.raises(RecipeError) as error:
        load_recipe(KD_RECIPE)
    assert "nowhere.yaml" in str(error.value) and MANIFEST_ENV in str(error.value)


@pytest.mark.e2e
def test_a_missing_teacher_file_names_the_fetch_and_train_commands(empty_manifest, fake_cifar100, tmp_path, capsys):
    code = main(["train", str(KD_RECIPE), *data_overrides(fake_cifar100), f"output_dir={tmp_path / 'runs'}"])
    message = capsys.readouterr().err
    assert code == 2
    assert "distill teachers fetch resnet56" in message
    assert "recipes/cifar100/teachers/resnet56.yaml" in message
    assert "resnet56_vanilla/ckpt_epoch_240.pth" in message
    assert not (tmp_path / "runs").exists()  # nothing written that looks like a run


@pytest.mark.slow
def test_a_run_records_the_teacher_file_it_used(random_teachers, fake_cifar100, tmp_path, monkeypatch):
    monkeypatch.setenv(MANIFEST_ENV, str(random_teachers))
    recipe = load_recipe(KD_RECIPE, [*data_overrides(fake_cifar100), "schedule.epochs=1"])
    trainer = Trainer(resolve_recipe(recipe), tmp_path / "run", tensorboard=False, echo=lambda line: None)
    trainer.fit()
    stored = read_yaml_file(tmp_path / "run" / "recipe.yaml")["teacher"]
    assert stored["name"] == "resnet56"
    assert Path(stored["checkpoint"]) == random_teachers.parent / "resnet56_vanilla" / "ckpt_epoch_240.pth"


@pytest.mark.parametrize("arch", TEACHERS)
def test_teacher_recipes_follow_the_reference_schedule_and_land_where_the_manifest_looks(arch):
    recipe = load_recipe(REPO / "recipes" / "cifar100" / "teachers" / f"{arch}.yaml")
    manifest = load_manifest(REPO / "teachers" / "cifar100.yaml")
    entry = manifest.get(arch)
    assert recipe.teacher is None and recipe.student.arch == entry.arch == arch
    assert [spec.type for spec in recipe.losses.values()] == ["ce"]
    assert (recipe.schedule.epochs, recipe.schedule.milestones, recipe.schedule.gamma) == (240, [150, 180, 210], 0.1)
    assert (recipe.optimizer.name, recipe.optimizer.lr, recipe.optimizer.momentum) == ("sgd", 0.05, 0.9)
    assert recipe.optimizer.weight_decay == pytest.approx(5e-4) and recipe.data.batch_size == 64
    # Run from the repository root, the runs go to the folder the manifest searches.
    assert (REPO / recipe.output_dir).resolve() == manifest.trained_runs_dir(arch).resolve()
    assert (REPO / entry.recipe).resolve() == (REPO / "recipes" / "cifar100" / "teachers" / f"{arch}.yaml").resolve()


@pytest.mark.slow
@pytest.mark.e2e
def test_a_trained_teacher_is_found_by_the_next_distillation(empty_manifest, fake_cifar100, monkeypatch, tmp_path):
    """Train the resnet56 teacher recipe (1 epoch), then a KD recipe naming resnet56 uses that run."""
    manifest = load_manifest(empty_manifest)
    teacher_runs = manifest.trained_runs_dir("resnet56")
    monkeypatch.chdir(tmp_path)
    teacher_recipe = REPO / "recipes" / "cifar100" / "teachers" / "resnet56.yaml"
    common = [*data_overrides(fake_cifar100), "schedule.epochs=1", "--no-tensorboard"]
    assert main(["train", str(teacher_recipe), f"output_dir={teacher_runs}", *common]) == 0
    located = manifest.locate("resnet56")
    assert located is not None and located.parent.parent.parent == teacher_runs
    assert main(["train", str(KD_RECIPE), *common, "--run-dir", str(tmp_path / "kd")]) == 0
    stored = read_yaml_file(tmp_path / "kd" / "recipe.yaml")["teacher"]
    assert Path(stored["checkpoint"]) == located
    trained = torch.load(located, map_location="cpu", weights_only=True)["model"]
    assert set(trained) == set(create_model("resnet56").state_dict())


def test_an_explicit_checkpoint_wins_over_the_manifest(empty_manifest, tiny_teacher, fake_cifar100, tmp_path):
    recipe = load_recipe(KD_RECIPE, [*data_overrides(fake_cifar100), "teacher.name=null", "teacher.arch=resnet14",
                                     f"teacher.checkpoint={tiny_teacher}"])
    resolved = resolve_recipe(recipe)
    Trainer(resolved, tmp_path / "run", tensorboard=False, echo=lambda line: None)
    assert resolved.recipe.teacher.checkpoint == str(tiny_teacher)
    with pytest.raises(DistillError, match="does not exist"):
        resolve_recipe(load_recipe(KD_RECIPE, ["teacher.checkpoint=/nonexistent.pth"]))
