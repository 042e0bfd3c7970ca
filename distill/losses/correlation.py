"""Correlation congruence (Peng et al., "Correlation Congruence for Knowledge Distillation", ICCV 2019).

The paper matches the teachers' and the students' sample-to-sample correlation
matrices, L_CC = (1/n²)·‖ψ(F_t) − ψ(F_s)‖²₂ with a Taylor-approximated Gaussian
kernel ψ (Eq. 4–8). The CRD benchmark (RepDistiller ``Correlation``, from code
the authors shared) computes something else, and this module follows the
benchmark: both pooled vectors (``feats[-1]``, i.e. ``FeatureRecord.pooled``)
are embedded by a trainable linear layer each (no normalisation, ``feat_dim``
= 128), and with Δ = e_s − e_t

    L = (1 / (B − 1)) · Σ_{i=1}^{B−1} Σ_c |Δ_{i,c}| · |Δ_{i+1,c}|

i.e. the mean over the B − 1 pairs of *adjacent* batch rows (the reference's
``mean((|Δ|[:-1] · |Δ|[1:]).sum(1))``), not over B rows. A batch of one sample
has no adjacent pair; it gives 0 (the reference would give NaN), still
connected to the embeddings so that every trainable parameter receives a
(zero) gradient.
"""

from __future__ import annotations

from torch import Tensor, nn

from distill.losses.base import Batch, DistillLoss, LossContext
from distill.losses.registry import register_loss
from distill.models.features import FeatureRecord


def correlation_congruence(student_embedding: Tensor, teacher_embedding: Tensor) -> Tensor:
    """mean over adjacent row pairs (i, i+1) of Σ_c |Δ_i,c|·|Δ_i+1,c|, Δ = e_s − e_t (B − 1 pairs)."""
    if student_embedding.shape != teacher_embedding.shape:
        raise ValueError(
            f"cc: the embeddings must have the same shape, got {tuple(student_embedding.shape)} "
            f"and {tuple(teacher_embedding.shape)}"
        )
    delta = (student_embedding.float() - teacher_embedding.float()).abs()
    if delta.shape[0] < 2:
        return delta.sum() * 0.0
    return (delta[:-1] * delta[1:]).sum(dim=1).mean()


class LinearEmbed(nn.Module):
    """The reference's ``LinearEmbed``: flatten, then one linear layer (no normalisation)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(features.flatten(1))


@register_loss("cc")
class CorrelationCongruenceLoss(DistillLoss):
    """CC on the pooled embeddings, through two trainable linear embeddings.

    Args:
        feat_dim: the embedding dimension (128 in the benchmark).
    """

    def __init__(self, context: LossContext, *, feat_dim: int = 128) -> None:
        super().__init__(context)
        if feat_dim < 1:
            raise ValueError(f"cc: feat_dim must be positive, got {feat_dim}")
        self.feat_dim = feat_dim
        self.embed_student = LinearEmbed(context.student.pooled_dim, feat_dim)
        self.embed_teacher = LinearEmbed(context.teacher.pooled_dim, feat_dim)

    def forward(self, student: FeatureRecord, teacher: FeatureRecord | None, batch: Batch) -> Tensor:
        return correlation_congruence(self.embed_student(student.pooled), self.embed_teacher(teacher.pooled.detach()))

    def extra_repr(self) -> str:
        return f"feat_dim={self.feat_dim}"
