"""Flow of solution procedure (Yim, Joo, Bae and Kim, "A Gift from Knowledge
Distillation: Fast Optimization, Network Minimization and Transfer Learning",
CVPR 2017).

The FSP matrix of two feature maps F¹ (h×w×m) and F² (h×w×n) of one network
is their spatially averaged channel-by-channel product (the paper's Eq. 1):

    G_{i,j}(x) = Σ_{s=1..h} Σ_{t=1..w} F¹_{s,t,i}(x) · F²_{s,t,j}(x) / (h·w),

an m×n matrix (:func:`fsp_matrix`). The student learns the teacher's "flow"
by matching the FSP matrices of corresponding layer pairs (Eq. 2):

    L_FSP = 1/N Σ_x Σ_i λ_i ‖ G_i^T(x) − G_i^S(x) ‖²₂ .

As in the CRD benchmark (RepDistiller ``FSP`` and ``helper/pretrain.py``):
the pairs are consecutive maps of ``feats[:-1]`` (``FeatureRecord.maps``,
post-activation), the larger map of a pair is average-pooled to the smaller
one's size, every λ_i = 1, and each squared norm is the mean over the batch and
the matrix entries (:func:`fsp_loss`). FSP acts **only** through its init
stage, which trains the student's feature layers; in the main stage the term is
zero (the reference computes ``loss_kd = 0`` for FSP).

FSP matrices of the two networks must have the same shape, so every map used
must have the same channel count in student and teacher. That rules out
wrn_40_2→wrn_40_1 and every cross-architecture pair of the benchmark (its
"N/A" entries); building the loss for such a pair raises ValueError.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.losses.base import Batch, DistillLoss, InitStage, LossContext
from distill.losses.registry import register_loss
from distill.models.features import FeatureRecord


def fsp_matrix(first: Tensor, second: Tensor) -> Tensor:
    """G (B×m×n) of maps B×m×H₁×W₁ and B×n×H₂×W₂, the larger one average-pooled to the smaller size (Eq. 1)."""
    size = (min(first.shape[2], second.shape[2]), min(first.shape[3], second.shape[3]))
    if tuple(first.shape[2:]) != size:
        first = F.adaptive_avg_pool2d(first, size)
    if tuple(second.shape[2:]) != size:
        second = F.adaptive_avg_pool2d(second, size)
    return torch.einsum("bihw,bjhw->bij", first, second) / (size[0] * size[1])


def fsp_matrices(maps: list[Tensor]) -> list[Tensor]:
    """The FSP matrices of every pair of consecutive maps."""
    return [fsp_matrix(a, b) for a, b in zip(maps[:-1], maps[1:])]


def fsp_loss(student_maps: list[Tensor], teacher_maps: list[Tensor]) -> Tensor:
    """Σ over consecutive pairs of mean((G_s − G_t)²) (Eq. 2 with λ_i = 1, as the benchmark averages it)."""
    student_g = fsp_matrices([m.float() for m in student_maps])
    teacher_g = fsp_matrices([m.detach().float() for m in teacher_maps])
    return sum((gs - gt).pow(2).mean() for gs, gt in zip(student_g, teacher_g))


@register_loss("fsp")
class FSPLoss(DistillLoss):
    """FSP-matrix matching of consecutive feature maps, trained in an init stage; zero in the main stage.

    Raises:
        ValueError: when the two networks' maps differ in number or in channel count.
    """

    def __init__(self, context: LossContext) -> None:
        super().__init__(context)
        student_channels = [shape[0] for shape in context.student.maps]
        teacher_channels = [shape[0] for shape in context.teacher.maps]
        pair = f"{context.student_arch or 'student'} ← {context.teacher_arch or 'teacher'}"
        if len(student_channels) < 2 or student_channels != teacher_channels:
            raise ValueError(
                f"FSP is not applicable to {pair}: the student's and the teacher's FSP matrices "
                f"(C_i × C_(i+1) for consecutive feature maps) must have equal shapes, so both networks need the "
                f"same number of feature maps with the same channel counts; student channels {student_channels}, "
                f"teacher channels {teacher_channels}. Pair networks of one family and width (e.g. resnet20 ← "
                f"resnet110), use another loss for this pair, or remove the fsp term"
            )

    def stage_loss(self, student: FeatureRecord, teacher: FeatureRecord | None, batch: Batch) -> Tensor:
        """The init-stage objective on ``maps`` (the reference's ``feats[:-1]``)."""
        return fsp_loss(student.maps, teacher.maps)

    def init_stage(self) -> InitStage:
        return InitStage(loss=self.stage_loss, modules=[], train_student_features=True, lr=None)

    def forward(self, student: FeatureRecord, teacher: FeatureRecord | None, batch: Batch) -> Tensor:
        """Zero: in the benchmark FSP acts only through its init stage."""
        return torch.zeros((), device=student.logits.device)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return iter(())

    def summary(self) -> str:
        return f"{len(self.context.student.maps) - 1} FSP matrices; init stage only (main-stage term is 0)"
