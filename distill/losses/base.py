"""The contract every distillation loss follows.

A loss is an ``nn.Module`` built from its recipe parameters and a
:class:`LossContext` (what the problem looks like), and called with the
student's and the teacher's :class:`~distill.models.FeatureRecord` and the
:class:`Batch`. It returns a scalar; the trainer multiplies it by the term's
weight. Modules a loss owns (projection heads, regressors) train with the
student: the loss lists them through :meth:`DistillLoss.trainable_parameters`.
State that is not trained (memory banks) lives in buffers and is checkpointed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from distill.models.features import FeatureRecord, FeatureShapes


@dataclass(frozen=True)
class LossContext:
    """What a loss may know when it is built.

    Attributes:
        student: per-sample feature shapes of the student (from one dry forward pass).
        teacher: the same for the teacher, or None when training without one.
        num_classes: number of classes of the task.
        dataset_size: number of training samples (memory banks are this long).
        labels: the training labels, LongTensor[dataset_size] (class-aware sampling).
        student_arch: the student's architecture name.
        teacher_arch: the teacher's architecture name, or None.
        batch_size: training batch size per process (0 when unknown).
        views: how many views of each image both networks see per step (1, or the
            length of the recipe's ``data.views.shared``; see :class:`MultiViewLoss`).
    """

    student: FeatureShapes
    teacher: FeatureShapes | None
    num_classes: int
    dataset_size: int
    labels: Tensor
    student_arch: str = ""
    teacher_arch: str | None = None
    batch_size: int = 0
    views: int = 1


@dataclass
class Batch:
    """One training batch: images, their labels and their dataset indices."""

    inputs: Tensor
    labels: Tensor
    indices: Tensor


@dataclass
class InitStage:
    """A stage that trains some modules before the main training, declared by a loss.

    The reference's two-stage methods (AB, FT, FSP; RepDistiller ``helper/pretrain.py``)
    first train their own modules (and, for AB and FSP, the student's feature layers)
    for 30 epochs with a constant learning rate and a fresh SGD optimiser, with the
    student and teacher otherwise in eval mode. The recipe's ``init:`` section can
    override ``epochs`` and ``lr``.

    Attributes:
        loss: the stage's objective, called like a loss's forward:
            ``loss(student_record, teacher_record, batch) -> scalar``.
        modules: the loss's own modules that train in the stage (put in train mode).
        train_student_features: also train the student's ``feature_modules()``.
        epochs: number of epochs (the reference: 30).
        lr: constant learning rate; None means the recipe's ``optimizer.lr``.
        freeze_after: the modules stop training afterwards (FT's paraphraser).
    """

    loss: Callable[..., Tensor]
    modules: list[nn.Module]
    train_student_features: bool = False
    epochs: int = 30
    lr: float | None = None
    freeze_after: bool = False


def missing_teacher_message(cls: type) -> str:
    """Why a loss that declares ``requires_teacher`` cannot be built without a teacher, and what to do."""
    return (
        f"{cls.__name__} needs a teacher (requires_teacher = True), but none was given: add a teacher "
        f"to the recipe (teacher.name, or teacher.arch and teacher.checkpoint) or remove this term; "
        f"a loss that works without one sets requires_teacher = False"
    )


class DistillLoss(nn.Module):
    """Base class of registered losses.

    Subclasses take ``context`` first and then their parameters as keyword-only
    arguments with type annotations and defaults: the recipe's keys are checked
    against that signature before training starts.

    ``requires_teacher`` (default True) is enforced here, once for every loss,
    plugins included: a loss that needs a teacher is refused when its context has
    none, so a subclass may read ``context.teacher`` after ``super().__init__``.
    A loss that works on the student alone (``ce``) sets it to False.
    """

    requires_teacher: ClassVar[bool] = True

    def __init__(self, context: LossContext) -> None:
        if self.requires_teacher and context.teacher is None:
            raise ValueError(missing_teacher_message(type(self)))
        super().__init__()
        self.context = context

    def forward(self, student: FeatureRecord, teacher: FeatureRecord | None, batch: Batch) -> Tensor:
        raise NotImplementedError

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters optimised together with the student (by default: all that require grad)."""
        return (p for p in self.parameters() if p.requires_grad)

    def self_synchronised_buffers(self) -> list[str]:
        """Names of buffers the loss keeps identical across processes itself.

        DDP would otherwise broadcast them from rank 0 at every step (memory banks:
        tens of MB). Default: none.
        """
        return []

    def process_state(self) -> dict[str, Any]:
        """State of this process that ``state_dict`` does not hold, for exact resume. Default: none.

        ``state_dict`` is saved once, from the main process, so it must be the same
        on every process (parameters, banks). What differs between processes, such
        as a private random generator, goes here: the trainer saves it for each
        process and hands each its own back through :meth:`load_process_state`.
        Values must be tensors or plain Python data.
        """
        return {}

    def load_process_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`process_state` returned (on the same process index)."""

    def start_epoch(self, epoch: int, total_epochs: int) -> None:
        """Called by the trainer before each main-stage epoch (counted from 1): for schedules such as warm-up.

        The only place a Python value the step reads may change: under ``cuda_graph: true``
        the step's Python runs once per epoch, when the graph is captured
        (:mod:`distill.engine.step_graph`), so per-step state belongs in tensors.
        """

    def random_generators(self) -> list[torch.Generator]:
        """The private generators the loss draws from inside a step (a CUDA graph registers them). Default: none."""
        return []

    def init_stage(self) -> InitStage | None:
        """The loss's init stage, trained before the main epochs; None (default) for none."""
        return None

    def summary(self) -> str | None:
        """One line the trainer logs at start (settings, bounds); None for nothing."""
        return None


class MultiViewLoss(DistillLoss):
    """A loss that sees every view of a step at once (MLKD's weak and strong views).

    In a run whose ``data.views.shared`` lists several views, both networks run on
    each view. An ordinary :class:`DistillLoss` is then called once per view and its
    terms are summed (MLKD's code sums its cross-entropy over both views the same
    way). A ``MultiViewLoss`` is called once, with the records of all views in the
    order the recipe lists them, and ``batch.inputs`` holding the first view's student
    inputs. ``required_views`` is checked when the loss is built: a recipe that gives
    it another number of views is refused with what to add.
    """

    required_views: ClassVar[int] = 2

    def __init__(self, context: LossContext) -> None:
        super().__init__(context)
        if context.views != self.required_views:
            raise ValueError(
                f"{type(self).__name__} needs {self.required_views} views of each image per step, but the run has "
                f"{context.views}; list them in data.views.shared (for example "
                f"[{{name: standard}}, {{name: fixmatch_strong}}] for a weak and a strong view)"
            )

    def forward(  # type: ignore[override]
        self, student: Sequence[FeatureRecord], teacher: Sequence[FeatureRecord | None], batch: Batch
    ) -> Tensor:
        raise NotImplementedError


__all__ = ["Batch", "DistillLoss", "InitStage", "LossContext", "MultiViewLoss"]
