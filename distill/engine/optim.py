"""Optimiser and learning-rate schedule from the recipe."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from distill.recipe.schema import OptimizerSpec, ScheduleSpec


def build_optimizer(spec: OptimizerSpec, parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """One parameter group over everything trainable; weight decay on all of it (as the reference)."""
    parameters = list(parameters)
    if spec.name == "sgd":
        return torch.optim.SGD(
            parameters, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay, nesterov=spec.nesterov
        )
    if spec.name == "adamw":
        return torch.optim.AdamW(parameters, lr=spec.lr, weight_decay=spec.weight_decay)
    raise ValueError(f"unknown optimizer {spec.name!r}")


def build_scheduler(spec: ScheduleSpec, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """Step decay, stepped once per epoch: epoch e (from 1) uses lr · gamma^#{m in milestones : m < e}."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=spec.milestones, gamma=spec.gamma)
