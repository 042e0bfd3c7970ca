"""Accuracy and the run's metric sinks: ``metrics.jsonl``, ``steps.jsonl`` and the experiment trackers.

``read_metrics`` (the reader of ``metrics.jsonl``) lives with the run directory's layout in
:mod:`distill.files.rundir`, which imports no torch, and is re-exported here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from distill.engine.tracking import Trackers
from distill.files.rundir import METRICS_FILE, STEPS_FILE, MetricsFileError, read_metrics

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


def _steps_through(path: Path, last_step: int) -> Iterator[dict[str, Any]]:
    """The rows of ``steps.jsonl`` up to global step ``last_step``, not reading past them.

    Rows are written in step order and each is flushed before any checkpoint that
    follows it, so everything after the checkpoint's step (a line a crash cut short
    included) was written after the checkpoint: reading stops at the first such line.
    """
    if not path.is_file():
        return
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                return
            if not isinstance(row, dict) or int(row.get("step", 0)) > last_step:
                return
            yield row


def tensorboard_step(record: dict[str, Any]) -> int:
    """The tracker step of a ``metrics.jsonl`` record: its ``step``, else its init-stage epoch, else 0."""
    return int(record.get("step", record.get("init/epoch", 0)))


class MetricsWriter:
    """Appends the run's rows to ``metrics.jsonl`` and ``steps.jsonl`` and logs their scalars to the trackers.

    ``metrics.jsonl`` (one row per epoch, the teacher's and the init stages') and
    ``steps.jsonl`` (every ``log_every`` steps, :meth:`write_step`) are the record of
    the run; the trackers (:class:`~distill.engine.tracking.Trackers`, TensorBoard alone
    when not given and ``tensorboard`` is true) are a view of it. A resumed run passes
    ``keep_rows``, the number of ``metrics.jsonl`` records its checkpoint had seen, and
    ``keep_steps_to``, the checkpoint's global step: later rows (written after that
    checkpoint, before the crash) are dropped and TensorBoard rebuilt from the kept
    ones, so neither holds a duplicate row once training continues (what remote
    trackers do with them: :class:`~distill.engine.tracking.Trackers`).
    """

    def __init__(
        self, run_dir: Path, tensorboard: bool = True, keep_rows: int | None = None, *,
        trackers: Trackers | None = None, keep_steps_to: int | None = None,
    ) -> None:
        self.path, self.steps_path = run_dir / METRICS_FILE, run_dir / STEPS_FILE
        kept: list[dict[str, Any]] = []
        kept_steps: list[dict[str, Any]] = []
        if keep_rows is not None:
            kept = _first_rows(run_dir, keep_rows)
            self.path.write_text("".join(json.dumps(row, allow_nan=True) + "\n" for row in kept), encoding="utf-8")
            if keep_steps_to is not None:
                kept_steps = list(_steps_through(self.steps_path, keep_steps_to))
                self.steps_path.write_text("".join(json.dumps(row, allow_nan=True) + "\n" for row in kept_steps), encoding="utf-8")
        self._file = self.path.open("a", encoding="utf-8")
        self._steps_file = None  # opened at the first step row: a run that logs none has no steps.jsonl
        self.rows = len(kept) if keep_rows is not None else len(read_metrics(run_dir))
        if trackers is None:
            trackers = Trackers(run_dir, ["tensorboard"] if tensorboard else [])
        self.trackers = trackers
        try:
            trackers.start(resumed=keep_rows is not None)
            trackers.replay([*((row, tensorboard_step(row)) for row in kept), *((row, int(row["step"])) for row in kept_steps)])
        except BaseException:
            self.close()
            raise

    def write(self, record: dict[str, Any], step: int) -> None:
        """One ``metrics.jsonl`` record (an epoch's, the teacher's, an init stage's), logged at tracker step ``step``."""
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        self._file.flush()
        self.rows += 1
        self.trackers.log(record, step)

    def write_step(self, row: dict[str, Any]) -> None:
        """One ``steps.jsonl`` row (running means at a global step), logged at its ``step``."""
        if self._steps_file is None:
            self._steps_file = self.steps_path.open("a", encoding="utf-8")
        self._steps_file.write(json.dumps(row, allow_nan=True) + "\n")
        self._steps_file.flush()
        self.trackers.log(row, int(row["step"]))

    def close(self) -> None:
        self._file.close()
        if self._steps_file is not None:
            self._steps_file.close()
        self.trackers.finish()
