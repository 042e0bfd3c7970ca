"""Trainer parts in isolation: frozen teacher, trainable loss modules, schedule, accuracy, run dirs, saving."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys

import pytest
import torch
from torch import nn

from distill.engine.checkpoint import atomic_save
from distill.engine.distiller import Distiller
from distill.engine.metrics import topk_correct
from distill.engine.optim import build_optimizer, build_scheduler
from distill.engine.teacher import FrozenTeacher
from distill.errors import CheckpointError, DistillError
from distill.files.rundir import RunDirLock, claim_new_run_dir, claim_run_dir, new_run_dir
from distill.losses import Batch, DistillLoss, LossContext, build_loss, register_loss
from distill.models import create_model, probe_feature_shapes
from distill.recipe.schema import OptimizerSpec, ScheduleSpec


@register_loss("test-pooled-head")
class PooledHeadLoss(DistillLoss):
    """A loss with a trainable head: pulls the projected student embedding towards the teacher's."""

    def __init__(self, context: LossContext) -> None:
        super().__init__(context)
        self.head = nn.Linear(context.student.pooled_dim, context.teacher.pooled_dim)

    def forward(self, student, teacher, batch):
        return (self.head(student.pooled) - teacher.pooled).pow(2).mean()


def make_distiller():
    torch.manual_seed(0)
    student, teacher_net = create_model("resnet8", num_classes=10), create_model("resnet14", num_classes=10)
    shapes_s, shapes_t = probe_feature_shapes(student, (3, 32, 32)), probe_feature_shapes(teacher_net, (3, 32, 32))
    context = LossContext(student=shapes_s, teacher=shapes_t, num_classes=10, dataset_size=8, labels=torch.arange(8) % 10)
    losses = {"head": build_loss("test-pooled-head", context, {}), "kd": build_loss("kd", context, {})}
    return Distiller(student, losses, {"head": 1.0, "kd": 0.5}, FrozenTeacher(teacher_net)), teacher_net


def test_teacher_stays_frozen_through_training_steps():
    distiller, teacher_net = make_distiller()
    before = {k: v.clone() for k, v in teacher_net.state_dict().items()}
    optimizer = build_optimizer(OptimizerSpec(lr=0.1), distiller.trainable_parameters())
    distiller.train()
    assert distiller.student.training and not teacher_net.training
    assert all(not p.requires_grad for p in teacher_net.parameters())
    head_before = distiller.losses["head"].head.weight.clone()
    batch = Batch(torch.randn(8, 3, 32, 32), torch.arange(8) % 10, torch.arange(8))
    for _ in range(2):
        terms, total, logits = distiller(batch.inputs, batch.labels, batch.indices)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert set(terms) == {"head", "kd"} and logits.shape == (8, 10)
    assert total.item() == pytest.approx(terms["head"].item() + 0.5 * terms["kd"].item(), rel=1e-6)
    for key, value in teacher_net.state_dict().items():  # weights and BN running statistics untouched
        assert torch.equal(value, before[key]), key
    assert not torch.equal(distiller.losses["head"].head.weight, head_before)  # the loss's head trained


def test_teacher_is_not_part_of_the_trainable_module():
    distiller, teacher_net = make_distiller()
    teacher_ids = {id(p) for p in teacher_net.parameters()}
    assert not teacher_ids & {id(p) for p in distiller.parameters()}
    assert not any(key.startswith("teacher") for key in distiller.state_dict())
    trainable = {id(p) for p in distiller.trainable_parameters()}
    assert {id(p) for p in distiller.losses["head"].parameters()} <= trainable
    assert {id(p) for p in distiller.student.parameters()} <= trainable


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_step_schedule_matches_the_reference():
    optimizer = build_optimizer(OptimizerSpec(lr=0.05), [nn.Parameter(torch.zeros(1))])
    scheduler = build_scheduler(ScheduleSpec(), optimizer)
    for epoch in range(1, 241):
        expected = 0.05 * 0.1 ** sum(1 for m in (150, 180, 210) if m < epoch)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected), epoch
        scheduler.step()
    group = optimizer.param_groups[0]
    assert group["momentum"] == 0.9 and group["weight_decay"] == 5e-4 and not group["nesterov"]


def test_topk_correct_by_hand():
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])
    labels = torch.tensor([2, 0, 0])
    assert topk_correct(logits, labels, ks=(1, 2)).tolist() == [1, 2]
    assert topk_correct(logits, labels, ks=(1, 5)).tolist() == [1, 3]  # k capped at 3 classes


def test_run_dirs_are_unique_and_never_reused(tmp_path):
    base = new_run_dir(tmp_path, "cifar100/kd/a-b", now=0)
    first = claim_new_run_dir(base)
    second = claim_new_run_dir(new_run_dir(tmp_path, "cifar100/kd/a-b", now=0))
    assert first.name.startswith("cifar100-kd-a-b-") and second != first
    assert second.name == first.name + "-1" and (second / "checkpoints").is_dir()
    (first / "metrics.jsonl").write_text("{}")
    with pytest.raises(DistillError, match="not empty"):
        claim_run_dir(first)


@pytest.mark.e2e
def test_runs_named_in_the_same_second_by_racing_processes_get_distinct_directories(tmp_path):
    """Eight processes claim the same time-stamped name at once: each must get its own directory."""
    script = (
        "import sys; from pathlib import Path\n"
        "from distill.files.rundir import claim_new_run_dir, new_run_dir\n"
        "print(claim_new_run_dir(new_run_dir(Path(sys.argv[1]), 'cifar100/kd/a-b', now=0)))\n"
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    claimed = [process.communicate(timeout=60)[0].strip() for process in processes]
    assert all(process.returncode == 0 for process in processes)
    assert len(set(claimed)) == 8 and len(list(tmp_path.iterdir())) == 8


@pytest.mark.e2e
def test_a_run_directory_lock_refuses_a_second_holder_and_names_the_first(tmp_path):
    first = RunDirLock(tmp_path)
    first.acquire()
    script = (
        "import sys; from pathlib import Path\n"
        "from distill.files.rundir import RunDirLock, RunDirBusyError\n"
        "try:\n    RunDirLock(Path(sys.argv[1])).acquire()\nexcept RunDirBusyError as e:\n    print(e); sys.exit(3)\n"
    )
    refused = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 3, refused.stderr
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in refused.stdout
    first.release()
    taken = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert taken.returncode == 0, taken.stdout + taken.stderr


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    atomic_save({"epoch": 1}, path)

    def broken_save(obj, handle):
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(CheckpointError, match="disk is full.*resume") as caught:
        atomic_save({"epoch": 2}, path)
    assert "the previous last.pt is intact" in str(caught.value)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_build_run_builds_what_the_recipe_describes_and_writes_nothing(fake_cifar100, tiny_teacher, tmp_path, monkeypatch):
    from distill.engine.accelerator import make_accelerator
    from distill.engine.build import build_run
    from distill.recipe.load import recipe_from_dict
    from distill.recipe.resolve import resolve_recipe

    monkeypatch.chdir(tmp_path)
    recipe = recipe_from_dict({
        "student": {"arch": "resnet8"},
        "teacher": {"arch": "resnet14", "checkpoint": str(tiny_teacher)},
        "data": {"root": str(fake_cifar100), "verify": False, "num_workers": 0, "batch_size": 64},
        "losses": {"ce": {"weight": 1.0}, "head": {"type": "test-pooled-head", "weight": 0.5}},
        "output_dir": str(tmp_path / "runs"),
    })
    built = build_run(resolve_recipe(recipe).recipe, make_accelerator(recipe))
    assert list(tmp_path.iterdir()) == []  # building touches no run directory
    assert (built.num_classes, built.train_size, built.test_size) == (100, 256, 100)
    assert list(built.unwrapped.losses) == ["ce", "head"] and built.unwrapped.weights == {"ce": 1.0, "head": 0.5}
    student = list(built.unwrapped.student.parameters())
    head = list(built.unwrapped.losses["head"].parameters())
    assert [id(p) for p in built.trained_parameters] == [id(p) for p in student + head]  # what the optimiser steps
    assert len(built.train_loader) == 4  # 256 images in batches of 64
    assert all(not p.requires_grad for p in built.teacher.module.parameters())
