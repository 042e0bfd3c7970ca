"""Top-1/top-5 accuracy of a classifier on a test loader, across processes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from torch import nn

from distill.engine.metrics import topk_correct


@dataclass(frozen=True)
class Accuracy:
    top1: float
    top5: float
    count: int


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, accelerator: Accelerator) -> Accuracy:
    """Exact accuracy (in %) over the whole dataset, counting each test image once.

    Two kinds of loader:

    * one that shards itself (``loader.shards_itself``, the device loader): each
      process sees its own part and fills its shard up with items labelled ``-1``;
      only labels ``>= 0`` are counted, and the counts are summed over the
      processes once, at the end;
    * a ``DataLoader`` prepared by Accelerate, which pads the last batch so every
      process gets the same number of batches: ``gather_for_metrics`` drops those
      duplicates, so the count is exact.
    """
    was_training = model.training
    model.eval()
    shards_itself = getattr(loader, "shards_itself", False)
    correct = torch.zeros(2, dtype=torch.long, device=accelerator.device)
    seen = torch.zeros((), dtype=torch.long, device=accelerator.device)
    for inputs, labels, _ in loader:
        logits = model(inputs)
        if not shards_itself:
            logits, labels = accelerator.gather_for_metrics((logits, labels))
        # A filler label (-1) is never among the predicted classes, so it adds no hit either.
        correct += topk_correct(logits, labels).to(correct.device)
        seen += (labels >= 0).sum().to(seen.device)
    if shards_itself:
        correct = accelerator.reduce(correct, reduction="sum")
        seen = accelerator.reduce(seen, reduction="sum")
    model.train(was_training)
    count = int(seen.item())
    top1, top5 = (100.0 * correct.double() / max(count, 1)).tolist()
    return Accuracy(top1=top1, top5=top5, count=count)
