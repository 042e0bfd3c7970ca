"""timm models on 32 px images: the CIFAR stem option, the 1×1 warning, and one-line errors naming the recipe key."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from distill.cli.main import main
from distill.errors import CheckpointError
from distill.models import create_model
from distill.models.options import ModelOptionError
from distill.models.probe import CollapsedFeatureMapWarning, probe_model

REPO = Path(__file__).resolve().parent.parent
CE_RECIPE = REPO / "recipes/cifar100/teachers/resnet56.yaml"
CIFAR = (3, 32, 32)


def run_overrides(data_root: Path) -> list[str]:
    return [f"data.root={data_root}", "data.verify=false", "data.download=false", "data.num_workers=0", "schedule.epochs=1"]


def probe_without_warnings(model: nn.Module, arch: str) -> list[tuple[int, ...]]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapsedFeatureMapWarning)
        return probe_model(model, CIFAR, arch=arch, role="student").maps


def test_cifar_stem_gives_resnet18_a_4x4_last_map_at_32px():
    torch.manual_seed(0)
    model = create_model("timm/resnet18", num_classes=100, cifar_stem=True)
    stem = model.model.conv1
    assert isinstance(stem, nn.Conv2d)
    assert (stem.kernel_size, stem.stride, stem.padding, stem.bias) == ((3, 3), (1, 1), (1, 1), None)
    assert (stem.in_channels, stem.out_channels) == (3, 64)
    assert isinstance(model.model.maxpool, nn.Identity)
    maps = probe_without_warnings(model, "timm/resnet18")
    # The CIFAR ResNet-18 of the zoo has the same maps: 32, 32, 16, 8, 4.
    assert maps == [(64, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4)]
    # By hand: the 7×7 stem (3·64·49 = 9,408 weights) becomes a 3×3 one (3·64·9 = 1,728).
    default = create_model("timm/resnet18", num_classes=100)
    difference = sum(p.numel() for p in default.parameters()) - sum(p.numel() for p in model.parameters())
    assert difference == 3 * 64 * 49 - 3 * 64 * 9


def test_cifar_stem_replaces_a_deep_stem_too():
    model = create_model("timm/resnet10t", num_classes=10, cifar_stem=True)
    assert isinstance(model.model.conv1, nn.Conv2d) and model.model.conv1.kernel_size == (3, 3)
    assert probe_without_warnings(model, "timm/resnet10t")[-1] == (512, 4, 4)


def test_the_imagenet_stem_collapses_to_1x1_and_warns():
    model = create_model("timm/resnet18", num_classes=100)
    with pytest.warns(CollapsedFeatureMapWarning, match=r"student timm/resnet18: .*1×1.*student\.options\.cifar_stem: true"):
        shapes = probe_model(model, CIFAR, arch="timm/resnet18", role="student")
    assert shapes.maps[-1] == (512, 1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapsedFeatureMapWarning)
        probe_model(model, (3, 64, 64), arch="timm/resnet18", role="student")  # 2×2 at 64 px: no warning


def test_a_cifar_stem_checkpoint_needs_the_option_to_load(tmp_path):
    torch.manual_seed(0)
    model = create_model("timm/resnet18", num_classes=10, cifar_stem=True).eval()
    assert model.state_dict()["conv1.weight"].shape == (64, 3, 3, 3)
    torch.save(model.state_dict(), tmp_path / "stem.pth")
    again = create_model("timm/resnet18", num_classes=10, checkpoint=tmp_path / "stem.pth", cifar_stem=True).eval()
    x = torch.randn(2, *CIFAR)
    torch.testing.assert_close(again(x), model(x))
    with pytest.raises(CheckpointError, match="conv1.weight"):
        create_model("timm/resnet18", num_classes=10, checkpoint=tmp_path / "stem.pth")


def test_cifar_stem_is_refused_where_it_does_not_apply():
    with pytest.raises(ModelOptionError, match="timm/mobilenetv3_small_050 is a MobileNetV3, not a timm ResNet") as error:
        create_model("timm/mobilenetv3_small_050", num_classes=10, cifar_stem=True)
    assert error.value.key == "options.cifar_stem"
    with pytest.raises(ModelOptionError, match="CIFAR networks already") as error:
        create_model("resnet8", cifar_stem=True)
    assert str(error.value.under("student")).startswith("student.options.cifar_stem: model 'resnet8' has no option")


def test_cifar_stem_must_be_true_or_false():
    with pytest.raises(ModelOptionError, match=r"expects true or false, got 'yes' \(str\)") as error:
        create_model("timm/resnet18", num_classes=10, cifar_stem="yes")
    assert error.value.key == "options.cifar_stem"


def test_timm_build_failures_name_the_option():
    with pytest.raises(ModelOptionError) as error:
        create_model("timm/resnet18", num_classes=10, drop_rat=0.1)
    assert error.value.key == "options.drop_rat" and "has no argument 'drop_rat'" in str(error.value)
    with pytest.raises(ModelOptionError) as error:
        create_model("timm/vit_tiny_patch16_224", num_classes=10, img_size="large")
    assert error.value.key == "options" and "img_size: 'large'" in str(error.value)
    with pytest.raises(ModelOptionError, match="^options.pretrained: .*not fetched"):
        create_model("timm/resnet18", pretrained=True)


def test_a_vit_at_32px_names_img_size_and_one_that_fits_runs():
    vit = create_model("timm/vit_tiny_patch16_224", num_classes=10, depth=1)
    with pytest.raises(ModelOptionError) as error:
        probe_model(vit, CIFAR, arch="timm/vit_tiny_patch16_224", role="teacher")
    assert error.value.recipe_key == "teacher.options.img_size"
    assert "built for 224×224" in str(error.value) and "set teacher.options.img_size: 32" in str(error.value).lower()
    small = create_model("timm/vit_tiny_patch16_224", num_classes=10, depth=1, img_size=32, patch_size=8)
    assert probe_without_warnings(small, "timm/vit_tiny_patch16_224")[-1] == (192, 4, 4)


@pytest.mark.slow
@pytest.mark.e2e
def test_a_vit_without_img_size_ends_in_one_line_and_exit_2(fake_cifar100):
    """Through a real process: no traceback, one line that says what to set."""
    command = [
        sys.executable, "-m", "distill", "train", str(CE_RECIPE), *run_overrides(fake_cifar100),
        "student.arch=timm/vit_tiny_patch16_224", "student.options.depth=1",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO, check=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("distill train: error: student.options.img_size: timm/vit_tiny_patch16_224")
    assert "student.options.img_size: 32" in lines[0] and "student.options.patch_size" in lines[0]


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["student.arch=timm/resnet18", "student.options.drop_rat=0.1"], "student.options.drop_rat: timm/resnet18 has no argument"),
        (["student.arch=timm/resnet18", "student.options.cifar_stem=1"], "command-line override: student.options.cifar_stem: timm/resnet18 expects true or false"),
        (["student.arch=resnet8", "student.options.cifar_stem=true"], "command-line override: student.options.cifar_stem: model 'resnet8' has no option"),
        (["student.arch=timm/mobilenetv3_small_050", "student.options.cifar_stem=true"], "student.options.cifar_stem: timm/mobilenetv3"),
        (["student.arch=timm/resnet18", "student.options.num_classes=10"], "command-line override: student.options.num_classes: distill sets 'num_classes' itself"),
        (["student.arch=resnet8", "student.options.checkpoint=x.pth"], "command-line override: student.options.checkpoint: distill sets 'checkpoint' itself"),
        (["student.arch=timm/resnet18", "student.options.global_pool=''"], "student.options: timm/resnet18 with options {global_pool: ''}"),
    ],
)
def test_option_errors_through_the_cli(fake_cifar100, tmp_path, capsys, overrides, expected):
    code = main(["train", str(CE_RECIPE), *run_overrides(fake_cifar100), *overrides, "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and f"distill train: error: {expected}" in err, err
    assert not (tmp_path / "run").exists()  # refused before the run directory was made


@pytest.mark.e2e
def test_a_teacher_option_error_names_the_teacher_key(fake_cifar100, tiny_teacher, tmp_path, capsys):
    recipe = REPO / "recipes/cifar100/kd/resnet32x4-resnet8x4.yaml"
    overrides = [
        "student.arch=resnet8", "teacher.name=null", "teacher.arch=timm/resnet18",
        f"teacher.checkpoint={tiny_teacher}", "teacher.options.drop_rat=0.1",
    ]
    code = main(["train", str(recipe), *run_overrides(fake_cifar100), *overrides, "--run-dir", str(tmp_path / "run")])
    assert code == 2
    assert "distill train: error: teacher.options.drop_rat: timm/resnet18 has no argument" in capsys.readouterr().err
