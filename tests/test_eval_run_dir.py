"""``distill eval`` rebuilds a run's network from the run's own recipe: architecture, options, data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from distill.cli.main import main
from distill.engine.metrics import read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REPO = Path(__file__).resolve().parent.parent
CE_RECIPE = REPO / "recipes/cifar100/teachers/resnet56.yaml"
VIT = "timm/vit_tiny_patch16_224"
# A tiny ViT for 32 px images: without img_size it is built for 224 px and cannot run (or load) here.
VIT_OPTIONS = {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2}


@pytest.fixture(scope="module")
def vit_run(fake_cifar100, tmp_path_factory) -> Path:
    """A real one-epoch run of a timm ViT with options, on the fake CIFAR-100."""
    run_dir = tmp_path_factory.mktemp("runs") / "vit"
    overrides = [
        f"data.root={fake_cifar100}", "data.verify=false", "data.download=false", "data.num_workers=0",
        "data.test_batch_size=32", "schedule.epochs=1", "deterministic=true", f"student.arch={VIT}",
        *(f"student.options.{key}={value}" for key, value in VIT_OPTIONS.items()),
    ]
    assert main(["train", str(CE_RECIPE), *overrides, "--run-dir", str(run_dir)]) == 0
    return run_dir


def eval_json(capsys, *args: str) -> dict:
    assert main(["eval", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def assert_reproduces_the_run(result: dict, run_dir: Path) -> None:
    last = read_metrics(run_dir)[-1]
    assert result["top1"] == pytest.approx(last["test/top1"]) and result["top5"] == pytest.approx(last["test/top5"])
    assert result["test_size"] == 100 and result["arch"] == VIT and result["options"] == VIT_OPTIONS


def test_eval_of_a_run_dir_uses_the_runs_options(vit_run, capsys):
    result = eval_json(capsys, str(vit_run))
    assert_reproduces_the_run(result, vit_run)
    assert main(["eval", str(vit_run)]) == 0
    assert f"({VIT} with options {{img_size: 32, patch_size: 8" in capsys.readouterr().out


def test_a_run_checkpoint_alone_carries_its_recipe(vit_run, tmp_path, capsys):
    """Outside its run directory, the checkpoint's embedded recipe still rebuilds the network."""
    alone = tmp_path / "elsewhere" / "last.pt"
    alone.parent.mkdir()
    shutil.copy(vit_run / "checkpoints/last.pt", alone)
    assert_reproduces_the_run(eval_json(capsys, str(alone)), vit_run)


def make_hand_built_run(vit_run: Path, run_dir: Path, edit_recipe=None) -> Path:
    """recipe.yaml (edited) + checkpoints/last.pt holding only the student's state_dict (no embedded recipe)."""
    recipe = yaml.safe_load((vit_run / "recipe.yaml").read_text())
    if edit_recipe is not None:
        edit_recipe(recipe)
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    payload = torch.load(vit_run / "checkpoints/last.pt", map_location="cpu", weights_only=True)
    torch.save(payload["model"], run_dir / "checkpoints/last.pt")
    return run_dir


def test_a_hand_built_run_dir_is_evaluated_with_its_recipe_yaml(vit_run, fake_cifar100, tmp_path, capsys):
    """A bare state_dict in a run directory: arch and options come from recipe.yaml; --data-root overrides its root."""

    def move_data(recipe: dict) -> None:
        recipe["data"]["root"] = str(tmp_path / "moved")  # the data is no longer where the run found it

    run_dir = make_hand_built_run(vit_run, tmp_path / "run", move_data)
    result = eval_json(capsys, str(run_dir), "--data-root", str(fake_cifar100))
    assert_reproduces_the_run(result, vit_run)
    result = eval_json(capsys, str(run_dir / "checkpoints/last.pt"), "--data-root", str(fake_cifar100))
    assert_reproduces_the_run(result, vit_run)


def test_options_that_do_not_fit_name_the_recipe_and_its_key(vit_run, fake_cifar100, tmp_path, capsys):
    def drop_img_size(recipe: dict) -> None:
        del recipe["student"]["options"]["img_size"]
        recipe["data"]["root"] = str(fake_cifar100)

    run_dir = make_hand_built_run(vit_run, tmp_path / "run", drop_img_size)
    assert main(["eval", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert f"{run_dir / 'recipe.yaml'}: student.options.img_size: {VIT} with options" in err
    assert "built for 224×224 images" in err and "Traceback" not in err


def test_another_arch_is_built_without_the_runs_options(vit_run, capsys):
    """--arch overrides the recipe's architecture; the run's options belong to its own and are not applied."""
    assert main(["eval", str(vit_run), "--arch", "resnet8"]) == 2
    err = capsys.readouterr().err
    # Not "resnet8 has no option 'img_size'": the run's options were left out, and the weights are what do not fit.
    assert "does not fit resnet8: missing keys" in err and "option" not in err
