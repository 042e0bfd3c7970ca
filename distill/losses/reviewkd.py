"""ReviewKD: Chen, Liu, Zhao, Jia, "Distilling Knowledge via Knowledge Review" (CVPR 2021).

The student's features of every level are fused, deepest first, into the features of
the next shallower level by an attention-based fusion module (ABF), and each fused map is
compared with the teacher's map of that level by a hierarchical context loss (HCL).

Levels (deep → shallow). On both networks they are the stage maps after the stem,
``maps[1:]``, plus the pooled vector as a C×1×1 map:

* student: post-activation ``maps[1:]`` (``student_preact: true`` takes ``preact_maps[1:]``,
  mdistiller's ImageNet setting) and ``pooled``;
* teacher: ``preact_maps[1:]`` (before the last ReLU of each stage) and ``pooled``.

ABF of level ℓ, student map X (in_ℓ channels, H_ℓ×W_ℓ), teacher map T_ℓ (out_ℓ channels,
H'_ℓ×W'_ℓ), mid = min(max_mid_channel, channels of the deepest student level)::

    X' = BN(Conv1×1(X))                                 in_ℓ → mid, no bias
    if ℓ is not the deepest level (R = the previous level's X', fuse):
        R  = nearest(R, H_ℓ×W_ℓ)
        [a1, a2] = sigmoid(Conv1×1([X', R]))              2·mid → 2 channels, with bias
        X' = a1·X' + a2·R                                 attention broadcast over channels
    if X' is not H'_ℓ×W'_ℓ: X' = nearest(X', H'_ℓ×W'_ℓ)
    Y_ℓ = BN(Conv3×3(X'))                               mid → out_ℓ, pad 1, no bias
    X' goes on to the next, shallower level as R        (after the resize to H'_ℓ×W'_ℓ)

The 1×1 and 3×3 convolutions start from ``kaiming_uniform_(a=1)``; the attention
convolution keeps PyTorch's default initialisation, as in the code.

HCL of one level, with H the height of Y_ℓ and AAP_k adaptive average pooling to k×k::

    L_ℓ = [MSE(Y, T) + Σ_{k ∈ (4, 2, 1), k < H} w_k · MSE(AAP_k(Y), AAP_k(T))] / (1 + Σ w_k)

where the weights halve along the pyramid levels that apply: ½, ¼, ⅛ for H ≥ 8 (total
1.875), ½, ¼ for the 2×2 and 1×1 levels when H = 4, ½ for H = 2, plain MSE for H = 1.
MSE is the mean over all elements. The loss is the **sum** over levels (not a mean)::

    L_ReviewKD = min(epoch / warmup_epochs, 1) · Σ_ℓ L_ℓ

and the recipe weights it (w_RKD) beside CE (weight 1). There is no logit term.

Sources (read, not copied): ``dvlab-research/ReviewKD`` @ 6607308,
``CIFAR-100/model/reviewkd.py`` (ABF L20-56, ReviewKD L58-86, ``build_review_kd``
L90-158, ``hcl`` L160-177) and ``CIFAR-100/script/reviewKD.sh`` (the per-task weights),
and the re-implementation ``megvii-research/mdistiller`` @ e8c5bb3,
``mdistiller/distillers/ReviewKD.py`` (``hcl_loss`` L11-28, ``ReviewKD`` L31-103 with the
feature lists L71-91 and the warm-up L94-98, ``ABF`` L106-144). The paper itself was not read.

Where this differs from those, and why:

* The ABFs are sized from the networks' :class:`FeatureShapes` (one dry forward pass),
  not from the per-architecture channel and shape tables of ``build_review_kd`` (or
  mdistiller's ``REVIEWKD.IN_CHANNELS`` / ``SHAPES`` / ``OUT_CHANNELS`` / ``OUT_SHAPES``).
  For the 13 CRD tasks the derived levels equal those tables (tests/test_losses_reviewkd.py
  checks all 13); any other pair of networks also works.
* Resizes go to the level's height *and* width (the code assumes square maps); the HCL
  pyramid is chosen on the height, as in the code.
* ``max_mid_channel`` is honoured: mdistiller reads ``MAX_MID_CHANNEL`` (L42) but
  hard-codes 512 (L45), as the official code does (L69); the default 512 gives the same.
* The warm-up counts epochs from 1, as mdistiller (its trainer passes epochs from 1), so
  the first epoch trains at 1/20 of the weight. The official CIFAR trainer counts from 0,
  which switches the loss off for the first epoch; that is not offered. 0 disables the ramp.
* HCL is computed in float32 under mixed precision.
* A student whose level count differs from the teacher's is refused (the code would zip
  the lists and silently drop levels).

The recipe follows mdistiller's re-implementation on the RepDistiller teachers (batch 64,
lr 0.05, 0.01 for MobileNetV2/ShuffleNet students, plain momentum 0.9, 240 epochs,
×0.1 at 150/180/210), i.e. the benchmark's optimisation, not the official CIFAR code's
(batch 128, lr 0.1 or 0.02 for ShuffleNet/MobileNet students, Nesterov, its own teachers).
The ABFs are discarded after training; they train with the student (they are submodules of
this loss, so :meth:`DistillLoss.trainable_parameters` hands them to the optimiser, as
mdistiller's ``get_learnable_parameters``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.losses.base import Batch, DistillLoss, LossContext
from distill.losses.precision import at_least_float32
from distill.losses.registry import register_loss
from distill.models.features import FeatureRecord, FeatureShapes

PYRAMID = (4, 2, 1)
"""The HCL pyramid: adaptive average pooling to 4×4, 2×2 and 1×1, each used only below the map's height."""


def hcl_pyramid_weights(height: int) -> list[tuple[int, float]]:
    """The pooled levels HCL adds for a map of this height: (k, weight), weights ½, ¼, ⅛ along the applicable k."""
    weights: list[tuple[int, float]] = []
    weight = 1.0
    for size in PYRAMID:
        if size < height:
            weight /= 2.0
            weights.append((size, weight))
    return weights


def hcl_level_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """HCL of one level: the weighted mean of the MSE at full size and on the pooled pyramid (teacher not differentiated)."""
    if student.dim() != 4 or student.shape != teacher.shape:
        raise ValueError(
            f"hcl needs student and teacher maps of the same shape B×C×H×W, got "
            f"{tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    student = at_least_float32(student)
    teacher = teacher.detach().to(student.dtype)
    loss = F.mse_loss(student, teacher)
    total = 1.0
    for size, weight in hcl_pyramid_weights(student.shape[2]):
        pooled_student = F.adaptive_avg_pool2d(student, (size, size))
        pooled_teacher = F.adaptive_avg_pool2d(teacher, (size, size))
        loss = loss + weight * F.mse_loss(pooled_student, pooled_teacher)
        total += weight
    return loss / total


def hcl_loss(student_maps: Sequence[Tensor], teacher_maps: Sequence[Tensor]) -> Tensor:
    """The hierarchical context loss: the sum over matched levels of :func:`hcl_level_loss`."""
    if len(student_maps) != len(teacher_maps) or not student_maps:
        raise ValueError(f"hcl needs as many student as teacher levels (at least one), got {len(student_maps)} and {len(teacher_maps)}")
    return sum(hcl_level_loss(s, t) for s, t in zip(student_maps, teacher_maps))


class AttentionBasedFusion(nn.Module):
    """ABF: the student's level map, fused with the deeper level's fused map, projected onto the teacher's level.

    Args:
        in_channels: channels of the student's map at this level.
        mid_channels: channels of the fused maps (the same at every level).
        out_channels: channels of the teacher's map at this level.
        fuse: whether a deeper level's map is fused in (False for the deepest level).
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False), nn.BatchNorm2d(mid_channels))
        self.output = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.attention = nn.Conv2d(2 * mid_channels, 2, kernel_size=1) if fuse else None
        nn.init.kaiming_uniform_(self.reduce[0].weight, a=1)
        nn.init.kaiming_uniform_(self.output[0].weight, a=1)

    def forward(self, x: Tensor, residual: Tensor | None, out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """(Y, X'): the map compared with the teacher's, and the fused map handed to the next, shallower level."""
        x = self.reduce(x)
        if self.attention is not None:
            if residual is None:
                raise ValueError("this ABF fuses a deeper level's map: pass it as residual")
            residual = F.interpolate(residual, size=tuple(x.shape[-2:]), mode="nearest")
            gates = torch.sigmoid(self.attention(torch.cat([x, residual], dim=1)))
            x = x * gates[:, 0:1] + residual * gates[:, 1:2]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=tuple(out_size), mode="nearest")
        return self.output(x), x


@dataclass(frozen=True)
class ReviewLevel:
    """One level that ReviewKD matches: the student's map (in) and the teacher's map (out), per-sample shapes."""

    in_channels: int
    size: tuple[int, int]
    out_channels: int
    out_size: tuple[int, int]


def _level_maps(shapes: FeatureShapes, preact: bool) -> list[tuple[int, ...]]:
    """Per-sample shapes of a network's levels, shallow → deep: the stage maps after the stem, then the pooled vector."""
    maps = shapes.preact_maps if preact else shapes.maps
    return [*maps[1:], (shapes.pooled_dim, 1, 1)]


def review_levels(student: FeatureShapes, teacher: FeatureShapes, student_preact: bool = False) -> list[ReviewLevel]:
    """The levels ReviewKD matches, deep → shallow (the order the ABFs run in).

    Raises:
        ValueError: when a network has a non-C×H×W stage map, or the two networks have
            different numbers of levels.
    """
    student_maps = _level_maps(student, student_preact)
    teacher_maps = _level_maps(teacher, preact=True)
    for role, maps in (("student", student_maps), ("teacher", teacher_maps)):
        if any(len(shape) != 3 for shape in maps):
            raise ValueError(f"reviewkd needs C×H×W stage maps, but the {role}'s are {', '.join(map(str, maps[:-1]))}")
    if len(student_maps) != len(teacher_maps):
        raise ValueError(
            f"reviewkd matches the student's and the teacher's levels one to one (stage maps after the stem, plus "
            f"the pooled vector), but the student has {len(student_maps)} and the teacher {len(teacher_maps)}; "
            f"choose networks with the same number of stages"
        )
    levels = [
        ReviewLevel(s[0], (s[1], s[2]), t[0], (t[1], t[2])) for s, t in zip(student_maps, teacher_maps)
    ]
    return levels[::-1]


def warmup_factor(epoch: int, warmup_epochs: int) -> float:
    """min(epoch / warmup_epochs, 1), epochs counted from 1 (mdistiller); 1 when warmup_epochs is 0."""
    return 1.0 if warmup_epochs == 0 else min(epoch / warmup_epochs, 1.0)


@register_loss("reviewkd")
class ReviewKDLoss(DistillLoss):
    """ReviewKD: HCL between ABF-fused student levels and the teacher's pre-activation levels.

    Args:
        max_mid_channel: the ABFs' channel count is min(this, the deepest student level's channels) (512).
        warmup_epochs: the loss is scaled by min(epoch / warmup_epochs, 1), epochs counted from 1
            (20, mdistiller's CIFAR default; 0 disables the ramp).
        student_preact: take the student's stage maps before their last activation (False on
            CIFAR in both codes; mdistiller's ImageNet config sets it).
    """

    def __init__(
        self, context: LossContext, *, max_mid_channel: int = 512, warmup_epochs: int = 20, student_preact: bool = False
    ) -> None:
        super().__init__(context)
        if max_mid_channel < 1:
            raise ValueError(f"reviewkd max_mid_channel must be at least 1, got {max_mid_channel}")
        if warmup_epochs < 0:
            raise ValueError(f"reviewkd warmup_epochs must be 0 or more, got {warmup_epochs}")
        self.levels = review_levels(context.student, context.teacher, student_preact)
        self.mid_channels = min(max_mid_channel, self.levels[0].in_channels)
        self.max_mid_channel = max_mid_channel
        self.warmup_epochs = warmup_epochs
        self.student_preact = student_preact
        self.abfs = nn.ModuleList(
            AttentionBasedFusion(level.in_channels, self.mid_channels, level.out_channels, fuse=index > 0)
            for index, level in enumerate(self.levels)
        )
        # Until the trainer announces an epoch the loss is used at full strength.
        self.warmup = 1.0

    def start_epoch(self, epoch: int, total_epochs: int) -> None:
        self.warmup = warmup_factor(epoch, self.warmup_epochs)

    def student_levels(self, student: FeatureRecord) -> list[Tensor]:
        """The student's level maps, deep → shallow."""
        maps = student.preact_maps if self.student_preact else student.maps
        return [student.pooled[:, :, None, None], *maps[:0:-1]]

    @staticmethod
    def teacher_levels(teacher: FeatureRecord) -> list[Tensor]:
        """The teacher's level maps, deep → shallow (pre-activation stage maps)."""
        return [teacher.pooled[:, :, None, None], *teacher.preact_maps[:0:-1]]

    def fused(self, student: FeatureRecord) -> list[Tensor]:
        """The ABF outputs Y_ℓ, deep → shallow, each shaped like the teacher's level."""
        outputs, residual = [], None
        for abf, level, x in zip(self.abfs, self.levels, self.student_levels(student)):
            y, residual = abf(x, residual, level.out_size)
            outputs.append(y)
        return outputs

    def forward(self, student: FeatureRecord, teacher: FeatureRecord | None, batch: Batch) -> Tensor:
        return self.warmup * hcl_loss(self.fused(student), self.teacher_levels(teacher))

    def summary(self) -> str:
        levels = ", ".join(
            f"{lv.in_channels}@{lv.size[0]}x{lv.size[1]}→{lv.out_channels}@{lv.out_size[0]}x{lv.out_size[1]}" for lv in self.levels
        )
        warmup = f"linear warm-up over {self.warmup_epochs} epochs" if self.warmup_epochs else "no warm-up"
        return f"{len(self.levels)} levels deep→shallow [{levels}], mid {self.mid_channels} channels, {warmup}"

    def extra_repr(self) -> str:
        return (
            f"max_mid_channel={self.max_mid_channel}, warmup_epochs={self.warmup_epochs}, "
            f"student_preact={self.student_preact}"
        )
