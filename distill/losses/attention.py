"""Attention transfer (Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017).

Activation-based spatial attention of a C×H×W map A (§3.1):

    F^p(A) = Σ_c |A_c|^p                          (here the channel *mean*; the
                                                   normalisation removes the 1/C)
    Q = vec(F^p(A)) / ‖vec(F^p(A))‖₂

and the transfer term (Eq. 2) compares the normalised attention vectors of each
student/teacher pair j:

    Σ_j ‖ Q_S^j − Q_T^j ‖

As in the CRD benchmark (RepDistiller ``Attention``), the distance is the *mean*
of the squared differences over the batch and the H·W positions, summed over the
layers; p = 2. The pairs are ``feats[1:-1]``, i.e. ``FeatureRecord.maps[1:]``
(post-activation). When a pair's spatial sizes differ, the larger map is
adaptive-average-pooled to the smaller before its attention is taken.

|A|^p is used as in the paper; for even p (the benchmark's p = 2) it equals the
reference's A^p, and it stays defined for fractional p on maps with negative
values (MobileNetV2's linear bottlenecks).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from distill.losses.base import Batch, DistillLoss, LossContext
from distill.losses.feature_pairs import match_spatial_sizes
from distill.losses.registry import register_loss
from distill.models.features import FeatureRecord

NORMALISE_EPS = 1e-12
"""``F.normalize``'s default, as in the reference."""


def attention_map(feature_map: Tensor, p: float = 2.0) -> Tensor:
    """Q = normalise(vec(mean_c |A_c|^p)): a B×(H·W) tensor of unit rows."""
    attention = feature_map.float().abs().pow(p).mean(dim=1)
    return F.normalize(attention.flatten(1), dim=1, eps=NORMALISE_EPS)


def attention_transfer_layer_loss(student_map: Tensor, teacher_map: Tensor, p: float = 2.0) -> Tensor:
    """mean over batch and positions of (Q_S − Q_T)² for one pair of maps (teacher detached)."""
    student_map, teacher_map = match_spatial_sizes(student_map, teacher_map.detach())
    return (attention_map(student_map, p) - attention_map(teacher_map, p)).pow(2).mean()


def attention_transfer_loss(student_maps: list[Tensor], teacher_maps: list[Tensor], p: float = 2.0) -> Tensor:
    """Σ over the pairs of :func:`attention_transfer_layer_loss`."""
    if len(student_maps) != len(teacher_maps) or not student_maps:
        raise ValueError(f"attention transfer needs the same, non-zero number of maps, got {len(student_maps)} and {len(teacher_maps)}")
    return sum(attention_transfer_layer_loss(s, t, p) for s, t in zip(student_maps, teacher_maps))


@register_loss("at")
class AttentionTransferLoss(DistillLoss):
    """AT on every intermediate map (``maps[1:]``), student and teacher paired in order.

    Args:
        p: the exponent of the attention map (2 in the paper and the benchmark).
    """

    def __init__(self, context: LossContext, *, p: float = 2.0) -> None:
        super().__init__(context)
        if p <= 0:
            raise ValueError(f"at: p must be positive, got {p}")
        student_maps, teacher_maps = context.student.maps[1:], context.teacher.maps[1:]
        if len(student_maps) != len(teacher_maps) or not student_maps:
            student = context.student_arch or "the student"
            teacher = context.teacher_arch or "the teacher"
            raise ValueError(
                f"at pairs the intermediate feature maps (all maps but the first) in order, so both networks need "
                f"the same number of them: {student} has {len(student_maps)}, {teacher} has {len(teacher_maps)}; "
                f"pair networks with as many maps, use another loss for this pair, or remove the at term"
            )
        for index, (s, t) in enumerate(zip(student_maps, teacher_maps), start=1):
            if len(s) != 3 or len(t) != 3:
                raise ValueError(f"at needs C×H×W feature maps; map {index} has shapes {s} (student) and {t} (teacher)")
        self.p = p

    def forward(self, student: FeatureRecord, teacher: FeatureRecord | None, batch: Batch) -> Tensor:
        return attention_transfer_loss(student.maps[1:], teacher.maps[1:], self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"
