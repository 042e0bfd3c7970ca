"""The part of the dataset contract shared by datasets built on torchvision classes."""

from __future__ import annotations

import torch


class IndexedTargetsMixin:
    """Adds the sample index to each item and exposes ``labels``/``num_classes``.

    Mixed in before a torchvision dataset that keeps its labels in ``targets``
    and its class names in ``classes`` (CIFAR, ImageFolder). The index is what
    the memory-bank losses key their rows by.
    """

    targets: list[int]
    classes: list[str]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image, label = super().__getitem__(index)  # type: ignore[misc]
        return image, int(label), index

    @property
    def labels(self) -> torch.Tensor:
        """All labels as a ``LongTensor[N]``, without loading any image."""
        return torch.as_tensor(self.targets, dtype=torch.long)

    @property
    def num_classes(self) -> int:
        return len(self.classes)
