"""Custom losses from user code: the tutorial's exact code and recipe, and the errors a plugin author meets."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from distill.cli.main import main
from distill.engine.metrics import read_metrics
from distill.errors import DistillError
from distill.recipe.load import load_recipe

REPO = Path(__file__).resolve().parent.parent
TUTORIAL = REPO / "docs" / "custom-loss.md"


def tutorial_files() -> dict[str, str]:
    """The fenced code blocks of the tutorial that start with '# file: NAME'."""
    blocks = re.findall(r"```(?:python|yaml)\n(.*?)```", TUTORIAL.read_text(encoding="utf-8"), flags=re.S)
    files = {}
    for block in blocks:
        first, _, rest = block.partition("\n")
        match = re.fullmatch(r"# file: (\S+)", first.strip())
        if match:
            files[match.group(1)] = block
    return files


def small_overrides(data_root: Path, teacher: Path) -> list[str]:
    return [
        f"data.root={data_root}", "data.verify=false", "data.download=false", "data.num_workers=0",
        "schedule.epochs=1", "student.arch=resnet8", "teacher.name=null", "teacher.arch=resnet14", f"teacher.checkpoint={teacher}",
    ]


@pytest.mark.slow
@pytest.mark.e2e
def test_the_tutorial_trains_as_written(fake_cifar100, tiny_teacher, tmp_path):
    files = tutorial_files()
    assert set(files) == {"my_losses.py", "cosine.yaml"}
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    (tmp_path / "recipes").symlink_to(REPO / "recipes")  # the recipe's _base_ is relative to a checkout
    run_dir = tmp_path / "run"
    assert main(["train", str(tmp_path / "cosine.yaml"), *small_overrides(fake_cifar100, tiny_teacher), "--run-dir", str(run_dir)]) == 0
    row = read_metrics(run_dir)[-1]
    assert {"train/loss/ce", "train/loss/kd", "train/loss/cosine"} <= set(row)
    assert 0 <= row["train/loss/cosine"] <= 2
    resolved = load_recipe(run_dir / "recipe.yaml")
    assert resolved.plugins == [str((tmp_path / "my_losses.py").resolve())]
    assert resolved.losses["cosine"].params == {"hidden": 256}


def plugin_recipe(tmp_path: Path, plugin_code: str, loss_type: str, name: str = "plugin.py") -> Path:
    (tmp_path / name).write_text(textwrap.dedent(plugin_code), encoding="utf-8")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        textwrap.dedent(
            f"""
            plugins: [{name}]
            student: {{arch: resnet8}}
            losses:
              ce: {{weight: 1.0}}
              mine: {{type: {loss_type}, weight: 1.0}}
            """
        ),
        encoding="utf-8",
    )
    return recipe


def test_a_missing_plugin_file_is_named(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("plugins: [absent.py]\nstudent: {arch: resnet8}\nlosses: {ce: {weight: 1}}\n")
    with pytest.raises(DistillError, match=r"plugins\[0\]: plugin file .*absent.py does not exist"):
        load_recipe(recipe)


def test_a_failing_plugin_shows_its_own_traceback(tmp_path):
    recipe = plugin_recipe(tmp_path, "import not_a_real_module_xyz\n", "whatever", name="broken.py")
    with pytest.raises(DistillError) as info:
        load_recipe(recipe)
    message = str(info.value)
    assert "broken.py failed to import" in message and "Traceback" in message and "not_a_real_module_xyz" in message


def test_a_name_registered_twice_is_refused(tmp_path):
    code = """
        from distill.losses import DistillLoss, LossContext, register_loss

        @register_loss("kd")
        class AnotherKD(DistillLoss):
            def __init__(self, context: LossContext) -> None:
                super().__init__(context)
    """
    with pytest.raises(DistillError, match="'kd' is already registered"):
        load_recipe(plugin_recipe(tmp_path, code, "kd", name="twice.py"))


@pytest.mark.parametrize(
    "body,message",
    [("return student.logits.sum(dim=1)", r"returned \(64,\) on the first batch"), ("return student.logits.sum() * float('nan')", "returned nan")],
    ids=["non-scalar", "non-finite"],
)
def test_bad_loss_values_stop_on_the_first_batch(body, message, fake_cifar100, tmp_path, request):
    loss_type = f"bad_{request.node.callspec.id.replace('-', '_')}"
    code = f"""
        from distill.losses import DistillLoss, LossContext, register_loss

        @register_loss("{loss_type}")
        class Bad(DistillLoss):
            requires_teacher = False

            def __init__(self, context: LossContext) -> None:
                super().__init__(context)

            def forward(self, student, teacher, batch):
                {body}
    """
    recipe = plugin_recipe(tmp_path, code, loss_type, name=f"{loss_type}.py")
    overrides = [f"data.root={fake_cifar100}", "data.verify=false", "data.num_workers=0", "schedule.epochs=1"]
    with pytest.raises(DistillError, match=message):
        from distill.engine.trainer import train

        train(load_recipe(recipe, overrides), run_dir=tmp_path / "run", tensorboard=False)
