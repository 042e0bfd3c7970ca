"""The trainable side of a run: student plus loss modules, computing every loss term."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from distill.data.views import SharedViews, TwoViews, view_pairs
from distill.engine.teacher import FrozenTeacher
from distill.errors import DistillError, LossError
from distill.losses.base import Batch, DistillLoss, MultiViewLoss
from distill.models.features import FeatureRecord


def as_float32(record: FeatureRecord | None) -> FeatureRecord | None:
    """The record with every reduced-precision tensor cast to float32 (float32 ones are shared, not copied)."""
    if record is None:
        return None
    return record.map_tensors(lambda tensor: tensor.float() if tensor.is_floating_point() else tensor)


Objective = Callable[[FeatureRecord, FeatureRecord | None, Batch], Tensor]


@dataclass(frozen=True)
class ViewRecords:
    """Both networks' records on each view of a step, in the order of the views (one entry without shared views)."""

    student: tuple[FeatureRecord, ...]
    teacher: tuple[FeatureRecord | None, ...]
    batches: tuple[Batch, ...]

    def in_float32(self) -> ViewRecords:
        return ViewRecords(
            tuple(as_float32(record) for record in self.student),  # type: ignore[misc]
            tuple(as_float32(record) for record in self.teacher),
            self.batches,
        )


def in_full_precision(objectives: Mapping[str, Objective], records: ViewRecords) -> dict[str, Tensor]:
    """Evaluate losses in float32, whatever autocast the networks ran under.

    Under ``precision: bf16|fp16`` the networks run in the compute dtype; the losses
    must not: contrastive scores against a memory bank, their log-sum-exps and the
    KD/DKD softmaxes lose too much in 8-11 mantissa bits, and memory banks must stay
    float32. So autocast is switched off here and the feature records are cast up,
    once for all the losses (a no-op under fp32).
    """
    with torch.autocast(device_type=records.batches[0].inputs.device.type, enabled=False):
        records = records.in_float32()
        return {name: _term(name, objective, records) for name, objective in objectives.items()}


def _term(name: str, objective: Objective, records: ViewRecords) -> Tensor:
    """One loss term over the step's views; an exception inside a loss names the recipe's term.

    A :class:`MultiViewLoss` gets every view's records at once; any other objective
    is evaluated on each view and its values summed (one view: just its value).
    The original exception stays chained (``distill --debug`` prints its traceback).
    """
    try:
        if isinstance(objective, MultiViewLoss):
            return objective(records.student, records.teacher, records.batches[0])
        per_view = [objective(*view) for view in zip(records.student, records.teacher, records.batches)]
        total = per_view[0]
        for value in per_view[1:]:
            total = total + value
        return total
    except DistillError:
        raise
    except Exception as error:
        raise LossError(
            f"losses.{name} ({type(objective).__name__}) failed while computing its term: "
            f"{type(error).__name__}: {error}. If it is your plugin, fix it; run with 'distill --debug' for the traceback"
        ) from error


class Distiller(nn.Module):
    """Student and loss modules in one module, so one DDP wrapper synchronises them all.

    ``forward`` runs the student (and the frozen teacher, when there is one) once per
    view of the batch, hands the feature records to every loss, and returns the unweighted terms,
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
        self, inputs: Tensor | TwoViews | SharedViews, labels: Tensor, indices: Tensor
    ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """``inputs``: one batch for both networks, :class:`TwoViews` (the teacher's and the
        student's view) or :class:`SharedViews` (each view for both networks).

        The logits returned are the student's on the first view (the training accuracy's).
        """
        terms, student = self.objectives(inputs, labels, indices, self.losses)
        total = sum(self.weights[name] * value for name, value in terms.items())
        return terms, total, student.logits

    def objectives(
        self,
        inputs: Tensor | TwoViews | SharedViews,
        labels: Tensor,
        indices: Tensor,
        objectives: Mapping[str, Objective],
    ) -> tuple[dict[str, Tensor], FeatureRecord]:
        """The one forward path: both networks once per view, then each objective in float32.

        Also returns the student's record on the first view. :meth:`forward` passes the
        loss modules; an init stage passes its own objective
        (:mod:`distill.engine.init_stage`), so both see the same inputs: the same
        views, memory format and precision handling.
        """
        students, teachers, batches = [], [], []
        for student_inputs, teacher_inputs in view_pairs(inputs):
            student_inputs = self._memory_format(student_inputs)
            students.append(self.student(student_inputs, features=True))
            teachers.append(self.teacher(self._memory_format(teacher_inputs)) if self.teacher is not None else None)
            batches.append(Batch(inputs=student_inputs, labels=labels, indices=indices))
        records = ViewRecords(tuple(students), tuple(teachers), tuple(batches))
        return in_full_precision(objectives, records), students[0]

    def _memory_format(self, inputs: Tensor) -> Tensor:
        if self.channels_last and inputs.dim() == 4:
            return inputs.contiguous(memory_format=torch.channels_last)
        return inputs

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The student's parameters followed by those every loss declares trainable."""
        yield from self.student.parameters()
        for loss in self.losses.values():
            yield from loss.trainable_parameters()
