"""ShuffleNet V2 (1×) for 32×32 images: the CRD benchmark's ``ShuffleV2`` student.

The units of Ma et al. 2018 ("ShuffleNet V2: Practical Guidelines for
Efficient CNN Architecture Design"): a basic unit splits the channels in two,
passes one half through 1×1 → depthwise 3×3 → 1×1 and concatenates it with the
untouched half; a downsampling unit runs two stride-2 branches on the whole
input and concatenates them. Both end with a two-group channel shuffle.

The configuration is the reference implementation's (RepDistiller,
``net_size=1``): widths 116/232/464, each stage one downsampling unit plus
3/7/3 basic units, a 1×1 stride-1 stem of 24 channels without max-pool (so the
stages run at 16, 8 and 4 pixels), and a 1×1 head convolution to 1024 channels.
Module names follow the reference so that its checkpoints load strictly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from distill.models.base import ZooModel
from distill.models.features import FeatureRecord
from distill.models.registry import register_model
from distill.models.shufflenet_stage import ShuffleStage, channel_shuffle, run_stages

__all__ = ["ShuffleNetV2", "ShuffleV2", "ShuffleV2DownUnit", "ShuffleV2Unit"]

GROUPS = 2  # every unit ends with a two-group channel shuffle


class ShuffleV2Unit(nn.Module):
    """The stride-1 unit: split, transform the second half, concatenate, shuffle.

    ``forward`` returns ``(out, preact)``. Following the reference, ``preact``
    is the concatenation of the identity half with the branch *before* its last
    ReLU, taken before the shuffle: ``channel_shuffle(relu(preact)) == out``
    (the identity half is already non-negative).

    Args:
        channels: input and output channels.
        split_ratio: fraction of the channels that bypasses the branch.
    """

    def __init__(self, channels: int, split_ratio: float = 0.5) -> None:
        super().__init__()
        self.split = int(channels * split_ratio)
        branch = channels - self.split
        self.conv1 = nn.Conv2d(branch, branch, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(branch)
        self.conv2 = nn.Conv2d(branch, branch, kernel_size=3, stride=1, padding=1, groups=branch, bias=False)
        self.bn2 = nn.BatchNorm2d(branch)
        self.conv3 = nn.Conv2d(branch, branch, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(branch)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        identity, branch = x[:, : self.split], x[:, self.split :]
        out = F.relu(self.bn1(self.conv1(branch)))
        out = self.bn2(self.conv2(out))
        branch_preact = self.bn3(self.conv3(out))
        out = channel_shuffle(torch.cat([identity, F.relu(branch_preact)], 1), GROUPS)
        return out, torch.cat([identity, branch_preact], 1)


class ShuffleV2DownUnit(nn.Module):
    """The stride-2 unit: two branches on the whole input, each to half the output width.

    Left: depthwise 3×3 (stride 2) → 1×1. Right: 1×1 → depthwise 3×3
    (stride 2) → 1×1. Concatenate (left first) and shuffle.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(
            in_channels, in_channels, kernel_size=3, stride=2, padding=1, groups=in_channels, bias=False
        )
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        out = channel_shuffle(torch.cat([left, right], 1), GROUPS)
        return out, out


class ShuffleNetV2(ZooModel):
    """ShuffleNet V2 for small images, with the reference's feature taps.

    Features (for a 32×32 input): the stem output (32 px), the three stage
    outputs (16, 8, 4 px) and the pooled 1024-d vector after the head
    convolution. The pre-activation maps are those of each stage's last basic
    unit (see :class:`ShuffleV2Unit`: unshuffled, as in the reference); the stem
    has none, so its post-ReLU output stands in both lists. Weights keep
    PyTorch's default initialisation, as in the reference.

    Args:
        out_channels: widths of the three stages and of the head convolution.
        num_units: basic units per stage (each stage adds one downsampling unit first).
        num_classes: size of the classifier.
    """

    def __init__(
        self,
        out_channels: tuple[int, int, int, int] = (116, 232, 464, 1024),
        num_units: tuple[int, int, int] = (3, 7, 3),
        num_classes: int = 100,
    ) -> None:
        super().__init__()
        stem_channels = 24
        self.conv1 = nn.Conv2d(3, stem_channels, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        in_channels = stem_channels
        stages = []
        for width, units in zip(out_channels[:3], num_units):
            units_of_stage: list[nn.Module] = [ShuffleV2DownUnit(in_channels, width)]
            units_of_stage += [ShuffleV2Unit(width) for _ in range(units)]
            stages.append(ShuffleStage(*units_of_stage))  # a downsampling unit, then basic units
            in_channels = width
        self.layer1, self.layer2, self.layer3 = stages
        self.conv2 = nn.Conv2d(in_channels, out_channels[3], kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(out_channels[3], num_classes)

    def feature_record(self, x: Tensor) -> FeatureRecord:
        stem = F.relu(self.bn1(self.conv1(x)))
        out, maps, preact_maps = run_stages(stem, (self.layer1, self.layer2, self.layer3))
        pooled = self.avgpool(F.relu(self.bn2(self.conv2(out)))).flatten(1)
        return FeatureRecord(maps=maps, preact_maps=preact_maps, pooled=pooled, logits=self.linear(pooled))

    def feature_modules(self) -> list[nn.Module]:
        return [self.conv1, self.bn1, self.layer1, self.layer2, self.layer3]


@register_model("ShuffleV2")
def ShuffleV2(num_classes: int = 100) -> ShuffleNetV2:
    """ShuffleNet V2 1×: widths 116/232/464, 3/7/3 basic units, a 1024-channel head (``ShuffleV2``)."""
    return ShuffleNetV2(out_channels=(116, 232, 464, 1024), num_units=(3, 7, 3), num_classes=num_classes)
