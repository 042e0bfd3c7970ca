"""MobileNetV2 at width 0.5 for 32×32 images: the CRD benchmark's ``MobileNetV2`` student.

The network is the inverted-residual, linear-bottleneck design of Sandler et al.
2018 ("MobileNetV2: Inverted Residuals and Linear Bottlenecks"), as configured
by the reference implementation's ``mobile_half`` (RepDistiller): width
multiplier 0.5, expansion factor 6, and the ImageNet stem stride of 2 kept, so
that a 32×32 image is processed at 16, 8, 4 and finally 2 pixels. As in the
paper, the width multiplier is not applied to the 1280-channel head. Two
details follow the reference rather than common ImageNet implementations and
are kept for checkpoint and numerical parity: the activations are ReLU (not
ReLU6), and the first (t = 1) block still has its 1×1 expansion convolution.

Module names follow the reference (``conv1``, ``blocks.I.J.conv.K``, ``conv2``,
``classifier.0``) so that its checkpoints load strictly.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from distill.models.base import ZooModel
from distill.models.features import FeatureRecord
from distill.models.registry import register_model

__all__ = ["InvertedResidual", "MobileNetV2", "mobile_half"]

# (expansion t, output channels c at width 1, repeats n, first stride s) of each block group,
# as in the paper's Table 2; ``None`` stands for the model's ``expansion`` (6 in the paper).
_BLOCK_SETTINGS: tuple[tuple[int | None, int, int, int], ...] = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)

# The block groups whose outputs are the feature maps: the last group at each
# resolution (16, 8, 4 and 2 px for a 32×32 input), as in the reference.
_FEATURE_GROUPS: tuple[int, ...] = (1, 2, 4, 6)


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Expand (1×1) → depthwise 3×3 → linear project (1×1), with a residual when shapes allow.

    The projection has no ReLU (the "linear bottleneck"), so the block output is
    not rectified; the residual is added only when the stride is 1 and the
    channel count is unchanged.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        hidden = in_channels * expansion
        self.use_residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(ZooModel):
    """MobileNetV2 for small images, with the reference's feature taps.

    Features (for a 32×32 input): the stem output (16 px), the outputs of block
    groups 1, 2, 4 and 6 (16, 8, 4, 2 px), and the pooled 1280-d vector after
    the 1×1 head convolution. The block outputs are linear-bottleneck outputs
    with no activation after them, so there is no separate pre-activation
    version: ``preact_maps`` holds the very same tensors as ``maps`` (the
    reference ignores ``preact`` for this model).

    Initialisation follows the reference: convolutions ~ N(0, 2 / (k·k·C_out)),
    BatchNorm weight 1 and bias 0, classifier weight ~ N(0, 0.01²) and bias 0.

    Args:
        num_classes: size of the classifier.
        width_mult: channel multiplier for the stem and the blocks.
        expansion: expansion factor t of every block group but the first.
    """

    def __init__(self, num_classes: int = 100, width_mult: float = 0.5, expansion: int = 6) -> None:
        super().__init__()
        in_channels = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, in_channels, kernel_size=3, stride=2)

        self.blocks = nn.ModuleList()
        for t, c, n, s in _BLOCK_SETTINGS:
            out_channels = int(c * width_mult)
            layers = []
            for i in range(n):
                layers.append(InvertedResidual(in_channels, out_channels, s if i == 0 else 1, t or expansion))
                in_channels = out_channels
            self.blocks.append(nn.Sequential(*layers))

        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(in_channels, self.last_channel, kernel_size=1, stride=1)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))

        self._initialize_weights()

    def _initialize_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def feature_record(self, x: Tensor) -> FeatureRecord:
        out = self.conv1(x)
        maps = [out]
        for i, group in enumerate(self.blocks):
            out = group(out)
            if i in _FEATURE_GROUPS:
                maps.append(out)
        pooled = self.avgpool(self.conv2(out)).flatten(1)
        return FeatureRecord(maps=maps, preact_maps=list(maps), pooled=pooled, logits=self.classifier(pooled))

    def feature_modules(self) -> list[nn.Module]:
        return [self.conv1, self.blocks]


@register_model("MobileNetV2")
def mobile_half(num_classes: int = 100) -> MobileNetV2:
    """MobileNetV2 with width 0.5 and expansion 6 (the reference's ``mobile_half``)."""
    return MobileNetV2(num_classes=num_classes, width_mult=0.5, expansion=6)
