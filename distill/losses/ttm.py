"""TTM and WTTM: Zheng & Yang, "Knowledge Distillation Based on Transformed Teacher Matching" (ICLR 2024).

TTM drops the temperature from the student and keeps it only on the teacher, written as a
power transform of the teacher's probabilities p_t = softmax(z_t):

    p̃_t(k) = p_t(k)^γ / Σ_j p_t(j)^γ = softmax(γ · z_t)(k)     (the teacher at T = 1/γ)
    q_s = softmax(z_s)                                          (no temperature)
    L_TTM  = (1/B) Σ_i KL(p̃_t,i ‖ q_s,i)                        (no T² factor)
    L_WTTM = (1/B) Σ_i U_γ(p_t,i) · KL(p̃_t,i ‖ q_s,i),   U_γ(p) = Σ_k p_k^γ

U_γ is the power sum of the *untransformed* teacher probabilities, exp((1 − γ)·H_γ(p))
with H_γ the Rényi entropy of order γ: for γ < 1 a smoother teacher weighs more. It comes
from the teacher alone, so no gradient flows through it. As coded by the authors
(``zkxufo/TTM``, ``distiller_zoo/ttm.py`` and ``distiller_zoo/wttm.py``; the paper's
abstract says KD equals TTM plus a Rényi-entropy regulariser, the derivation itself was
not read).

Relation to KD (:func:`distill.losses.kd.kd_divergence`), exact: with T = 1/γ,

    L_TTM(z_s, z_t; γ) = γ² · KD(T · z_s, z_t; T) = KL(softmax(z_t / T) ‖ softmax(z_s)),

i.e. TTM is KD at temperature T whose T² factor is removed and whose student logits are
not divided by T. With the same student logits KD instead compares against
softmax(z_s / T).

Here everything stays in log space: log p̃_t = log_softmax(γ · z_t) (the authors raise the
softmax to the power γ and renormalise, equal up to rounding) and
log U_γ = logsumexp(γ · log p_t).

``standardize: true`` z-scores both logit sets (:func:`standardize_logits`) first; the
teacher transform γ and the weight U_γ then act on the standardized teacher logits, and the
student's standardized logits enter the softmax unscaled (TTM has no student temperature),
so the student's distribution is limited to what a unit-variance logit vector can express.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.losses.base import Batch, DistillLoss, LossContext
from distill.losses.logit_standardization import StandardizeForm, check_standardize_options, compared_logits
from distill.losses.precision import at_least_float32
from distill.losses.registry import register_loss
from distill.models.features import FeatureRecord


def _check_logits(name: str, student_logits: Tensor, teacher_logits: Tensor) -> None:
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"{name} needs student and teacher logits of the same shape B×C, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )


def transformed_teacher_log_probs(teacher_logits: Tensor, gamma: float) -> Tensor:
    """log p̃_t: the log of the power-transformed teacher p_t^γ / Σ p_t^γ, i.e. log_softmax(γ · z_t), B×C."""
    return F.log_softmax(gamma * teacher_logits, dim=1)


def power_sum(teacher_logits: Tensor, gamma: float) -> Tensor:
    """U_γ(p_t) = Σ_k p_t(k)^γ with p_t = softmax(z_t) (temperature 1), one value per row: a tensor of B."""
    return torch.logsumexp(gamma * F.log_softmax(at_least_float32(teacher_logits), dim=1), dim=1).exp()


def ttm_divergence(student_logits: Tensor, teacher_logits: Tensor, gamma: float) -> Tensor:
    """Per-sample KL(p̃_t ‖ softmax(z_s)) with p̃_t = softmax(γ · z_t): a tensor of B (the teacher is not differentiated)."""
    _check_logits("ttm/wttm", student_logits, teacher_logits)
    log_q = F.log_softmax(at_least_float32(student_logits), dim=1)
    log_p = transformed_teacher_log_probs(teacher_logits.detach().to(log_q.dtype), gamma)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def ttm_loss(student_logits: Tensor, teacher_logits: Tensor, gamma: float) -> Tensor:
    """L_TTM: the batch mean of KL(p̃_t ‖ q_s), without a T² factor."""
    return ttm_divergence(student_logits, teacher_logits, gamma).mean()


def wttm_loss(student_logits: Tensor, teacher_logits: Tensor, gamma: float) -> Tensor:
    """L_WTTM: the batch mean of U_γ(p_t) · KL(p̃_t ‖ q_s), the weight a constant (no gradient)."""
    weight = power_sum(teacher_logits.detach(), gamma)
    divergence = ttm_divergence(student_logits, teacher_logits, gamma)
    return (weight.to(divergence.dtype) * divergence).mean()


@register_loss("ttm")
class TTMLoss(DistillLoss):
    """Transformed teacher matching: KL from the teacher at temperature 1/γ to the untempered student.

    Args:
        gamma: the power γ of the teacher transform (the authors' ``--ttm_l``; the teacher's
            temperature is 1/γ, γ < 1 smooths it). Their README's TTM example (vgg13 → vgg8)
            is γ = 0.1 with loss weight 45.
        standardize: z-score both logit sets first (logit standardization).
    """

    weighted: ClassVar[bool] = False
    method: ClassVar[str] = "ttm"

    def __init__(
        self, context: LossContext, *, gamma: float = 0.1, standardize: bool = False, standardize_form: StandardizeForm = "code"
    ) -> None:
        super().__init__(context)
        check_standardize_options(self.method, standardize, standardize_form)
        if gamma <= 0:
            raise ValueError(f"{self.method} gamma (the teacher's power, 1/T) must be positive, got {gamma}")
        self.gamma = gamma
        self.standardize, self.standardize_form = standardize, standardize_form

    def forward(self, student: FeatureRecord, teacher: FeatureRecord | None, batch: Batch) -> Tensor:
        student_logits, teacher_logits = compared_logits(student.logits, teacher.logits, self.standardize, self.standardize_form)
        if self.weighted:
            return wttm_loss(student_logits, teacher_logits, self.gamma)
        return ttm_loss(student_logits, teacher_logits, self.gamma)

    def summary(self) -> str:
        weight = ", each sample weighted by U_gamma(p_t) = sum_k p_t(k)^gamma" if self.weighted else ""
        ls = ", logits standardized first" if self.standardize else ""
        return f"gamma={self.gamma} (teacher T = {1 / self.gamma:g}, student T = 1, no T² factor){weight}{ls}"

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, standardize={self.standardize}"


@register_loss("wttm")
class WTTMLoss(TTMLoss):
    """Weighted TTM: TTM with each sample's KL weighted by U_γ(p_t) = Σ_k p_t(k)^γ of the teacher.

    Args:
        gamma: the power γ of the teacher transform (the authors' ``--ttm_l``). Their
            README's WTTM+CRD example (vgg13 → vgg8) is γ = 0.2 with WTTM weight 4.
        standardize: z-score both logit sets first (logit standardization).
    """

    weighted: ClassVar[bool] = True
    method: ClassVar[str] = "wttm"

    def __init__(
        self, context: LossContext, *, gamma: float = 0.2, standardize: bool = False, standardize_form: StandardizeForm = "code"
    ) -> None:
        super().__init__(context, gamma=gamma, standardize=standardize, standardize_form=standardize_form)
