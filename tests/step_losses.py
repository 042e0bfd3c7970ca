"""Losses that misbehave at chosen training steps: a recipe plugin for the reliability and lifecycle tests."""

import os
import signal

import torch

from distill.losses import DistillLoss, LossContext, register_loss


class _CountsSteps(DistillLoss):
    requires_teacher = False

    def __init__(self, context: LossContext) -> None:
        super().__init__(context)
        self.calls = 0

    def step_of(self, student) -> int:
        if self.training:
            self.calls += 1
        return self.calls


@register_loss("bad_at_steps")
class BadAtSteps(_CountsSteps):
    def __init__(self, context: LossContext, steps: list = (), kind: str = "loss") -> None:
        super().__init__(context)
        self.steps, self.kind = set(steps), kind

    def forward(self, student, teacher, batch):
        zero = student.logits.mean() * 0.0
        if self.step_of(student) not in self.steps:
            return zero
        if self.kind == "loss":
            return zero + float("nan")
        return torch.sqrt(student.logits.mean() * 0.0)  # 0, but d/dx sqrt(0·x) = inf·0 = NaN


@register_loss("signal_at_step")
class SignalAtStep(_CountsSteps):
    """Signals once per ``marker`` file: a resumed run (which counts from 0 again) is not signalled again."""

    def __init__(self, context: LossContext, step: int = 1, marker: str = "") -> None:
        super().__init__(context)
        self.step, self.marker = step, marker

    def forward(self, student, teacher, batch):
        if self.step_of(student) == self.step and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGTERM)
        return student.logits.mean() * 0.0


@register_loss("raises_at_step")
class RaisesAtStep(_CountsSteps):
    """Raises an ``IndexError`` at the given step, or a ``ZeroDivisionError`` while it is built: a plugin's bug."""

    def __init__(self, context: LossContext, step: int = 1, in_constructor: bool = False) -> None:
        super().__init__(context)
        if in_constructor:
            raise ZeroDivisionError("the plugin's own bug")
        self.step = step

    def forward(self, student, teacher, batch):
        if self.step_of(student) == self.step:
            raise IndexError("the plugin indexed past the batch")
        return student.logits.mean() * 0.0
