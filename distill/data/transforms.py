"""Normalisation constants and the train/test transforms of every dataset.

Kept in one place so the CIFAR constants match the reference implementation
(RepDistiller) exactly, and so tests can undo a normalisation with the same numbers
the dataset used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision import transforms as T

Transform = Callable[..., torch.Tensor]
Stats = tuple[float, float, float]

#: CIFAR-100 per-channel mean and std, as in RepDistiller's ``dataset/cifar100.py``.
CIFAR100_MEAN: Stats = (0.5071, 0.4867, 0.4408)
CIFAR100_STD: Stats = (0.2675, 0.2565, 0.2761)

#: CIFAR-10 per-channel mean and std.
CIFAR10_MEAN: Stats = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: Stats = (0.2470, 0.2435, 0.2616)

#: ImageNet per-channel mean and std, the default for users' own image folders.
IMAGENET_MEAN: Stats = (0.485, 0.456, 0.406)
IMAGENET_STD: Stats = (0.229, 0.224, 0.225)

#: Padding of the random crop used on 32×32 images (CIFAR and synthetic).
CROP_PADDING = 4


def cifar_transform(mean: Sequence[float], std: Sequence[float], augment: bool) -> Transform:
    """PIL image → normalised tensor; with ``augment``, a zero-padded random crop and a flip first."""
    steps: list[Callable] = []
    if augment:
        steps += [T.RandomCrop(32, padding=CROP_PADDING), T.RandomHorizontalFlip()]
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


def folder_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float], augment: bool
) -> Transform:
    """PIL image of any size → normalised ``3 × image_size × image_size`` tensor.

    Training takes a random crop covering 60–100 % of the image, resized, then a
    flip; evaluation resizes the short side and takes the centre, as is usual for
    ImageNet-style folders (the resize keeps the 0.875 crop ratio above 32 pixels,
    and is exact for tiny images, where cropping would lose too much).
    """
    if augment:
        steps: list[Callable] = [
            T.RandomResizedCrop(image_size, scale=(0.6, 1.0)),
            T.RandomHorizontalFlip(),
        ]
    else:
        steps = [fixed_size(image_size)]
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


def fixed_size(image_size: int) -> Transform:
    """PIL image of any size → ``image_size × image_size``: resize the short side, take the centre.

    The resize keeps the usual 0.875 crop ratio above 32 pixels and is exact for tiny images.
    """
    resize = image_size if image_size <= 32 else round(image_size / 0.875)
    return T.Compose([T.Resize(resize), T.CenterCrop(image_size)])


def tensor_augment(size: int, padding: int = CROP_PADDING) -> Transform:
    """Random crop with zero padding and a horizontal flip, on an already-normalised tensor."""
    return T.Compose([T.RandomCrop(size, padding=padding), T.RandomHorizontalFlip()])


def per_channel(values: Sequence[float] | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Per-channel statistics shaped ``1×C×1×1`` for broadcasting over a batch."""
    return torch.as_tensor(values, dtype=torch.float32, device=device).view(1, -1, 1, 1)


def normalize_batch(
    images: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    *,
    channels_last: bool = False,
) -> torch.Tensor:
    """``uint8 B×C×H×W`` → ``float32``, ``/255`` then ``(x - mean) / std``: torchvision's ToTensor + Normalize."""
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    out = images.to(torch.float32)  # keeps the memory format
    return out.div_(255).sub_(per_channel(mean, out.device)).div_(per_channel(std, out.device))
