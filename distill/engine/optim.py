"""Optimiser and learning-rate schedule from the recipe."""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable

import torch
from torch import nn

from distill.recipe.schema import OptimizerSpec, ScheduleSpec


def build_optimizer(
    spec: OptimizerSpec, parameters: Iterable[nn.Parameter], *, capturable: bool = False
) -> torch.optim.Optimizer:
    """One parameter group over everything trainable; weight decay on all of it (as the reference).

    ``spec.fused``: PyTorch's fused implementation (``fused=True``); otherwise PyTorch
    picks (``foreach`` on a GPU). ``capturable``: the step may be recorded in a CUDA
    graph (``cuda_graph: true``); AdamW then keeps its step count on the device. SGD
    keeps no count and is capturable as it is.
    """
    parameters = list(parameters)
    fused = True if spec.fused else None
    if spec.name == "sgd":
        return torch.optim.SGD(
            parameters, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay, nesterov=spec.nesterov,
            fused=fused,
        )
    if spec.name == "adamw":
        return torch.optim.AdamW(parameters, lr=spec.lr, weight_decay=spec.weight_decay, fused=fused, capturable=capturable)
    raise ValueError(f"unknown optimizer {spec.name!r}")


def build_scheduler(spec: ScheduleSpec, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """Step decay, stepped once per epoch: epoch e (from 1) uses lr · gamma^#{m in milestones : m < e}."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=spec.milestones, gamma=spec.gamma)


OPTIMIZER_KEYS = ("optimizer.lr", "optimizer.momentum", "optimizer.weight_decay", "optimizer.nesterov")
SCHEDULE_KEYS = ("schedule.milestones", "schedule.gamma", "schedule.epochs")
UNAPPLICABLE_KEYS = {
    "optimizer.name": "the optimiser's state (momentum buffers, Adam moments) belongs to one kind of optimiser",
}
"""Keys a forced resume cannot apply to a run in progress, and why."""


def scheduled_lr(base_lr: float, milestones: list[int], gamma: float, epochs_done: int) -> float:
    """The learning rate of epoch ``epochs_done + 1`` under step decay: base · gamma^#{m ≤ epochs_done}."""
    return base_lr * gamma ** bisect_right(sorted(milestones), epochs_done)


def apply_hyperparameters(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.MultiStepLR,
    optimizer_spec: OptimizerSpec,
    schedule_spec: ScheduleSpec,
    changed: set[str],
) -> list[str]:
    """Make a restored optimiser and scheduler follow the recipe's values for the ``changed`` keys.

    A checkpoint restores the optimiser's and the scheduler's hyper-parameters along
    with their state, so a resume forced with another ``optimizer.lr`` would
    otherwise train on at the old one. The momentum buffers are kept; the learning
    rate becomes what the new base rate, milestones and gamma give at the current
    epoch (:func:`scheduled_lr`), and the scheduler continues from there.
    ``schedule.epochs`` needs nothing here: the training loop reads it.

    Returns one line per applied change, for the log. Keys the optimiser does not
    have (momentum under AdamW) are reported as not applicable.
    """
    applied = []
    for key in ("momentum", "weight_decay", "nesterov"):
        if f"optimizer.{key}" not in changed:
            continue
        value = getattr(optimizer_spec, key)
        if all(key in group for group in optimizer.param_groups):
            for group in optimizer.param_groups:
                group[key] = value
            applied.append(f"optimizer.{key} = {value:g}")
        else:
            applied.append(f"optimizer.{key} = {value:g} has no effect on {type(optimizer).__name__}")
    if changed & {"optimizer.lr", "schedule.milestones", "schedule.gamma"}:
        epochs_done = scheduler.last_epoch
        lr = scheduled_lr(optimizer_spec.lr, schedule_spec.milestones, schedule_spec.gamma, epochs_done)
        scheduler.milestones = Counter(schedule_spec.milestones)
        scheduler.gamma = schedule_spec.gamma
        scheduler.base_lrs = [optimizer_spec.lr for _ in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["initial_lr"] = optimizer_spec.lr
            group["lr"] = lr
        scheduler._last_lr = [lr for _ in optimizer.param_groups]
        applied.append(
            f"lr {optimizer_spec.lr:g} with milestones {schedule_spec.milestones} and gamma {schedule_spec.gamma:g}: "
            f"{lr:g} from epoch {epochs_done + 1}"
        )
    if "schedule.epochs" in changed:
        applied.append(f"schedule.epochs = {schedule_spec.epochs}")
    return applied
