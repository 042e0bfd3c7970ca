"""Similarity-preserving knowledge distillation (Tung & Mori, ICCV 2019).

For a batch of b maps flattened to Q ∈ R^{b×(C·H·W)} (Eq. 1–2):

    G̃ = Q·Qᵀ                     (b×b pairwise similarities)
    G[i, :] = G̃[i, :] / ‖G̃[i, :]‖₂  (row-wise L2 normalisation)

and the loss for one pair of layers (Eq. 4) is

    L_SP = (1 / b²) · ‖ G_T − G_S ‖²_F

Student and teacher may have any shapes: only the b×b matrices are compared.
As in the CRD benchmark (RepDistiller ``Similarity``) the single pair is
``feats[-2]``, i.e. ``FeatureRecord.maps[-1]``, the last map (post-activation).

The Gram matrix is computed in float32 with autocast off: in half precision the
dot products of C·H·W (e.g. 16,384) activations can overflow or lose the
differences that the normalised rows carry.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.losses.base import Batch, DistillLoss, LossContext
from distill.losses.registry import register_loss
from distill.models.features import FeatureRecord

NORMALISE_EPS = 1e-12
"""``F.normalize``'s default, as in the reference."""


def similarity_matrix(features: Tensor) -> Tensor:
    """Row-normalised G = normalise_rows(Q·Qᵀ) of the flattened batch (Eq. 1–2), a b×b float32 tensor."""
    flat = features.float().flatten(1)
    with torch.autocast(device_type=flat.device.type, enabled=False):
        gram = flat @ flat.t()
    return F.normalize(gram, dim=1, eps=NORMALISE_EPS)


def similarity_preserving_loss(student_features: Tensor, teacher_features: Tensor) -> Tensor:
    """‖G_T − G_S‖²_F / b² (Eq. 4), the teacher detached."""
    batch = student_features.shape[0]
    if teacher_features.shape[0] != batch:
        raise ValueError(f"sp: student and teacher batches differ ({batch} vs {teacher_features.shape[0]})")
    difference = similarity_matrix(teacher_features.detach()) - similarity_matrix(student_features)
    return difference.pow(2).sum() / (batch * batch)


@register_loss("sp")
class SimilarityPreservingLoss(DistillLoss):
    """SP on the last feature map of each network (``maps[-1]``)."""

    def __init__(self, context: LossContext) -> None:
        super().__init__(context)
        for role, shapes in (("student", context.student), ("teacher", context.teacher)):
            if not shapes.maps:
                raise ValueError(f"sp needs a feature map, and the {role} reports none")

    def forward(self, student: FeatureRecord, teacher: FeatureRecord | None, batch: Batch) -> Tensor:
        return similarity_preserving_loss(student.maps[-1], teacher.maps[-1])
