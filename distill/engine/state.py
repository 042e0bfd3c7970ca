"""How far a run has come (:class:`TrainState`, saved in every checkpoint) and how it ended (:class:`TrainResult`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path


@dataclass
class TrainState:
    """Counters that describe how far a run has come.

    ``epoch`` counts finished epochs; ``batch`` the batches done of the next one
    (0 at an epoch boundary); ``step`` every optimisation step, skipped ones included.
    """

    epoch: int = 0
    step: int = 0
    batch: int = 0
    best_top1: float = -math.inf
    best_epoch: int = 0
    top1: float = math.nan
    top5: float = math.nan


@dataclass(frozen=True)
class TrainResult:
    """The outcome of a finished run.

    ``final_top1`` is the last epoch's test accuracy: the protocol of the CRD
    paper's tables. ``best_top1`` is selected on the test set and is shown for
    information only. ``seconds``: the time spent in the epochs, summed over the run's
    resumes (a part trained before a format-2 checkpoint is not counted: it was not recorded).
    """

    run_dir: Path
    final_top1: float
    final_top5: float
    best_top1: float
    best_epoch: int
    epochs: int
    seconds: float
