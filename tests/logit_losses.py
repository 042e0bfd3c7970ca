"""Feature records, loss contexts and batches for the tests of losses that read only the logits."""

from __future__ import annotations

import torch

from distill.losses import Batch, LossContext
from distill.models.features import FeatureRecord, FeatureShapes


def record(logits: torch.Tensor) -> FeatureRecord:
    """A record whose logits are ``logits`` (B×C); the other features are placeholders."""
    return FeatureRecord(maps=[], preact_maps=[], pooled=torch.zeros(logits.shape[0], 2), logits=logits)


def context(num_classes: int = 5) -> LossContext:
    """The context of a student and a teacher that give ``num_classes`` logits."""
    shapes = FeatureShapes(maps=[], preact_maps=[], pooled=(2,), logits=(num_classes,))
    return LossContext(student=shapes, teacher=shapes, num_classes=num_classes, dataset_size=8, labels=torch.zeros(8, dtype=torch.long))


def batch(labels: torch.Tensor | int) -> Batch:
    """A batch with ``labels`` (an int ``n``: ``n`` samples of class 0)."""
    if isinstance(labels, int):
        labels = torch.zeros(labels, dtype=torch.long)
    return Batch(inputs=torch.zeros(len(labels), 3), labels=labels, indices=torch.arange(len(labels)))
