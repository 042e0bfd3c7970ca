"""VGG networks with BatchNorm for CIFAR (Simonyan & Zisserman, "Very Deep
Convolutional Networks for Large-Scale Image Recognition", ICLR 2015).

The convolutional part is split into five blocks of conv3x3(bias)-BN-ReLU layers
separated by 2×2 max pools; the fully connected head of the paper is replaced by
global average pooling and a single linear layer (512 → classes). The configs
are the paper's A (VGG-11), B (VGG-13), D (VGG-16) and E (VGG-19), plus the CRD
benchmark's S (VGG-8, one conv per block).

Module names, parameter shapes and initialisation follow the CRD reference
implementation (RepDistiller ``models/vgg.py``, its ``vgg*_bn`` builders), so its
published teacher checkpoints load strictly: ``block{0..4}.J`` indexes each block's
Sequential [conv, BN, ReLU, conv, BN, ...] (the trailing ReLU is left out of the
Sequential and applied in ``forward``), then ``classifier``.

Two behaviours of the reference are kept on purpose: the convolutions keep their
biases although a BN follows, and the third max pool (``pool3``) is applied only
to 64-pixel inputs, so at 32 pixels blocks 3 and 4 both run at 4×4.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from distill.models.base import ZooModel
from distill.models.features import FeatureRecord
from distill.models.registry import register_model

__all__ = ["VGG", "VGG_CONFIGS", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19"]

# Conv widths of each of the five blocks.
VGG_CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "S": ((64,), (128,), (256,), (512,), (512,)),
    "A": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "B": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "D": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "E": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}

# The reference applies pool3 only at this input height (see the module docstring).
_POOL3_INPUT_HEIGHT = 64


def _make_block(widths: Sequence[int], in_channels: int) -> nn.Sequential:
    """conv3x3-BN-ReLU per width, without the final ReLU (``forward`` applies it)."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [
            nn.Conv2d(in_channels, width, kernel_size=3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        in_channels = width
    return nn.Sequential(*layers[:-1])


class VGG(ZooModel):
    """VGG-BN for 32×32 inputs (Simonyan & Zisserman 2015), five conv blocks and a linear head.

    Args:
        config: five tuples of conv widths, one per block (see :data:`VGG_CONFIGS`);
            the last block must end at 512 channels.
        num_classes: size of the classifier.

    Features (the reference's ``is_feat`` list): ``maps`` are the five block
    outputs after their ReLU; ``preact_maps`` are the same outputs before it, except
    for block 0, which the reference always reports post-ReLU; ``pooled`` is the
    globally averaged 512-vector.
    """

    def __init__(self, config: Sequence[Sequence[int]], num_classes: int = 100) -> None:
        super().__init__()
        if len(config) != 5 or config[-1][-1] != 512:
            raise ValueError(f"a VGG config has five blocks ending at 512 channels, got {config}")
        self.block0 = _make_block(config[0], 3)
        self.block1 = _make_block(config[1], config[0][-1])
        self.block2 = _make_block(config[2], config[1][-1])
        self.block3 = _make_block(config[3], config[2][-1])
        self.block4 = _make_block(config[4], config[3][-1])
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(512, num_classes)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.constant_(module.bias, 0.0)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1.0)
                nn.init.constant_(module.bias, 0.0)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.constant_(module.bias, 0.0)

    def feature_modules(self) -> list[nn.Module]:
        return [
            self.block0, self.pool0,
            self.block1, self.pool1,
            self.block2, self.pool2,
            self.block3, self.pool3,
            self.block4, self.pool4,
        ]  # fmt: skip

    def feature_record(self, x: Tensor) -> FeatureRecord:
        height = x.shape[2]
        f0 = F.relu(self.block0(x))
        f1_pre = self.block1(self.pool0(f0))
        f1 = F.relu(f1_pre)
        f2_pre = self.block2(self.pool1(f1))
        f2 = F.relu(f2_pre)
        f3_pre = self.block3(self.pool2(f2))
        f3 = F.relu(f3_pre)
        x = self.pool3(f3) if height == _POOL3_INPUT_HEIGHT else f3
        f4_pre = self.block4(x)
        f4 = F.relu(f4_pre)
        pooled = self.pool4(f4).flatten(1)
        logits = self.classifier(pooled)
        return FeatureRecord(
            maps=[f0, f1, f2, f3, f4],
            preact_maps=[f0, f1_pre, f2_pre, f3_pre, f4_pre],
            pooled=pooled,
            logits=logits,
        )


@register_model("vgg8")
def vgg8(num_classes: int = 100) -> VGG:
    """VGG-8 with BN (config S, one conv per block): 3.97 M parameters at 100 classes."""
    return VGG(VGG_CONFIGS["S"], num_classes)


@register_model("vgg11")
def vgg11(num_classes: int = 100) -> VGG:
    """VGG-11 with BN (config A)."""
    return VGG(VGG_CONFIGS["A"], num_classes)


@register_model("vgg13")
def vgg13(num_classes: int = 100) -> VGG:
    """VGG-13 with BN (config B): 9.46 M parameters at 100 classes."""
    return VGG(VGG_CONFIGS["B"], num_classes)


@register_model("vgg16")
def vgg16(num_classes: int = 100) -> VGG:
    """VGG-16 with BN (config D)."""
    return VGG(VGG_CONFIGS["D"], num_classes)


@register_model("vgg19")
def vgg19(num_classes: int = 100) -> VGG:
    """VGG-19 with BN (config E)."""
    return VGG(VGG_CONFIGS["E"], num_classes)
