"""Ahn et al., "Variational Information Distillation for Knowledge Transfer", CVPR 2019.

VID maximises a variational lower bound on the mutual information I(t; s)
between a teacher feature map t and the student's s: I(t; s) ≥ H(t) + E[log q(t | s)].
H(t) does not depend on the student, so the loss is −log q(t | s) with a
Gaussian q whose mean μ(s) is a small regressor of the student map and whose
variance is heteroscedastic per channel, shared over space (Ahn et al., §3):

    −log q(t | s) = Σ_{c,h,w} [ log σ_c + (t_chw − μ_chw(s))² / (2 σ_c²) ] + const,
    σ_c² = log(1 + exp(α_c)) + ε.

As in RepDistiller's ``VIDLoss`` (the CRD benchmark's VID):

* μ is three 1×1 convolutions without bias, C_s→C_t→C_t→C_t, with ReLU between;
* α (``log_scale``) is a per-channel parameter initialised so that
  softplus(α) + ε = ``init_variance`` (5.0), with ε = 1e-5;
* the loss of a layer is the *mean* over all B·C_t·H·W elements of
  ½((μ − t)² / σ² + log σ²) (the constant dropped), and the layer losses are summed.

Features: the intermediate maps (reference ``feats[1:-1]``, here ``maps[1:]``),
paired in order. Where a pair's spatial sizes differ, the larger of the two maps
is adaptive-average-pooled to the smaller size before the regressor (what the
reference does; e.g. vgg13→MobileNetV2's last pair, 512×4×4 → 160×2×2, pools
the teacher to 2×2). The regressors and the variances train with the student.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.losses.base import Batch, DistillLoss, LossContext
from distill.losses.feature_pairs import format_shape, match_spatial_sizes, paired_map_shapes
from distill.losses.registry import register_loss
from distill.models.features import FeatureRecord

VARIANCE_EPS = 1e-5  # ε of σ² = softplus(α) + ε, as in the reference


def inverse_softplus(value: float) -> float:
    """α with softplus(α) = value (value > 0), computed without overflow: v + log(1 − e^{−v})."""
    return value + math.log(-math.expm1(-value))


def softplus_variance(log_scale: Tensor, eps: float = VARIANCE_EPS) -> Tensor:
    """σ² = log(1 + exp(α)) + ε, per channel."""
    return F.softplus(log_scale) + eps


def gaussian_nll(mean: Tensor, target: Tensor, variance: Tensor) -> Tensor:
    """Mean over all elements of ½((μ − t)²/σ² + log σ²); ``variance`` has one entry per channel (dim 1)."""
    variance = variance.view(1, -1, *([1] * (mean.dim() - 2)))
    return 0.5 * ((mean - target).pow(2) / variance + variance.log()).mean()


class VIDRegressor(nn.Module):
    """μ(s) and σ² for one map pair: three bias-free 1×1 convs C_s→C_t→C_t→C_t and a per-channel α."""

    def __init__(self, in_channels: int, out_channels: int, init_variance: float) -> None:
        super().__init__()
        self.mean = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, kernel_size=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, kernel_size=1, bias=False),
        )
        self.log_scale = nn.Parameter(torch.full((out_channels,), inverse_softplus(init_variance - VARIANCE_EPS)))

    def variance(self) -> Tensor:
        return softplus_variance(self.log_scale)

    def forward(self, student_map: Tensor, teacher_map: Tensor) -> Tensor:
        """−log q(t | s) per element, averaged (Gaussian NLL without its constant)."""
        student_map, teacher_map = match_spatial_sizes(student_map, teacher_map.detach())
        mean = self.mean(student_map)
        return gaussian_nll(mean.float(), teacher_map.float(), self.variance().float())


@register_loss("vid")
class VIDLoss(DistillLoss):
    """Variational information distillation on the intermediate maps.

    Args:
        init_variance: the initial σ² of every channel (5.0 in the reference); must exceed 1e-5.
    """

    def __init__(self, context: LossContext, *, init_variance: float = 5.0) -> None:
        super().__init__(context)
        if not init_variance > VARIANCE_EPS:
            raise ValueError(f"vid init_variance must be greater than {VARIANCE_EPS}, got {init_variance}")
        self.init_variance = init_variance
        self.pairs = paired_map_shapes(context, "vid")
        self.regressors = nn.ModuleList(
            VIDRegressor(student_shape[0], teacher_shape[0], init_variance)
            for student_shape, teacher_shape in self.pairs
        )

    def forward(self, student: FeatureRecord, teacher: FeatureRecord | None, batch: Batch) -> Tensor:
        return sum(
            regressor(f_s, f_t)
            for regressor, f_s, f_t in zip(self.regressors, student.maps[1:], teacher.maps[1:], strict=True)
        )

    def summary(self) -> str:
        pairs = ", ".join(f"{format_shape(s)}→{format_shape(t)}" for s, t in self.pairs)
        count = sum(p.numel() for p in self.parameters())
        return (
            f"vid: {len(self.pairs)} regressors (student→teacher: {pairs}), "
            f"{count:,} trainable parameters, initial variance {self.init_variance}"
        )

    def extra_repr(self) -> str:
        return f"init_variance={self.init_variance}"
