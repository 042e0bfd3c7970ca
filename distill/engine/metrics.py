"""Accuracy and the run's metric sinks: ``metrics.jsonl`` and TensorBoard.

``read_metrics`` (the reader of ``metrics.jsonl``) lives with the run directory's layout in
:mod:`distill.files.rundir`, which imports no torch, and is re-exported here.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from distill.files.rundir import METRICS_FILE, TENSORBOARD_DIR, MetricsFileError, read_metrics

__all__ = ["MetricsFileError", "MetricsWriter", "read_metrics", "topk_correct"]


def topk_correct(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> Tensor:
    """How many samples have their label among the top-k predictions, for each k (a tensor of len(ks)).

    k is capped at the number of classes, so top-5 on a 3-class problem is top-3.
    """
    max_k = min(max(ks), logits.shape[1])
    top = logits.topk(max_k, dim=1).indices
    hits = top.eq(labels.unsqueeze(1))
    return torch.stack([hits[:, : min(k, max_k)].any(dim=1).sum() for k in ks])


def _first_rows(run_dir: Path, count: int) -> list[dict[str, Any]]:
    """The first ``count`` records of a ``metrics.jsonl``, not reading past them (see :func:`read_metrics`)."""
    rows = read_metrics(run_dir, limit=count)
    if len(rows) < count:
        raise MetricsFileError(
            f"{run_dir / METRICS_FILE} holds {len(rows)} records, but the checkpoint being resumed saw {count}"
        )
    return rows


def tensorboard_step(record: dict[str, Any]) -> int:
    """The TensorBoard step of a ``metrics.jsonl`` record: its ``step``, else its init-stage epoch, else 0."""
    return int(record.get("step", record.get("init/epoch", 0)))


class MetricsWriter:
    """Appends one JSON line per record to ``metrics.jsonl`` and mirrors scalars to TensorBoard.

    ``metrics.jsonl`` is the record of the run; TensorBoard's event files are a view
    of it. A resumed run passes ``keep_rows``, the number of records its checkpoint
    had seen: later records (written after that checkpoint, before the crash) are
    dropped and the event files rebuilt from the kept ones, so neither holds a
    duplicate row once training continues.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True, keep_rows: int | None = None) -> None:
        self.path = run_dir / METRICS_FILE
        kept = []
        if keep_rows is not None:
            kept = _first_rows(run_dir, keep_rows)
            self.path.write_text("".join(json.dumps(row, allow_nan=True) + "\n" for row in kept), encoding="utf-8")
            shutil.rmtree(run_dir / TENSORBOARD_DIR, ignore_errors=True)
        self._file = self.path.open("a", encoding="utf-8")
        self.rows = len(kept) if keep_rows is not None else len(read_metrics(run_dir))
        self._tensorboard = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR))
            for row in kept:
                self._mirror(row, tensorboard_step(row))

    def write(self, record: dict[str, Any], step: int) -> None:
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        self._file.flush()
        self.rows += 1
        self._mirror(record, step)

    def _mirror(self, record: dict[str, Any], step: int) -> None:
        if self._tensorboard is None:
            return
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("epoch", "step"):
                if math.isfinite(value):
                    self._tensorboard.add_scalar(key, value, step)
        self._tensorboard.flush()

    def close(self) -> None:
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
