"""Park et al., "Relational Knowledge Distillation", CVPR 2019.

RKD transfers the *relations* between the embeddings of a batch rather than
the embeddings themselves, so the student's and the teacher's dimensions may
differ. Two relational potentials ψ are matched with the Huber loss l_δ,
l_δ(x, y) = ½(x − y)² if |x − y| ≤ 1 else |x − y| − ½ (``F.smooth_l1_loss``
with beta = 1). In the paper's notation (t: teacher, s: student embeddings):

* distance-wise loss  L_RKD-D = Σ_{(i,j)} l_δ(ψ_D(t_i, t_j), ψ_D(s_i, s_j)),
  ψ_D(t_i, t_j) = ‖t_i − t_j‖₂ / μ, with μ the mean distance over the pairs of
  the batch (the reference takes the mean over the non-zero entries of the B×B
  distance matrix, i.e. over the off-diagonal pairs of distinct embeddings);
* angle-wise loss  L_RKD-A = Σ_{(i,j,k)} l_δ(ψ_A(t_i, t_j, t_k), ψ_A(s_i, s_j, s_k)),
  ψ_A(t_i, t_j, t_k) = cos∠t_i t_j t_k = ⟨e_ij, e_kj⟩,
  e_ij = (t_i − t_j) / ‖t_i − t_j‖₂ (the angle at vertex j).

L_RKD = λ_D · L_RKD-D + λ_A · L_RKD-A with the reference weights
λ_D = 25 and λ_A = 50. As in RepDistiller's ``RKDLoss``, the smooth-L1 is
averaged over all B² entries of the distance matrix (its zero diagonal
included) and over all B³ entries of the angle tensor (the degenerate triplets
with i = j or k = j have e = 0, hence angle 0, in both networks).

Features: the pooled embedding (reference ``feats[-1]``), flattened to B×D.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.losses.base import Batch, DistillLoss, LossContext
from distill.losses.registry import register_loss
from distill.models.features import FeatureRecord

_SQUARED_DISTANCE_FLOOR = 1e-12  # keeps sqrt differentiable for coincident points
_MEAN_FLOOR = 1e-12  # all-coincident batches (B = 1) give zero distances, not NaN


def pairwise_distances(embeddings: Tensor) -> Tensor:
    """The B×B matrix of Euclidean distances ‖x_i − x_j‖₂, with an exact zero diagonal."""
    squared_norms = embeddings.pow(2).sum(dim=1)
    squared = squared_norms.unsqueeze(1) + squared_norms.unsqueeze(0) - 2.0 * embeddings @ embeddings.t()
    distances = squared.clamp(min=_SQUARED_DISTANCE_FLOOR).sqrt()
    off_diagonal = 1.0 - torch.eye(embeddings.shape[0], device=embeddings.device, dtype=distances.dtype)
    return distances * off_diagonal


def normalised_distances(embeddings: Tensor) -> Tensor:
    """ψ_D of Park et al.: distances divided by their mean over the non-zero pairs."""
    distances = pairwise_distances(embeddings)
    positive = distances > 0
    mean = distances.sum() / positive.sum().clamp(min=1)
    return distances / mean.clamp(min=_MEAN_FLOOR)


def rkd_distance_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """L_RKD-D of Park et al.: smooth-L1 between the normalised distance matrices (B² mean)."""
    return F.smooth_l1_loss(normalised_distances(student), normalised_distances(teacher))


def triplet_angles(embeddings: Tensor) -> Tensor:
    """ψ_A of Park et al.: the B×B×B tensor A[i, j, k] = ⟨e_ij, e_kj⟩, e_ij = (x_i − x_j)/‖x_i − x_j‖.

    e_jj is the zero vector (``F.normalize`` leaves it at 0), so triplets with
    i = j or k = j have angle 0.
    """
    # differences[j, i] = x_i − x_j: the vectors leaving vertex j
    differences = embeddings.unsqueeze(0) - embeddings.unsqueeze(1)
    unit = F.normalize(differences, p=2, dim=2)
    cosines = torch.bmm(unit, unit.transpose(1, 2))  # cosines[j, i, k] = ⟨e_ij, e_kj⟩
    return cosines.permute(1, 0, 2)


def rkd_angle_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """L_RKD-A of Park et al.: smooth-L1 between the triplet angle tensors (B³ mean)."""
    return F.smooth_l1_loss(triplet_angles(student), triplet_angles(teacher))


def rkd_loss(student: Tensor, teacher: Tensor, distance_weight: float, angle_weight: float) -> Tensor:
    """λ_D · L_RKD-D + λ_A · L_RKD-A on B×D embeddings (teacher's treated as constants)."""
    student = student.flatten(1).float()
    teacher = teacher.flatten(1).float().detach()
    loss = student.new_zeros(())
    if distance_weight:
        loss = loss + distance_weight * rkd_distance_loss(student, teacher)
    if angle_weight:
        loss = loss + angle_weight * rkd_angle_loss(student, teacher)
    return loss


@register_loss("rkd")
class RKDLoss(DistillLoss):
    """Relational KD on the pooled embeddings: distance and angle potentials.

    Args:
        distance_weight: λ_D, the weight of the distance-wise term (25 in the reference).
        angle_weight: λ_A, the weight of the angle-wise term (50 in the reference).
    """

    def __init__(self, context: LossContext, *, distance_weight: float = 25.0, angle_weight: float = 50.0) -> None:
        super().__init__(context)
        if distance_weight < 0 or angle_weight < 0:
            raise ValueError(
                f"rkd weights must be non-negative, got distance_weight={distance_weight}, angle_weight={angle_weight}"
            )
        self.distance_weight = distance_weight
        self.angle_weight = angle_weight

    def forward(self, student: FeatureRecord, teacher: FeatureRecord | None, batch: Batch) -> Tensor:
        return rkd_loss(student.pooled, teacher.pooled, self.distance_weight, self.angle_weight)

    def extra_repr(self) -> str:
        return f"distance_weight={self.distance_weight}, angle_weight={self.angle_weight}"
