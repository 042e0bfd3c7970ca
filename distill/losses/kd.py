"""Hinton et al., "Distilling the Knowledge in a Neural Network" (2015).

L_KD = T² · (1/B) · Σ_i KL( softmax(z_t,i / T) ‖ softmax(z_s,i / T) )

The T² factor keeps the gradient magnitude independent of the temperature
(Hinton et al., §2); the batch mean matches RepDistiller's ``DistillKL``.

With ``standardize: true`` this is KD+LS (Sun et al., "Logit Standardization in
Knowledge Distillation", CVPR 2024, Algorithm 2): both logit sets are z-scored per
sample first (:mod:`distill.losses.logit_standardization`), then softened by T = τ:

    L_KD+LS = τ² · (1/B) · Σ_i KL( softmax(Z(z_t,i) / τ) ‖ softmax(Z(z_s,i) / τ) )

as in the authors' ``mdistiller/distillers/KD.py`` L12–46 (logit-standardization-KD
@f6e5aa5). The student's z-score is differentiated through. The cross-entropy term
stays on the raw logits: it is the recipe's separate ``ce`` term.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from distill.losses.base import Batch, DistillLoss, LossContext
from distill.losses.logit_standardization import StandardizeForm, check_standardize_options, compared_logits
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
        temperature: the softening temperature T (4 in the CRD benchmark; the base
            temperature τ of LS, 2 to 4 in the LSKD runs).
        standardize: z-score both logit sets before the temperature (logit
            standardization, KD+LS). Off by default: plain Hinton KD.
        standardize_form: ``"code"`` (the authors' released code: unbiased std + 1e-7,
            which produced their numbers) or ``"paper"`` (Algorithm 1: population std).
    """

    def __init__(
        self,
        context: LossContext,
        *,
        temperature: float = 4.0,
        standardize: bool = False,
        standardize_form: StandardizeForm = "code",
    ) -> None:
        super().__init__(context)
        if temperature <= 0:
            raise ValueError(f"kd temperature must be positive, got {temperature}")
        check_standardize_options("kd", standardize, standardize_form)
        self.temperature = temperature
        self.standardize = standardize
        self.standardize_form = standardize_form

    def forward(self, student: FeatureRecord, teacher: FeatureRecord | None, batch: Batch) -> Tensor:
        student_logits, teacher_logits = compared_logits(student.logits, teacher.logits, self.standardize, self.standardize_form)
        return kd_divergence(student_logits, teacher_logits, self.temperature)

    def summary(self) -> str | None:
        if not self.standardize:
            return None  # plain KD: nothing beyond the recipe's line to report
        return f"T={self.temperature}, logit standardization ({self.standardize_form} form)"

    def extra_repr(self) -> str:
        if self.standardize:
            return f"temperature={self.temperature}, standardize={self.standardize_form!r}"
        return f"temperature={self.temperature}"
