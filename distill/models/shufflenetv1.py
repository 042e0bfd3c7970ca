"""ShuffleNet (v1) with 3 groups for 32×32 images: the CRD benchmark's ``ShuffleV1`` student.

The ShuffleNet unit of Zhang et al. 2018 ("ShuffleNet: An Extremely Efficient
Convolutional Neural Network for Mobile Devices"): a 1×1 group convolution, a
channel shuffle so that the next group convolution sees every group, a 3×3
depthwise convolution and a second 1×1 group convolution. Stride-2 units
concatenate their output with an average-pooled shortcut instead of adding it.

The configuration is the reference implementation's (RepDistiller): g = 3,
output widths 240/480/960 with 4/8/4 units, a 1×1 stride-1 stem of 24 channels
and no max-pool, so the three stages run at 16, 8 and 4 pixels. Module names
(``conv1``, ``bn1``, ``layerL.N.{conv,bn}{1,2,3}``, ``linear``) follow the
reference so that its checkpoints load strictly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from distill.models.base import ZooModel
from distill.models.features import FeatureRecord
from distill.models.registry import register_model
from distill.models.shufflenet_stage import ShuffleStage, channel_shuffle, run_stages

__all__ = ["ShuffleNetV1", "ShuffleUnit", "ShuffleV1"]


class ShuffleUnit(nn.Module):
    """One ShuffleNet unit; ``forward`` returns ``(out, preact)``.

    ``preact`` is the sum (stride 1) or concatenation (stride 2) before the
    final ReLU. With stride 2 the branch produces ``out_channels - in_channels``
    channels and the pooled input fills the rest, branch first.

    Args:
        in_channels: input channels.
        out_channels: output channels of the unit (branch plus shortcut).
        stride: 1 (residual add) or 2 (concatenate with a 3×3 average-pooled input).
        groups: groups of the 1×1 convolutions.
        group_first_conv: whether the first 1×1 convolution is grouped (and
            followed by a shuffle); the paper does not group it in the very first
            unit, whose input has too few channels.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, groups: int, group_first_conv: bool = True
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        if stride == 1 and in_channels != out_channels:
            raise ValueError(f"a stride-1 unit keeps its width; got {in_channels} -> {out_channels}")
        self.stride = stride
        branch_channels = out_channels - in_channels if stride == 2 else out_channels
        mid_channels = branch_channels // 4
        self.first_groups = groups if group_first_conv else 1
        self.conv1 = nn.Conv2d(in_channels, mid_channels, kernel_size=1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.conv2 = nn.Conv2d(
            mid_channels, mid_channels, kernel_size=3, stride=stride, padding=1,
            groups=mid_channels, bias=False,
        )
        self.bn2 = nn.BatchNorm2d(mid_channels)
        self.conv3 = nn.Conv2d(mid_channels, branch_channels, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch_channels)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = self.shortcut(x)
        preact = torch.cat([out, shortcut], 1) if self.stride == 2 else out + shortcut
        return F.relu(preact), preact


class ShuffleNetV1(ZooModel):
    """ShuffleNet v1 for small images, with the reference's feature taps.

    Features (for a 32×32 input): the stem output (32 px), the three stage
    outputs (16, 8, 4 px) and the pooled vector. The pre-activation maps are
    the tensors before the last ReLU of each stage's last unit; the stem has
    none, so its post-ReLU output stands in both lists. Weights keep PyTorch's
    default initialisation, as in the reference.

    Args:
        out_channels: output widths of the three stages.
        num_units: units per stage; the first unit of each stage has stride 2.
        groups: groups of the 1×1 convolutions.
        num_classes: size of the classifier.
    """

    def __init__(
        self,
        out_channels: tuple[int, int, int] = (240, 480, 960),
        num_units: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
        num_classes: int = 100,
    ) -> None:
        super().__init__()
        stem_channels = 24
        self.conv1 = nn.Conv2d(3, stem_channels, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        in_channels = stem_channels
        stages = []
        for stage_index, (width, units) in enumerate(zip(out_channels, num_units)):
            layers = []
            for i in range(units):
                stride = 2 if i == 0 else 1
                grouped = not (stage_index == 0 and i == 0)
                layers.append(ShuffleUnit(in_channels, width, stride, groups, group_first_conv=grouped))
                in_channels = width
            stages.append(ShuffleStage(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(out_channels[2], num_classes)

    def feature_record(self, x: Tensor) -> FeatureRecord:
        stem = F.relu(self.bn1(self.conv1(x)))
        out, maps, preact_maps = run_stages(stem, (self.layer1, self.layer2, self.layer3))
        pooled = self.avgpool(out).flatten(1)
        return FeatureRecord(maps=maps, preact_maps=preact_maps, pooled=pooled, logits=self.linear(pooled))

    def feature_modules(self) -> list[nn.Module]:
        return [self.conv1, self.bn1, self.layer1, self.layer2, self.layer3]


@register_model("ShuffleV1")
def ShuffleV1(num_classes: int = 100) -> ShuffleNetV1:
    """ShuffleNet v1, g = 3, widths 240/480/960 with 4/8/4 units (the benchmark's ShuffleV1)."""
    return ShuffleNetV1(out_channels=(240, 480, 960), num_units=(4, 8, 4), groups=3, num_classes=num_classes)
