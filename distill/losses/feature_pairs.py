"""Helpers shared by the losses that pair intermediate feature maps (AT, NST, VID, ...)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from distill.losses.base import LossContext


def match_spatial_sizes(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive-average-pool whichever map is larger (per axis) down to the smaller spatial size."""
    height = min(student.shape[2], teacher.shape[2])
    width = min(student.shape[3], teacher.shape[3])
    if tuple(student.shape[2:]) != (height, width):
        student = F.adaptive_avg_pool2d(student, (height, width))
    if tuple(teacher.shape[2:]) != (height, width):
        teacher = F.adaptive_avg_pool2d(teacher, (height, width))
    return student, teacher


def paired_map_shapes(context: LossContext, method: str) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(student, teacher) per-sample shapes of ``maps[1:]``; ValueError when the counts differ or are zero.

    ``context.teacher`` is set: :class:`~distill.losses.base.DistillLoss` refuses a
    loss that requires a teacher before its own ``__init__`` calls this.
    """
    student, teacher = context.student.maps[1:], context.teacher.maps[1:]
    if len(student) != len(teacher):
        raise ValueError(
            f"{method} pairs the intermediate maps (maps[1:]) in order, but the student "
            f"({context.student_arch or 'student'}) has {len(student)} and the teacher "
            f"({context.teacher_arch or 'teacher'}) has {len(teacher)}; pair networks with as many maps, "
            f"use another loss for this pair, or remove the {method} term"
        )
    if not student:
        raise ValueError(f"{method} needs at least one intermediate map (maps[1:] is empty)")
    return list(zip(student, teacher))


def format_shape(shape: tuple[int, ...]) -> str:
    """(C, H, W) → "CxHxW" for log lines."""
    return "x".join(str(d) for d in shape)
