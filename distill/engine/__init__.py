"""The training engine: trainer, distiller, evaluation, checkpoints, run directories.

The names below are imported on first use, so that a light module of the engine
(``distill.engine.rundir``: the run directory's layout) can be read by reports and
the teacher manifest without importing Accelerate and the trainer.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Accuracy": "distill.engine.evaluate",
    "evaluate": "distill.engine.evaluate",
    "TrainResult": "distill.engine.trainer",
    "Trainer": "distill.engine.trainer",
    "train": "distill.engine.trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'distill.engine' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
