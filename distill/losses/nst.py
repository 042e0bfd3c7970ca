"""Huang & Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity
Transfer", arXiv 1707.01219 (2017).

NST treats each channel's spatial activation pattern as a sample of the
distribution of "neuron selectivities" and matches the student's distribution
to the teacher's with the squared Maximum Mean Discrepancy (Huang & Wang, the
NST loss). For one sample, with F ∈ R^{C×HW} and f^k its k-th channel, l2-normalised
over the spatial positions:

    MMD² = 1/C_t² Σ_{i,i'} k(f_t^i, f_t^i') + 1/C_s² Σ_{j,j'} k(f_s^j, f_s^j')
           − 2/(C_t C_s) Σ_{i,j} k(f_t^i, f_s^j),

with the polynomial kernel of degree 2 and c = 0, k(x, y) = (xᵀy)² ("NST-poly",
the variant RepDistiller's ``NSTLoss`` implements and the CRD benchmark runs).
The three kernel means are also averaged over the batch, and the layer losses
are summed.

Features: the intermediate maps (reference ``feats[1:-1]``, here ``maps[1:]``),
paired in order; where a pair's spatial sizes differ, the larger map is
adaptive-average-pooled to the smaller size (as the reference does). The
channel counts may differ.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from distill.losses.base import Batch, DistillLoss, LossContext
from distill.losses.feature_pairs import format_shape, match_spatial_sizes, paired_map_shapes
from distill.losses.registry import register_loss
from distill.models.features import FeatureRecord


def channel_patterns(feature_map: Tensor) -> Tensor:
    """B×C×H×W → B×C×HW with every channel's spatial vector l2-normalised."""
    return F.normalize(feature_map.flatten(2), p=2, dim=2)


def polynomial_kernel_mean(a: Tensor, b: Tensor) -> Tensor:
    """Mean over batch and channel pairs of k(a_i, b_j) = (a_iᵀ b_j)², for a: B×C_a×N, b: B×C_b×N."""
    return (a @ b.transpose(1, 2)).pow(2).mean()


def nst_mmd(student: Tensor, teacher: Tensor) -> Tensor:
    """Squared MMD with the degree-2 polynomial kernel between one pair of maps (Huang & Wang, NST-poly)."""
    student, teacher = match_spatial_sizes(student.float(), teacher.float().detach())
    f_s, f_t = channel_patterns(student), channel_patterns(teacher)
    return polynomial_kernel_mean(f_t, f_t) + polynomial_kernel_mean(f_s, f_s) - 2.0 * polynomial_kernel_mean(f_s, f_t)


@register_loss("nst")
class NSTLoss(DistillLoss):
    """Neuron selectivity transfer on the intermediate maps: Σ over layers of poly-kernel MMD²."""

    def __init__(self, context: LossContext) -> None:
        super().__init__(context)
        self.pairs = paired_map_shapes(context, "nst")

    def forward(self, student: FeatureRecord, teacher: FeatureRecord | None, batch: Batch) -> Tensor:
        return sum(nst_mmd(f_s, f_t) for f_s, f_t in zip(student.maps[1:], teacher.maps[1:], strict=True))

    def summary(self) -> str:
        pairs = ", ".join(f"{format_shape(s)}→{format_shape(t)}" for s, t in self.pairs)
        return f"poly-kernel MMD² over {len(self.pairs)} map pairs (student→teacher: {pairs})"

    def extra_repr(self) -> str:
        return f"layers={len(self.pairs)}"
