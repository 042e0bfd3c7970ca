"""Wide residual networks (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016).

WRN-d-k: a 3×3 stem (no BN), three groups of ``n = (d - 4) / 6`` pre-activation
basic blocks (BN-ReLU-conv3x3-BN-ReLU-conv3x3) of widths 16k, 32k and 64k at 32,
16 and 8 pixels, then BN-ReLU, global average pooling and a linear classifier.
A block whose width or stride changes has a 1×1 convolution shortcut, without BN,
that reads the block's pre-activated input.

Module names, parameter shapes and initialisation follow the CRD reference
implementation (RepDistiller ``models/wrn.py``), so its published teacher
checkpoints load strictly: ``conv1``, ``block{1,2,3}.layer.N.{bn1,conv1,bn2,conv2}``,
``blockB.layer.0.convShortcut``, ``bn1`` and ``fc``.
"""

from __future__ import annotations

import math
from typing import cast

import torch.nn.functional as F
from torch import Tensor, nn

from distill.models.base import ZooModel
from distill.models.features import FeatureRecord
from distill.models.registry import register_model

__all__ = [
    "WideBasicBlock",
    "NetworkBlock",
    "WideResNet",
    "wrn_16_1",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
]


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3, plus the shortcut.

    The shortcut is the raw input when the shape is kept; otherwise a 1×1 conv
    (``convShortcut``, the reference's name) of the input after ``bn1`` and ReLU.
    """

    def __init__(
        self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()  # not in place: bn1's output is kept as a pre-activation feature
        self.conv1 = nn.Conv2d(
            in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(
            out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False
        )
        self.drop_rate = drop_rate
        needs_projection = in_planes != out_planes or stride != 1
        self.convShortcut = (
            nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)
            if needs_projection
            else None
        )

    def forward_with_entry_bn(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The block output and ``bn1(x)``, the normalised input before its ReLU.

        The entry BN output is what the reference reports as the pre-activation
        of the previous group's output; returning it avoids running the BN twice.
        """
        entry = self.bn1(x)
        activated = self.relu1(entry)
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)
        out = self.relu2(self.bn2(self.conv1(activated)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return self.conv2(out) + shortcut, entry

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_entry_bn(x)[0]


class NetworkBlock(nn.Module):
    """A group of ``num_layers`` wide blocks; only the first one may change width or stride."""

    def __init__(
        self, num_layers: int, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        blocks = [WideBasicBlock(in_planes, out_planes, stride, drop_rate)]
        blocks += [
            WideBasicBlock(out_planes, out_planes, 1, drop_rate) for _ in range(1, num_layers)
        ]
        self.layer = nn.Sequential(*blocks)

    def forward_with_entry_bn(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The group output and its first block's ``bn1(x)``."""
        first, *rest = self.layer
        out, entry = cast(WideBasicBlock, first).forward_with_entry_bn(x)
        for block in rest:
            out = block(out)
        return out, entry

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(ZooModel):
    """WRN-depth-widen_factor for 32×32 inputs (Zagoruyko & Komodakis 2016).

    Args:
        depth: total depth; ``(depth - 4)`` must be divisible by 6.
        num_classes: size of the classifier.
        widen_factor: ``k``, the width multiplier of the three groups.
        drop_rate: dropout between the two convolutions of each block (0 in the benchmark).

    Features (the reference's ``is_feat`` list): ``maps`` are the stem conv output
    and the three group outputs. In a pre-activation network these are residual
    sums that have not been through BN-ReLU yet. ``preact_maps`` are, as in the
    reference, those maps after the BN that reads them next (``block2.layer[0].bn1``,
    ``block3.layer[0].bn1`` and the final ``bn1``), taken from the normal forward
    pass, so no BatchNorm runs twice; the stem output appears unchanged in both.
    ``pooled`` is the vector after the final BN-ReLU and average pooling.
    """

    def __init__(
        self, depth: int, num_classes: int = 100, widen_factor: int = 1, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n + 4 with n >= 1, got {depth}")
        blocks_per_group = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]

        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(blocks_per_group, widths[0], widths[1], 1, drop_rate)
        self.block2 = NetworkBlock(blocks_per_group, widths[1], widths[2], 2, drop_rate)
        self.block3 = NetworkBlock(blocks_per_group, widths[2], widths[3], 2, drop_rate)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        # Global average pooling: at 32 px input this is the reference's avg_pool2d(8).
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        self.num_features = widths[3]

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1.0)
                nn.init.constant_(module.bias, 0.0)
            elif isinstance(module, nn.Linear):
                nn.init.constant_(module.bias, 0.0)

    def feature_modules(self) -> list[nn.Module]:
        return [self.conv1, self.block1, self.block2, self.block3]

    def feature_record(self, x: Tensor) -> FeatureRecord:
        f0 = self.conv1(x)
        f1 = self.block1(f0)
        f2, f1_pre = self.block2.forward_with_entry_bn(f1)
        f3, f2_pre = self.block3.forward_with_entry_bn(f2)
        f3_pre = self.bn1(f3)
        pooled = self.avgpool(self.relu(f3_pre)).flatten(1)
        logits = self.fc(pooled)
        return FeatureRecord(
            maps=[f0, f1, f2, f3],
            preact_maps=[f0, f1_pre, f2_pre, f3_pre],
            pooled=pooled,
            logits=logits,
        )


@register_model("wrn_16_1")
def wrn_16_1(num_classes: int = 100) -> WideResNet:
    """WRN-16-1: two blocks per group, widths 16/32/64."""
    return WideResNet(16, num_classes, widen_factor=1)


@register_model("wrn_16_2")
def wrn_16_2(num_classes: int = 100) -> WideResNet:
    """WRN-16-2: two blocks per group, widths 32/64/128: 0.70 M parameters at 100 classes."""
    return WideResNet(16, num_classes, widen_factor=2)


@register_model("wrn_40_1")
def wrn_40_1(num_classes: int = 100) -> WideResNet:
    """WRN-40-1: six blocks per group, widths 16/32/64: 0.57 M parameters at 100 classes."""
    return WideResNet(40, num_classes, widen_factor=1)


@register_model("wrn_40_2")
def wrn_40_2(num_classes: int = 100) -> WideResNet:
    """WRN-40-2: six blocks per group, widths 32/64/128: 2.26 M parameters at 100 classes."""
    return WideResNet(40, num_classes, widen_factor=2)
