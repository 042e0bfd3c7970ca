"""Factor transfer (Kim, Park and Kwak, "Paraphrasing Complex Network: Network
Compression via Factor Transfer", NeurIPS 2018).

A *paraphraser* P, a convolutional auto-encoder on the teacher's last feature
map x (``FeatureRecord.maps[-1]``, the reference's ``feats[-2]``), is first
trained alone to reconstruct it (the paper's reconstruction loss):

    L_rec = ‖ x − P(x) ‖²     (as the benchmark computes it: the mean squared error)

Its encoder output is the teacher factor F_T. A *translator* on the student's
last map gives the student factor F_S, and the student is trained with the
paper's factor-transfer loss (p = 1)

    L_FT = ‖ F_T / ‖F_T‖₂ − F_S / ‖F_S‖₂ ‖_p .

The CRD benchmark (RepDistiller ``FactorTransfer`` with p1 = 2, p2 = 1) first
reduces each factor φ (B×C×H×W) to its channel mean of squares and flattens it,
f(φ) = vec(mean_c φ²) ∈ ℝ^{H·W}, L2-normalises that per sample, and takes the
mean absolute difference over batch and positions:

    L = mean_{b, k} | f(φ_s)_b/‖f(φ_s)_b‖₂ − f(φ_t)_b/‖f(φ_t)_b‖₂ |_k

(the larger factor is first average-pooled to the smaller spatial size). This
module implements the benchmark's form (:func:`factor_transfer_loss`).

Modules as in the reference: the paraphraser has 3 conv (encoder) + 3
transposed-conv (decoder) layers, 3×3, LeakyReLU(0.1), no BatchNorm, factor
width k·C_t (k = ``rate``, 0.5); it trains in the init stage (30 epochs, lr
0.01 for resnet/wrn students, else the recipe's lr) and is frozen afterwards,
kept in eval mode and out of the optimiser. The translator (3 convs with BN and
LeakyReLU, C_s → k·C_t) trains with the student in the main stage.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.losses.base import Batch, DistillLoss, InitStage, LossContext
from distill.losses.registry import register_loss
from distill.models.features import FeatureRecord

#: Students for which the reference pre-trains the paraphraser at lr 0.01
#: (``helper/pretrain.py``: resnet8…resnet110, resnet8x4, resnet32x4, wrn_*).
_FT_LOW_LR_STUDENT = re.compile(r"^(resnet(8|14|20|32|44|56|110|8x4|32x4)|wrn_\d+_\d+)$")
FT_INIT_LR = 0.01


def ft_init_lr(student_arch: str) -> float | None:
    """The paraphraser's init-stage lr: 0.01 for the reference's resnet/wrn students, else None (the recipe's)."""
    return FT_INIT_LR if _FT_LOW_LR_STUDENT.match(student_arch or "") else None


def pool_to_common_size(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool whichever map is spatially larger down to the other's size."""
    size = (min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3]))
    if tuple(a.shape[2:]) != size:
        a = F.adaptive_avg_pool2d(a, size)
    if tuple(b.shape[2:]) != size:
        b = F.adaptive_avg_pool2d(b, size)
    return a, b


def factor_vector(factor: Tensor, p: float = 2.0) -> Tensor:
    """f(φ) = normalise(vec(mean_c φ^p)): the per-sample L2-normalised channel mean of φ^p (B×(H·W))."""
    return F.normalize(factor.pow(p).mean(dim=1).flatten(1), p=2.0, dim=1)


def factor_transfer_loss(factor_s: Tensor, factor_t: Tensor) -> Tensor:
    """The benchmark's L_FT: mean over batch and positions of |f(φ_s) − f(φ_t)| (p1 = 2, p2 = 1)."""
    factor_s, factor_t = pool_to_common_size(factor_s.float(), factor_t.float())
    return (factor_vector(factor_s) - factor_vector(factor_t)).abs().mean()


def _conv_block(c_in: int, c_out: int, transposed: bool = False, batch_norm: bool = False) -> list[nn.Module]:
    conv = (nn.ConvTranspose2d if transposed else nn.Conv2d)(c_in, c_out, kernel_size=3, stride=1, padding=1)
    return [conv, *([nn.BatchNorm2d(c_out)] if batch_norm else []), nn.LeakyReLU(0.1)]


class Paraphraser(nn.Module):
    """Convolutional auto-encoder of the teacher map: C_t → C_t → k·C_t (encoder) → k·C_t → C_t → C_t (decoder)."""

    def __init__(self, channels: int, factor_channels: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            *_conv_block(channels, channels),
            *_conv_block(channels, factor_channels),
            *_conv_block(factor_channels, factor_channels),
        )
        self.decoder = nn.Sequential(
            *_conv_block(factor_channels, factor_channels, transposed=True),
            *_conv_block(factor_channels, channels, transposed=True),
            *_conv_block(channels, channels, transposed=True),
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The factor and the reconstruction."""
        factor = self.encoder(x)
        return factor, self.decoder(factor)


class Translator(nn.Module):
    """The student's factor extractor: three 3×3 convs with BN and LeakyReLU(0.1), C_s → C_s → k·C_t → k·C_t."""

    def __init__(self, channels: int, factor_channels: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            *_conv_block(channels, channels, batch_norm=True),
            *_conv_block(channels, factor_channels, batch_norm=True),
            *_conv_block(factor_channels, factor_channels, batch_norm=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x)


@register_loss("ft")
class FTLoss(DistillLoss):
    """Factor transfer on the last feature maps, with a paraphraser pre-trained in the init stage.

    Args:
        rate: the paraphrase rate k: factors have int(k·C_t) channels (0.5 in the reference).
    """

    def __init__(self, context: LossContext, *, rate: float = 0.5) -> None:
        super().__init__(context)
        if not context.student.maps or not context.teacher.maps:
            raise ValueError("ft needs convolutional feature maps on both networks")
        student_shape, teacher_shape = context.student.maps[-1], context.teacher.maps[-1]
        if len(student_shape) != 3 or len(teacher_shape) != 3:
            raise ValueError(f"ft needs C×H×W maps, got student {student_shape} and teacher {teacher_shape}")
        factor_channels = int(teacher_shape[0] * rate)
        if rate <= 0 or factor_channels < 1:
            raise ValueError(
                f"ft rate must give at least one factor channel: rate {rate} × {teacher_shape[0]} teacher channels"
            )
        self.rate = rate
        self.factor_channels = factor_channels
        self.paraphraser = Paraphraser(teacher_shape[0], factor_channels)
        self.translator = Translator(student_shape[0], factor_channels)
        self.paraphraser.eval()

    def stage_loss(self, student: FeatureRecord, teacher: FeatureRecord | None, batch: Batch) -> Tensor:
        """The paraphraser's reconstruction loss: MSE(P(x), x) on the teacher's last map."""
        target = teacher.maps[-1].detach()
        _, reconstruction = self.paraphraser(target)
        return F.mse_loss(reconstruction.float(), target.float())

    def init_stage(self) -> InitStage:
        return InitStage(
            loss=self.stage_loss,
            modules=[self.paraphraser],
            train_student_features=False,
            lr=ft_init_lr(self.context.student_arch),
            freeze_after=True,
        )

    def forward(self, student: FeatureRecord, teacher: FeatureRecord | None, batch: Batch) -> Tensor:
        factor_s = self.translator(student.maps[-1])
        with torch.no_grad():  # the paraphraser is frozen in the main stage
            factor_t = self.paraphraser.encoder(teacher.maps[-1].detach())
        return factor_transfer_loss(factor_s, factor_t)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The translator only: the paraphraser trains in the init stage and is frozen afterwards."""
        return (p for p in self.translator.parameters() if p.requires_grad)

    def train(self, mode: bool = True) -> FTLoss:
        """Train mode reaches the translator only; the paraphraser stays in eval (the init stage sets its own mode)."""
        super().train(mode)
        self.paraphraser.eval()
        return self

    def summary(self) -> str:
        return f"rate {self.rate}: factors of {self.factor_channels} channels; paraphraser pre-trained in the init stage"

    def extra_repr(self) -> str:
        return f"rate={self.rate}"
