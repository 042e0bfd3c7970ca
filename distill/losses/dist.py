"""DIST: Huang et al., "Knowledge Distillation from A Stronger Teacher" (NeurIPS 2022).

DIST asks the student to reproduce the teacher's *relations* between predictions rather
than the predictions themselves: a Pearson correlation, which ignores shifts and scales,
replaces KL's exact match. With Y = softmax(z / τ) for student and teacher (B×C):

* inter-class relation, per sample across the C classes:
  L_inter = 1 − (1/B) Σ_i ρ(Y_s[i, :], Y_t[i, :]);
* intra-class relation, per class across the B samples of the batch:
  L_intra = 1 − (1/C) Σ_c ρ(Y_s[:, c], Y_t[:, c]);
* L_DIST = τ² · (β · L_inter + γ · L_intra).

ρ(a, b) = ⟨a − ā, b − b̄⟩ / (‖a − ā‖ · ‖b − b̄‖ + ε) with ε = 1e-8 added to the *product*
of the norms, as the authors' code does (``hunto/image_classification_sota``,
``lib/models/losses/dist_kd.py``; the same function is ``hunto/DIST_KD``
``segmentation/losses/dist_kd.py`` and ``zkxufo/TTM`` ``distiller_zoo/dist.py``, where τ²
multiplies both terms). The released CIFAR-100 configuration
(``configs/strategies/distill/dist_cifar.yaml``, ``kd: dist_t4``) uses τ = 4, β = γ = 1
and weights the loss by 2 against CE 1: ``recipes/cifar100/_base_/dist.yaml``.

The intra-class term is a statistic of the batch: its value, and so the training, depends
on the batch size and composition (a smaller last batch, or the per-process batch under
several processes, changes it). With one sample it is the constant 1 (no gradient).

``standardize: true`` z-scores both logit sets (:func:`standardize_logits`, Sun et al.,
CVPR 2024) before the temperature.
"""

from __future__ import annotations

import torch
from torch import Tensor

from distill.losses.base import Batch, DistillLoss, LossContext
from distill.losses.logit_standardization import StandardizeForm, check_standardize_options, compared_logits
from distill.losses.precision import at_least_float32
from distill.losses.registry import register_loss
from distill.models.features import FeatureRecord

PEARSON_EPS = 1e-8
"""The epsilon of the authors' code, added to the product of the two norms."""


def pearson_rows(a: Tensor, b: Tensor, eps: float = PEARSON_EPS) -> Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (both N×D): a tensor of N.

    ρ = ⟨a − ā, b − b̄⟩ / (‖a − ā‖·‖b − b̄‖ + eps), means and norms over the D entries of a row.
    A constant row has zero deviation and gets ρ = 0 (not NaN), with a finite gradient.
    """
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    # vector_norm's backward is 0 (not NaN) at a zero vector, unlike sqrt of a sum of squares.
    norms = torch.linalg.vector_norm(a, dim=1) * torch.linalg.vector_norm(b, dim=1)
    return (a * b).sum(dim=1) / (norms + eps)


def dist_terms(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """(L_inter, L_intra) of DIST, without τ² or the weights: two scalars in [0, 2].

    Args:
        student_logits: B×C.
        teacher_logits: B×C (not differentiated).
        tau: the softening temperature τ.
    """
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"dist needs student and teacher logits of the same shape B×C, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    student_logits = at_least_float32(student_logits)  # ε = 1e-8 and the centred products need float32
    y_s = torch.softmax(student_logits / tau, dim=1)
    y_t = torch.softmax(teacher_logits.detach().to(y_s.dtype) / tau, dim=1)
    inter = 1 - pearson_rows(y_s, y_t).mean()
    intra = 1 - pearson_rows(y_s.t(), y_t.t()).mean()
    return inter, intra


def dist_loss(student_logits: Tensor, teacher_logits: Tensor, tau: float, beta: float, gamma: float) -> Tensor:
    """L_DIST = τ² · (β · L_inter + γ · L_intra) (τ² on both terms, as the authors' code)."""
    inter, intra = dist_terms(student_logits, teacher_logits, tau)
    return tau**2 * (beta * inter + gamma * intra)


@register_loss("dist")
class DISTLoss(DistillLoss):
    """DIST: match the teacher's inter- and intra-class relations (Pearson correlations).

    Args:
        tau: the softening temperature τ (4 in the released CIFAR-100 configuration).
        beta: weight β of the inter-class term (1).
        gamma: weight γ of the intra-class term (1).
        standardize: z-score both logit sets before the temperature (logit standardization).
    """

    def __init__(
        self,
        context: LossContext,
        *,
        tau: float = 4.0,
        beta: float = 1.0,
        gamma: float = 1.0,
        standardize: bool = False,
        standardize_form: StandardizeForm = "code",
    ) -> None:
        super().__init__(context)
        check_standardize_options("dist", standardize, standardize_form)
        if tau <= 0:
            raise ValueError(f"dist tau must be positive, got {tau}")
        if beta < 0 or gamma < 0:
            raise ValueError(f"dist beta and gamma must not be negative, got beta={beta}, gamma={gamma}")
        self.tau = tau
        self.beta = beta
        self.gamma = gamma
        self.standardize, self.standardize_form = standardize, standardize_form

    def forward(self, student: FeatureRecord, teacher: FeatureRecord | None, batch: Batch) -> Tensor:
        student_logits, teacher_logits = compared_logits(student.logits, teacher.logits, self.standardize, self.standardize_form)
        return dist_loss(student_logits, teacher_logits, self.tau, self.beta, self.gamma)

    def summary(self) -> str:
        ls = ", logits standardized first" if self.standardize else ""
        return f"tau={self.tau}, beta={self.beta}, gamma={self.gamma} (tau² on both terms){ls}"

    def extra_repr(self) -> str:
        return f"tau={self.tau}, beta={self.beta}, gamma={self.gamma}, standardize={self.standardize}"
