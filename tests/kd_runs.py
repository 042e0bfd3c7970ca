"""The small KD run that the reliability and lifecycle tests start through the CLI, and their misbehaving losses.

KD resnet14 → resnet8 on the fake CIFAR-100 (256 images in batches of 64: 4 steps an
epoch), in-process through ``distill.cli.main.main``. ``STEP_LOSSES`` is a recipe
plugin whose losses fail, signal or raise at chosen steps (``tests/step_losses.py``).
"""

from __future__ import annotations

from pathlib import Path

from distill.cli.main import main

TESTS = Path(__file__).resolve().parent
KD_RECIPE = TESTS.parent / "recipes/cifar100/kd/resnet32x4-resnet8x4.yaml"
STEP_LOSSES = TESTS / "step_losses.py"


def kd_overrides(data_root: Path, teacher: Path, *extra: str) -> list[str]:
    """Two epochs of KD resnet14 → resnet8, deterministic, logging every step."""
    return [
        f"data.root={data_root}", "data.verify=false", "data.num_workers=0", "data.batch_size=64",
        "schedule.epochs=2", "log_every=1", "deterministic=true",
        "student.arch=resnet8", "teacher.name=null", "teacher.arch=resnet14", f"teacher.checkpoint={teacher}",
        *extra,
    ]


def train(run_dir: Path, *overrides: str) -> int:
    """``distill train`` of the KD recipe into ``run_dir`` with ``overrides``; returns the exit status."""
    return main(["train", str(KD_RECIPE), *overrides, "--run-dir", str(run_dir), "--no-tensorboard"])
