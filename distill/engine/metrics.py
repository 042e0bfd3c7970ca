"""Accuracy and the run's metric sinks: ``metrics.jsonl`` and TensorBoard.

``read_metrics`` (the reader of ``metrics.jsonl``) lives with the run directory's layout in
:mod:`distill.engine.rundir`, which imports no torch, and is re-exported here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from distill.engine.rundir import METRICS_FILE, TENSORBOARD_DIR, MetricsFileError, read_metrics

__all__ = ["MetricsFileError", "MetricsWriter", "read_metrics", "topk_correct"]


def topk_correct(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> Tensor:
    """How many samples have their label among the top-k predictions, for each k (a tensor of len(ks)).

    k is capped at the number of classes, so top-5 on a 3-class problem is top-3.
    """
    max_k = min(max(ks), logits.shape[1])
    top = logits.topk(max_k, dim=1).indices
    hits = top.eq(labels.unsqueeze(1))
    return torch.stack([hits[:, : min(k, max_k)].any(dim=1).sum() for k in ks])


class MetricsWriter:
    """Appends one JSON line per record to ``metrics.jsonl`` and mirrors scalars to TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.path = run_dir / METRICS_FILE
        self._file = self.path.open("a", encoding="utf-8")
        self._tensorboard = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR))

    def write(self, record: dict[str, Any], step: int) -> None:
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        self._file.flush()
        if self._tensorboard is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
                    if math.isfinite(value):
                        self._tensorboard.add_scalar(key, value, step)
            self._tensorboard.flush()

    def close(self) -> None:
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
