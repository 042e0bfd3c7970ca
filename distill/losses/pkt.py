"""Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge
Transfer", ECCV 2018.

PKT matches the conditional probability distributions p_{i|j} that the
student's and the teacher's embeddings induce over the batch. The kernel is the
cosine similarity shifted to [0, 1] (the paper's cosine-similarity kernel):

    K(x_i, x_j) = ½ (xᵢᵀ x_j / (‖x_i‖ ‖x_j‖) + 1),   p_{i|j} = K(x_i, x_j) / Σ_k K(x_k, x_j),

and the loss is the KL divergence of the student's from the teacher's distribution:

    Σ_{i,j} p^t_{i|j} · log((p^t_{i|j} + ε) / (p^s_{i|j} + ε)),   ε = 1e-7.

Averaging: as RepDistiller's ``PKT`` does, the B×B matrix of KL terms is
*averaged* over its B² entries (the diagonal included), i.e. the sum above is
divided by B². The vectors are normalised as x / (‖x‖ + ε) and the kernel
matrix is normalised along its rows (each row sums to 1), both as in the
reference; K is symmetric, so normalising its rows instead of its columns
(as p_{i|j} is written above) only transposes both p matrices and leaves the
sum unchanged.

Features: the pooled embedding (reference ``feats[-1]``), flattened to B×D.
The student and teacher dimensions may differ.
"""

from __future__ import annotations

from torch import Tensor

from distill.losses.base import Batch, DistillLoss, LossContext
from distill.losses.registry import register_loss
from distill.models.features import FeatureRecord


def pkt_probabilities(embeddings: Tensor, eps: float = 1e-7) -> Tensor:
    """The B×B row-stochastic matrix of shifted cosine similarities (the p_{i|j} of Passalis & Tefas)."""
    unit = embeddings / (embeddings.norm(p=2, dim=1, keepdim=True) + eps)
    similarity = (unit @ unit.t() + 1.0) / 2.0
    return similarity / similarity.sum(dim=1, keepdim=True)


def pkt_divergence(student: Tensor, teacher: Tensor, eps: float = 1e-7) -> Tensor:
    """Mean over the B² entries of p_t · log((p_t + ε) / (p_s + ε)) (Passalis & Tefas, KL form)."""
    p_student = pkt_probabilities(student.flatten(1).float(), eps)
    p_teacher = pkt_probabilities(teacher.flatten(1).float().detach(), eps)
    return (p_teacher * ((p_teacher + eps) / (p_student + eps)).log()).mean()


@register_loss("pkt")
class PKTLoss(DistillLoss):
    """Probabilistic knowledge transfer on the pooled embeddings.

    Args:
        eps: ε of the vector normalisation and of the logarithm (1e-7 in the reference).
    """

    def __init__(self, context: LossContext, *, eps: float = 1e-7) -> None:
        super().__init__(context)
        if eps <= 0:
            raise ValueError(f"pkt eps must be positive, got {eps}")
        self.eps = eps

    def forward(self, student: FeatureRecord, teacher: FeatureRecord | None, batch: Batch) -> Tensor:
        return pkt_divergence(student.pooled, teacher.pooled, self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"
