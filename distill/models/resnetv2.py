"""ResNet-18/34/50 for 32×32 images: the CRD benchmark's "ImageNet-family" ResNets.

These are the residual networks of He et al. 2016 ("Deep Residual Learning for
Image Recognition") with the ImageNet stage layout (four stages, widths
64/128/256/512, BasicBlock for 18/34 and the expansion-4 Bottleneck for 50),
but with the stem shrunk for CIFAR: one 3×3 stride-1 convolution and no
max-pool, so the stages run at 32, 16, 8 and 4 pixels.

The file is named after the reference implementation's ``resnetv2.py``
(RepDistiller); the networks are ordinary post-activation ResNets, *not* the
pre-activation "ResNet v2" of He et al. 2016b. Module names (``shortcut``,
``linear``) follow the reference so that its published teacher checkpoints
(e.g. ``ResNet50_vanilla/ckpt_epoch_240.pth``) load strictly.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn
from torch.nn import functional as F

from distill.models.base import ZooModel
from distill.models.features import FeatureRecord
from distill.models.registry import register_model

__all__ = ["BasicBlock", "Bottleneck", "ResNetV2", "ResNet18", "ResNet34", "ResNet50"]


def _projection(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """The 1×1 conv + BN shortcut used where a block changes resolution or width."""
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers plus a shortcut, then ReLU (ResNet-18/34).

    ``forward`` returns ``(out, preact)``: ``preact`` is the residual sum before
    the final ReLU, which distillers such as AB (Heo et al. 2019) read. Keeping
    a reference to it costs nothing.
    """

    expansion: ClassVar[int] = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        needs_projection = stride != 1 or in_planes != out_planes
        self.shortcut = _projection(in_planes, out_planes, stride) if needs_projection else nn.Sequential()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        preact = self.bn2(self.conv2(out)) + self.shortcut(x)
        return F.relu(preact), preact


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (carrying the stride), 1×1 expand ×4, plus a shortcut, then ReLU (ResNet-50).

    ``forward`` returns ``(out, preact)`` like :class:`BasicBlock`.
    """

    expansion: ClassVar[int] = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        needs_projection = stride != 1 or in_planes != out_planes
        self.shortcut = _projection(in_planes, out_planes, stride) if needs_projection else nn.Sequential()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        preact = self.bn3(self.conv3(out)) + self.shortcut(x)
        return F.relu(preact), preact


class ResidualStage(nn.Sequential):
    """A run of residual blocks that returns ``(out, preact)`` of its last block.

    A plain ``nn.Sequential`` subclass, so parameters keep the reference's
    ``layerL.N.*`` names; every block is still called through ``__call__``, so
    hooks fire as usual.
    """

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        preact = x
        for block in self:
            x, preact = block(x)
        return x, preact


Block = type[BasicBlock] | type[Bottleneck]


class ResNetV2(ZooModel):
    """A four-stage ResNet with a CIFAR stem (3×3 stride-1 conv, BN, ReLU; no max-pool).

    Features (for a 32×32 input): the stem output, the four stage outputs (32,
    16, 8, 4 px) and the globally pooled vector. The pre-activation maps are the
    residual sums before the last ReLU of each stage; the stem has none, so its
    post-ReLU output stands in both lists, as in the reference.

    Initialisation follows the reference: Kaiming-normal (fan-out) convolutions,
    BatchNorm weight 1 and bias 0 (no zero-init of the last BN of each block),
    and PyTorch's default for the linear classifier.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        num_blocks: blocks per stage (four entries).
        num_classes: size of the classifier.
    """

    def __init__(self, block: Block, num_blocks: list[int], num_classes: int = 100) -> None:
        super().__init__()
        if len(num_blocks) != 4:
            raise ValueError(f"ResNetV2 has four stages; got num_blocks={num_blocks}")
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        stages = []
        for planes, blocks, stride in zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2)):
            layers = []
            for i in range(blocks):
                layers.append(block(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes * block.expansion
            stages.append(ResidualStage(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(512 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def feature_record(self, x: Tensor) -> FeatureRecord:
        stem = F.relu(self.bn1(self.conv1(x)))
        maps, preact_maps = [stem], [stem]
        out = stem
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            out, preact = stage(out)
            maps.append(out)
            preact_maps.append(preact)
        pooled = self.avgpool(out).flatten(1)
        return FeatureRecord(maps=maps, preact_maps=preact_maps, pooled=pooled, logits=self.linear(pooled))

    def feature_modules(self) -> list[nn.Module]:
        return [self.conv1, self.bn1, self.layer1, self.layer2, self.layer3, self.layer4]


@register_model("ResNet18")
def ResNet18(num_classes: int = 100) -> ResNetV2:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]) with a CIFAR stem."""
    return ResNetV2(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)


@register_model("ResNet34")
def ResNet34(num_classes: int = 100) -> ResNetV2:
    """ResNet-34 (BasicBlock, [3, 4, 6, 3]) with a CIFAR stem."""
    return ResNetV2(BasicBlock, [3, 4, 6, 3], num_classes=num_classes)


@register_model("ResNet50")
def ResNet50(num_classes: int = 100) -> ResNetV2:
    """ResNet-50 (Bottleneck, [3, 4, 6, 3]) with a CIFAR stem: the benchmark's ResNet50 teacher."""
    return ResNetV2(Bottleneck, [3, 4, 6, 3], num_classes=num_classes)
