"""FitNets: hints for thin deep nets (Romero et al., ICLR 2015).

The student's hint layer is mapped by a trainable regressor r onto the shape of
the teacher's guided layer, and the two are matched in the squared error
(Romero et al., Eq. 3):

    L_HT = ½ ‖ u_h(x) − r(v_g(x)) ‖²

As in the CRD benchmark (RepDistiller ``HintLoss``), the ½‖·‖² is taken as the
mean squared error over every element, and the hint is trained jointly with the
main objective (the reference's main stage; its hint-only pre-stage is not
part of the benchmark). Both sides are ``feats[hint_layer]``, i.e.
``FeatureRecord.maps[hint_layer]`` (post-activation), default 2.

The regressor follows the reference's ``ConvReg`` (its choice of layer by the
ratio of the spatial sizes, then BatchNorm and ReLU); the paper's own regressor
is a single convolution whose kernel makes the sizes agree (§2.2), which is the
third case below.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from distill.losses.base import Batch, DistillLoss, LossContext
from distill.losses.registry import register_loss
from distill.models.features import FeatureRecord

RegressorKind = Literal["conv3x3_stride2", "convT4x4_stride2", "conv"]


def _fmt(shape: tuple[int, ...]) -> str:
    return "×".join(str(d) for d in shape)


def regressor_layout(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> tuple[RegressorKind, tuple[int, int]]:
    """Which layer maps a C_s×H_s×W_s student map onto a C_t×H_t×W_t teacher map, and its kernel.

    The rule of the reference's ``ConvReg``, decided on the heights:

    * H_s = 2·H_t: 3×3 convolution, stride 2, padding 1 (halves the size);
    * 2·H_s = H_t: 4×4 transposed convolution, stride 2, padding 1 (doubles it);
    * otherwise: a stride-1 convolution without padding of kernel
      (1 + H_s − H_t, 1 + W_s − W_t), which needs H_s ≥ H_t and W_s ≥ W_t.

    Raises:
        ValueError: when the shapes are not C×H×W maps, or when the chosen layer
            would not produce the teacher's spatial size (the reference raised
            only for H_s < H_t, and checked nothing about the widths).
    """
    if len(student_shape) != 3 or len(teacher_shape) != 3:
        raise ValueError(
            f"FitNet regressor needs C×H×W feature maps, got student {_fmt(student_shape)} and teacher {_fmt(teacher_shape)}"
        )
    _, s_h, s_w = student_shape
    _, t_h, t_w = teacher_shape
    if s_h == 2 * t_h:
        kind: RegressorKind = "conv3x3_stride2"
        kernel = (3, 3)
        out_w = (s_w + 2 - 3) // 2 + 1
    elif 2 * s_h == t_h:
        kind, kernel = "convT4x4_stride2", (4, 4)
        out_w = (s_w - 1) * 2 - 2 + 4
    else:
        kind, kernel = "conv", (1 + s_h - t_h, 1 + s_w - t_w)
        out_w = s_w - kernel[1] + 1
    if min(kernel) < 1 or out_w != t_w:
        raise ValueError(
            f"FitNet cannot regress the student map {_fmt(student_shape)} onto the teacher map {_fmt(teacher_shape)}: "
            f"the regressor handles a student twice as large (3×3 stride-2 conv), half as large (4×4 stride-2 "
            f"transposed conv), or at least as large in both height and width (stride-1 conv); "
            f"choose another hint_layer"
        )
    return kind, kernel


class ConvRegressor(nn.Module):
    """The reference's ``ConvReg``: conv (or transposed conv) to the teacher's shape, then BN and ReLU.

    Args:
        student_shape: per-sample shape C_s×H_s×W_s of the student's hint map.
        teacher_shape: per-sample shape C_t×H_t×W_t of the teacher's map.
    """

    def __init__(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.kind, kernel = regressor_layout(tuple(student_shape), tuple(teacher_shape))
        self.student_shape = tuple(student_shape)
        self.teacher_shape = tuple(teacher_shape)
        s_c, t_c = student_shape[0], teacher_shape[0]
        if self.kind == "conv3x3_stride2":
            self.conv: nn.Module = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif self.kind == "convT4x4_stride2":
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        else:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=kernel)
        self.bn = nn.BatchNorm2d(t_c)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))

    def extra_repr(self) -> str:
        return f"{self.kind}: {_fmt(self.student_shape)} → {_fmt(self.teacher_shape)}"


def hint_loss(regressed: Tensor, target: Tensor) -> Tensor:
    """Romero et al. Eq. 3 as the benchmark computes it: mean over all elements of (r(v) − u)²."""
    return F.mse_loss(regressed.float(), target.detach().float())


@register_loss("hint")
class HintLoss(DistillLoss):
    """FitNet hint: MSE between the regressed student map and the teacher map.

    Args:
        hint_layer: index into the feature maps (the reference's ``feats``
            without its pooled vector); the same index on both networks. 2 in
            the CRD benchmark.
    """

    def __init__(self, context: LossContext, *, hint_layer: int = 2) -> None:
        super().__init__(context)
        for role, arch, shapes in (
            ("student", context.student_arch, context.student),
            ("teacher", context.teacher_arch, context.teacher),
        ):
            if not 0 <= hint_layer < len(shapes.maps):
                raise ValueError(
                    f"hint_layer {hint_layer} is out of range: the {role}{f' {arch}' if arch else ''} "
                    f"has {len(shapes.maps)} feature maps (valid: 0..{len(shapes.maps) - 1})"
                )
        self.hint_layer = hint_layer
        self.regressor = ConvRegressor(context.student.maps[hint_layer], context.teacher.maps[hint_layer])

    def forward(self, student: FeatureRecord, teacher: FeatureRecord | None, batch: Batch) -> Tensor:
        regressed = self.regressor(student.maps[self.hint_layer])
        return hint_loss(regressed, teacher.maps[self.hint_layer])

    def summary(self) -> str:
        return f"hint_layer {self.hint_layer}, regressor {self.regressor.extra_repr()}"

    def extra_repr(self) -> str:
        return f"hint_layer={self.hint_layer}"
