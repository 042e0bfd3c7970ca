"""Cross-entropy with the ground-truth labels: the supervised term."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from distill.losses.base import Batch, DistillLoss, LossContext
from distill.losses.registry import register_loss
from distill.models.features import FeatureRecord


@register_loss("ce")
class CrossEntropyLoss(DistillLoss):
    """Mean cross-entropy of the student's logits against the labels.

    Args:
        label_smoothing: mass spread uniformly over the classes (0 = none, the reference).
    """

    requires_teacher = False

    def __init__(self, context: LossContext, *, label_smoothing: float = 0.0) -> None:
        super().__init__(context)
        self.label_smoothing = label_smoothing

    def forward(self, student: FeatureRecord, teacher: FeatureRecord | None, batch: Batch) -> Tensor:
        return F.cross_entropy(student.logits, batch.labels, label_smoothing=self.label_smoothing)

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"
