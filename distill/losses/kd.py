"""Hinton et al., "Distilling the Knowledge in a Neural Network" (2015).

L_KD = T² · (1/B) · Σ_i KL( softmax(z_t,i / T) ‖ softmax(z_s,i / T) )

The T² factor keeps the gradient magnitude independent of the temperature
(Hinton et al., §2); the batch mean matches RepDistiller's ``DistillKL``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from distill.losses.base import Batch, DistillLoss, LossContext
from distill.losses.registry import register_loss
from distill.models.features import FeatureRecord


def kd_divergence(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T² · batch-mean KL(teacher ‖ student) between temperature-softened distributions."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


@register_loss("kd")
class KDLoss(DistillLoss):
    """Knowledge distillation from the teacher's softened logits.

    Args:
        temperature: the softening temperature T (4 in the CRD benchmark).
    """

    def __init__(self, context: LossContext, *, temperature: float = 4.0) -> None:
        super().__init__(context)
        if temperature <= 0:
            raise ValueError(f"kd temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(self, student: FeatureRecord, teacher: FeatureRecord | None, batch: Batch) -> Tensor:
        return kd_divergence(student.logits, teacher.logits, self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
