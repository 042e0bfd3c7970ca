"""The trainable side of a run: student plus loss modules, computing every loss term."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import torch
from torch import Tensor, nn

from distill.data.views import TwoViews, split_views
from distill.engine.teacher import FrozenTeacher
from distill.errors import DistillError, LossError
from distill.losses.base import Batch, DistillLoss
from distill.models.features import FeatureRecord


def as_float32(record: FeatureRecord | None) -> FeatureRecord | None:
    """The record with every reduced-precision tensor cast to float32 (float32 ones are shared, not copied)."""
    if record is None:
        return None
    return record.map_tensors(lambda tensor: tensor.float() if tensor.is_floating_point() else tensor)


Objective = Callable[[FeatureRecord, FeatureRecord | None, Batch], Tensor]


def in_full_precision(
    objectives: Mapping[str, Objective],
    student: FeatureRecord,
    teacher: FeatureRecord | None,
    batch: Batch,
) -> dict[str, Tensor]:
    """Evaluate losses in float32, whatever autocast the networks ran under.

    Under ``precision: bf16|fp16`` the networks run in the compute dtype; the losses
    must not: contrastive scores against a memory bank, their log-sum-exps and the
    KD/DKD softmaxes lose too much in 8-11 mantissa bits, and memory banks must stay
    float32. So autocast is switched off here and the feature records are cast up,
    once for all the losses (a no-op under fp32).
    """
    with torch.autocast(device_type=batch.inputs.device.type, enabled=False):
        student, teacher = as_float32(student), as_float32(teacher)
        return {name: _term(name, objective, student, teacher, batch) for name, objective in objectives.items()}


def _term(name: str, objective: Objective, student: FeatureRecord, teacher: FeatureRecord | None, batch: Batch) -> Tensor:
    """One loss term; an exception inside a loss (a plugin's bug, a shape it cannot take) names the recipe's term.

    The original exception stays chained (``distill --debug`` prints its traceback).
    """
    try:
        return objective(student, teacher, batch)
    except DistillError:
        raise
    except Exception as error:
        raise LossError(
            f"losses.{name} ({type(objective).__name__}) failed while computing its term: "
            f"{type(error).__name__}: {error}. If it is your plugin, fix it; run with 'distill --debug' for the traceback"
        ) from error


class Distiller(nn.Module):
    """Student and loss modules in one module, so one DDP wrapper synchronises them all.

    ``forward`` runs the student (and the frozen teacher, when there is one) once,
    hands both feature records to every loss, and returns the unweighted terms,
    the weighted total and the student's logits.
    """

    def __init__(
        self,
        student: nn.Module,
        losses: dict[str, DistillLoss],
        weights: dict[str, float],
        teacher: FrozenTeacher | None = None,
        *,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.student = student
        self.losses = nn.ModuleDict(losses)
        self.weights = dict(weights)
        self.teacher = teacher  # a plain object: not a submodule (see FrozenTeacher)
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, self._outside_ddp(losses))

    @staticmethod
    def _outside_ddp(losses: dict[str, DistillLoss]) -> list[str]:
        """Names DDP must leave alone.

        Buffers a loss keeps identical across processes itself (memory banks), and
        the parameters of init-stage modules that are frozen afterwards: the main
        stage never uses them (DDP would wait for their gradients), and the init
        stage averages their gradients itself.
        """
        names = [f"losses.{name}.{buffer}" for name, loss in losses.items() for buffer in loss.self_synchronised_buffers()]
        for name, loss in losses.items():
            stage = loss.init_stage()
            if stage is not None and stage.freeze_after:
                staged = {id(p) for module in stage.modules for p in module.parameters()}
                names += [f"losses.{name}.{key}" for key, p in loss.named_parameters() if id(p) in staged]
        return names

    def forward(
        self, inputs: Tensor | TwoViews, labels: Tensor, indices: Tensor
    ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """``inputs``: one batch for both networks, or :class:`TwoViews` (the teacher's and the student's view)."""
        terms, student = self.objectives(inputs, labels, indices, self.losses)
        total = sum(self.weights[name] * value for name, value in terms.items())
        return terms, total, student.logits

    def objectives(
        self, inputs: Tensor | TwoViews, labels: Tensor, indices: Tensor, objectives: Mapping[str, Objective]
    ) -> tuple[dict[str, Tensor], FeatureRecord]:
        """The one forward path: both networks once, then each objective in float32; also the student's record.

        :meth:`forward` passes the loss modules; an init stage passes its own
        objective (:mod:`distill.engine.init_stage`), so both see the same inputs:
        the same views, memory format and precision handling.
        """
        student_inputs, teacher_inputs = (self._memory_format(x) for x in split_views(inputs))
        student = self.student(student_inputs, features=True)
        teacher = self.teacher(teacher_inputs) if self.teacher is not None else None
        batch = Batch(inputs=student_inputs, labels=labels, indices=indices)
        return in_full_precision(objectives, student, teacher, batch), student

    def _memory_format(self, inputs: Tensor) -> Tensor:
        if self.channels_last and inputs.dim() == 4:
            return inputs.contiguous(memory_format=torch.channels_last)
        return inputs

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The student's parameters followed by those every loss declares trainable."""
        yield from self.student.parameters()
        for loss in self.losses.values():
            yield from loss.trainable_parameters()
