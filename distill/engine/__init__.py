"""The training engine: trainer, distiller, evaluation, checkpoints, run directories."""

from distill.engine.evaluate import Accuracy, evaluate
from distill.engine.trainer import TrainResult, Trainer, train

__all__ = ["Accuracy", "TrainResult", "Trainer", "evaluate", "train"]
