"""Shared fixtures: small fake CIFAR-100s in the real on-disk format, a tiny teacher, and the six manifest teachers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def fake_cifar100(tmp_path_factory) -> Path:
    """A fake CIFAR-100 (256 train / 100 test images) read through the real loader with data.verify=false."""
    from distill.data import write_fake_cifar

    root = tmp_path_factory.mktemp("cifar")
    write_fake_cifar(root, num_classes=100, train_size=256, test_size=100, seed=0)
    return root


@pytest.fixture(scope="module")
def tiny_cifar(tmp_path_factory) -> Path:
    """A fake CIFAR-100 of 100 train / 100 test images: two steps of batch 50, the size of the sweep tests' runs."""
    from distill.data import write_fake_cifar

    root = tmp_path_factory.mktemp("tiny_cifar")
    write_fake_cifar(root, num_classes=100, train_size=100, test_size=100, seed=1)
    return root


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    """A resnet14 teacher checkpoint in the RepDistiller format (random weights: the plumbing is under test)."""
    from distill.models import create_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "ckpt_epoch_240.pth"
    torch.save({"epoch": 240, "model": create_model("resnet14").state_dict(), "accuracy": torch.tensor(1.0)}, path)
    return path


@pytest.fixture(scope="session")
def random_teachers(tmp_path_factory) -> Path:
    """A copy of teachers/cifar100.yaml whose six files exist: random weights in the RepDistiller format.

    Point ``DISTILL_TEACHER_MANIFEST`` at it (monkeypatch.setenv) and recipes that say
    ``teacher: {name: ...}`` resolve their checkpoints the way a user's run does.
    """
    from distill.models import create_model
    from distill.recipe.manifest import load_manifest

    root = tmp_path_factory.mktemp("teachers")
    manifest_path = root / "cifar100.yaml"
    shutil.copy(REPO / "teachers" / "cifar100.yaml", manifest_path)
    for entry in load_manifest(manifest_path).teachers.values():
        torch.manual_seed(0)
        target = root / entry.file
        target.parent.mkdir(parents=True)
        torch.save({"epoch": 240, "model": create_model(entry.arch).state_dict(), "accuracy": 1.0}, target)
    return manifest_path
