"""What the CRD step benchmarks in ``tools/`` share: a fake CIFAR-100 and a random teacher, and a device sync.

``tools/bench_step_guard.py`` and ``tools/bench_checkpoint_stall.py`` time parts of the
shipped CRD recipe (resnet32x4 → resnet8x4) on a fake CIFAR-100 with a random-weight
teacher; :func:`crd_setup` writes both and returns the recipe overrides that point at them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from distill.data import write_fake_cifar
from distill.models import create_model

REPO = Path(__file__).resolve().parent.parent
CRD_RECIPE = REPO / "recipes/cifar100/crd/resnet32x4-resnet8x4.yaml"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so that a timer sees it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def crd_setup(root: Path, train_size: int) -> list[str]:
    """Write a fake CIFAR-100 of ``train_size`` images under ``root``; the overrides that point at it and the teacher.

    The teacher file, ``root/teacher.pth``, is written by :func:`write_random_teacher`
    once the recipe (and so the teacher's architecture, resnet32x4 unless overridden) is known.
    """
    write_fake_cifar(root / "cifar", num_classes=100, train_size=train_size, test_size=100, seed=0)
    return [
        f"data.root={root / 'cifar'}", "data.verify=false", "data.num_workers=0",
        "teacher.name=null", "teacher.arch=resnet32x4", f"teacher.checkpoint={root / 'teacher.pth'}",
    ]  # fmt: skip


def write_random_teacher(root: Path, arch: str) -> None:
    """``root/teacher.pth``: random weights of ``arch`` (a step's speed does not depend on them)."""
    torch.manual_seed(0)
    torch.save({"model": create_model(arch).state_dict()}, root / "teacher.pth")
