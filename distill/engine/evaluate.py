"""Top-1/top-5 accuracy of a classifier on a test loader, across processes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from distill.engine.metrics import topk_correct


@dataclass(frozen=True)
class Accuracy:
    top1: float
    top5: float
    count: int


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, accelerator: Accelerator) -> Accuracy:
    """Exact accuracy (in %) over the whole dataset: per-process counts, gathered once at the end.

    Accelerate pads the last batch so every process gets the same number of
    batches; ``gather_for_metrics`` drops those duplicates, so the count is exact.
    """
    was_training = model.training
    model.eval()
    correct = torch.zeros(2, dtype=torch.long, device=accelerator.device)
    seen = torch.zeros((), dtype=torch.long, device=accelerator.device)
    for inputs, labels, _ in loader:
        logits = model(inputs)
        logits, labels = accelerator.gather_for_metrics((logits, labels))
        correct += topk_correct(logits, labels)
        seen += labels.numel()
    model.train(was_training)
    count = int(seen.item())
    top1, top5 = (100.0 * correct.double() / max(count, 1)).tolist()
    return Accuracy(top1=top1, top5=top5, count=count)
