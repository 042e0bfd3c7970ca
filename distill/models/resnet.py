"""CIFAR ResNets (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, §4.2).

The CIFAR family of the paper: a 3×3 stem, then three stages of post-activation
basic blocks (conv3x3-BN-ReLU-conv3x3-BN, add, ReLU) at 32, 16 and 8 pixels, with
``n = (depth - 2) / 6`` blocks per stage. ``resnet8x4`` and ``resnet32x4`` are the
CRD benchmark's four-times-wider variants.

Module names, parameter shapes and initialisation follow the CRD reference
implementation (RepDistiller ``models/resnet.py``), so its published teacher
checkpoints load strictly: ``conv1``, ``bn1``, ``layer{1,2,3}.N.{conv1,bn1,conv2,bn2}``,
``layerL.0.downsample.{0,1}`` (1×1 conv + BN, where the shape changes) and ``fc``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch.nn.functional as F
from torch import Tensor, nn

from distill.models.base import ZooModel
from distill.models.features import FeatureRecord
from distill.models.registry import register_model

__all__ = [
    "BasicBlock",
    "ResNet",
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """A 3×3 convolution with padding 1 and no bias (a BatchNorm follows)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Post-activation residual block: conv3x3-BN-ReLU-conv3x3-BN, add the shortcut, ReLU.

    ``downsample`` (a 1×1 conv + BN) replaces the identity shortcut when the block
    changes the resolution or the width (option B of the paper).
    """

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward_with_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The block output and the residual sum it was computed from (before the last ReLU)."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        preact = self.bn2(self.conv2(out)) + identity
        return F.relu(preact), preact

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_preact(x)[0]


def _run_stage(stage: nn.Sequential, x: Tensor) -> tuple[Tensor, Tensor]:
    """Run a stage of blocks; return its output and the last block's pre-ReLU sum."""
    *blocks, last = stage
    for block in blocks:
        x = block(x)
    return cast(BasicBlock, last).forward_with_preact(x)


class ResNet(ZooModel):
    """CIFAR ResNet of depth ``6n + 2`` (He et al. 2016).

    Args:
        depth: total number of weighted layers; ``(depth - 2)`` must be divisible by 6.
        widths: stem width followed by the widths of the three stages:
            ``(16, 16, 32, 64)`` for the paper's networks, ``(32, 64, 128, 256)``
            for the ×4 variants.
        num_classes: size of the classifier.

    Features (the reference's ``is_feat`` list): ``maps`` are the stem output
    (post-ReLU) and the three stage outputs (post-ReLU); ``preact_maps`` replace
    the stage outputs by the residual sums before the last block's ReLU (the stem
    has no pre-activation variant in the reference, so it appears as is);
    ``pooled`` is the globally averaged last map.
    """

    def __init__(
        self,
        depth: int,
        widths: Sequence[int] = (16, 16, 32, 64),
        num_classes: int = 100,
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth}")
        if len(widths) != 4:
            raise ValueError(f"widths must hold a stem width and three stage widths, got {widths}")
        blocks_per_stage = (depth - 2) // 6
        stem_width, *stage_widths = widths

        self.inplanes = stem_width
        self.conv1 = nn.Conv2d(3, stem_width, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(stage_widths[0], blocks_per_stage, stride=1)
        self.layer2 = self._make_layer(stage_widths[1], blocks_per_stage, stride=2)
        self.layer3 = self._make_layer(stage_widths[2], blocks_per_stage, stride=2)
        # Global average pooling: at 32 px input this is the reference's AvgPool2d(8).
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(stage_widths[2] * BasicBlock.expansion, num_classes)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1.0)
                nn.init.constant_(module.bias, 0.0)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        out_planes = planes * BasicBlock.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out_planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_planes),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = out_planes
        layers.extend(BasicBlock(self.inplanes, planes) for _ in range(1, blocks))
        return nn.Sequential(*layers)

    def feature_modules(self) -> list[nn.Module]:
        return [self.conv1, self.bn1, self.relu, self.layer1, self.layer2, self.layer3]

    def feature_record(self, x: Tensor) -> FeatureRecord:
        f0 = self.relu(self.bn1(self.conv1(x)))
        f1, f1_pre = _run_stage(self.layer1, f0)
        f2, f2_pre = _run_stage(self.layer2, f1)
        f3, f3_pre = _run_stage(self.layer3, f2)
        pooled = self.avgpool(f3).flatten(1)
        logits = self.fc(pooled)
        return FeatureRecord(
            maps=[f0, f1, f2, f3],
            preact_maps=[f0, f1_pre, f2_pre, f3_pre],
            pooled=pooled,
            logits=logits,
        )


_PAPER_WIDTHS = (16, 16, 32, 64)
_X4_WIDTHS = (32, 64, 128, 256)


@register_model("resnet8")
def resnet8(num_classes: int = 100) -> ResNet:
    """ResNet-8 (n=1), widths 16/32/64."""
    return ResNet(8, _PAPER_WIDTHS, num_classes)


@register_model("resnet14")
def resnet14(num_classes: int = 100) -> ResNet:
    """ResNet-14 (n=2), widths 16/32/64."""
    return ResNet(14, _PAPER_WIDTHS, num_classes)


@register_model("resnet20")
def resnet20(num_classes: int = 100) -> ResNet:
    """ResNet-20 (n=3), widths 16/32/64: 0.28 M parameters at 100 classes."""
    return ResNet(20, _PAPER_WIDTHS, num_classes)


@register_model("resnet32")
def resnet32(num_classes: int = 100) -> ResNet:
    """ResNet-32 (n=5), widths 16/32/64: 0.47 M parameters at 100 classes."""
    return ResNet(32, _PAPER_WIDTHS, num_classes)


@register_model("resnet44")
def resnet44(num_classes: int = 100) -> ResNet:
    """ResNet-44 (n=7), widths 16/32/64."""
    return ResNet(44, _PAPER_WIDTHS, num_classes)


@register_model("resnet56")
def resnet56(num_classes: int = 100) -> ResNet:
    """ResNet-56 (n=9), widths 16/32/64: 0.86 M parameters at 100 classes."""
    return ResNet(56, _PAPER_WIDTHS, num_classes)


@register_model("resnet110")
def resnet110(num_classes: int = 100) -> ResNet:
    """ResNet-110 (n=18), widths 16/32/64: 1.74 M parameters at 100 classes."""
    return ResNet(110, _PAPER_WIDTHS, num_classes)


@register_model("resnet8x4")
def resnet8x4(num_classes: int = 100) -> ResNet:
    """ResNet-8 four times wider (stem 32, widths 64/128/256): 1.23 M parameters."""
    return ResNet(8, _X4_WIDTHS, num_classes)


@register_model("resnet32x4")
def resnet32x4(num_classes: int = 100) -> ResNet:
    """ResNet-32 four times wider (stem 32, widths 64/128/256): 7.43 M parameters."""
    return ResNet(32, _X4_WIDTHS, num_classes)
