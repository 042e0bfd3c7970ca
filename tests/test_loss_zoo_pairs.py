"""Every registered loss on every one of the 13 CIFAR-100 tasks: builds, steps, or refuses at build time.

Real zoo models with random weights and a small random batch. What must hold for each
combination: a finite scalar loss, gradients on the student, none on the teacher, and
(for a loss with an init stage) a backward pass through its stage objective.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from distill.benchmark.tasks import TASKS
from distill.losses import LOSSES, Batch, LossContext, MultiViewLoss, build_loss
from distill.models import create_model, probe_feature_shapes

ZOO_LOSSES = [name for name in LOSSES.names() if not name.startswith(("test-", "bad_"))]
SMALL_PARAMS = {"crd": {"num_negatives": 16}, "cpc": {"num_negatives": 16}, "ml_cpc": {"num_negatives": 16}}
NOT_APPLICABLE = {("fsp", task.name) for task in TASKS if not task.same_family} | {("fsp", "wrn_40_2-wrn_40_1")}
DATASET_SIZE = 40

_MODELS: dict[str, torch.nn.Module] = {}


def model(arch: str) -> torch.nn.Module:
    if arch not in _MODELS:
        torch.manual_seed(0)
        _MODELS[arch] = create_model(arch)
    return _MODELS[arch]


def test_the_zoo_is_complete():
    expected = {
        "ce", "kd", "crd", "cpc", "ml_cpc", "hint", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "fsp", "nst", "dkd",
        "dist", "ttm", "wttm", "mlkd", "itrd", "reviewkd",
    }
    assert expected <= set(ZOO_LOSSES)


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_every_loss_on_the_task(task):
    student, teacher = model(task.student).train(), model(task.teacher).eval()
    context = LossContext(
        student=probe_feature_shapes(student, (3, 32, 32)),
        teacher=probe_feature_shapes(teacher, (3, 32, 32)),
        num_classes=100,
        dataset_size=DATASET_SIZE,
        labels=torch.arange(DATASET_SIZE) % 100,
        student_arch=task.student,
        teacher_arch=task.teacher,
        batch_size=4,
    )
    inputs = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    batch = Batch(inputs=inputs, labels=torch.tensor([0, 1, 2, 3]), indices=torch.tensor([0, 1, 2, 3]))
    with torch.no_grad():
        teacher_record = teacher(inputs, features=True)
    for name in ZOO_LOSSES:
        if (name, task.name) in NOT_APPLICABLE:
            with pytest.raises(ValueError, match="FSP|fsp"):
                build_loss(name, context, SMALL_PARAMS.get(name, {}))
            continue
        multi_view = issubclass(LOSSES.get(name), MultiViewLoss)
        views = LOSSES.get(name).required_views if multi_view else 1
        loss = build_loss(name, dataclasses.replace(context, views=views), SMALL_PARAMS.get(name, {}))
        objectives = [loss]
        stage = loss.init_stage()
        if stage is not None:
            objectives.append(stage.loss)
        student.zero_grad(set_to_none=True)
        for objective in objectives:
            if multi_view:  # every view: the same images, flipped for the second view onwards
                views_in = [inputs.flip(-1) if v else inputs for v in range(views)]
                with torch.no_grad():
                    teachers = [teacher(x, features=True) for x in views_in]
                value = objective([student(x, features=True) for x in views_in], teachers, batch)
            else:
                value = objective(student(inputs, features=True), teacher_record, batch)
            assert value.numel() == 1 and torch.isfinite(value), (name, task.name)
            if value.requires_grad:
                value.backward()
        touched = any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
        main_stage_is_zero = name in ("ab", "fsp")  # the reference's AB and FSP act only through their init stage
        assert touched or main_stage_is_zero, (name, task.name)
        assert all(p.grad is None for p in teacher.parameters()), (name, task.name)
