"""Loading weights strictly from the checkpoint formats people actually have.

Accepted files (always read on CPU with ``weights_only=True``, so a file holding
pickled code is refused rather than executed):

* a bare ``state_dict``;
* a dict with the state_dict under ``model`` (RepDistiller / mdistiller teacher
  files such as ``ckpt_epoch_240.pth``, and distill's own checkpoints), possibly
  saved from CUDA tensors and possibly by old torch without BatchNorm's
  ``num_batches_tracked`` buffers;
* the same with keys prefixed by ``module.`` (saved from DataParallel/DDP).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from distill.errors import CheckpointError

STATE_DICT_KEYS = ("model", "state_dict")


def read_checkpoint(path: str | Path) -> Any:
    """``torch.load`` on CPU with ``weights_only=True``, turning failures into CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a file)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"checkpoint {path} was refused by safe loading (weights_only=True): {error}. "
            f"It holds Python objects beyond tensors and containers; re-save only its state_dict"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(
            f"checkpoint {path} could not be read ({type(error).__name__}: {error}); "
            f"it is probably truncated or not a torch file"
        ) from None


def extract_state_dict(checkpoint: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The model weights inside a loaded checkpoint, with any ``module.`` prefix removed."""
    state = checkpoint
    if isinstance(checkpoint, Mapping):
        for key in STATE_DICT_KEYS:
            if key in checkpoint and isinstance(checkpoint[key], Mapping):
                state = checkpoint[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = list(checkpoint)[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise CheckpointError(
            f"{source} holds no state_dict: expected tensors by name, or a dict with one under "
            f"'model'; found {keys}"
        )
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _fill_missing_batch_counters(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Add BatchNorm ``num_batches_tracked`` buffers that checkpoints from torch < 0.4.1 lack."""
    for key, buffer in model.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(buffer)


def describe_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor], limit: int = 5) -> str:
    """A readable account of how a state_dict differs from a model's, first few of each kind."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            parts.append(f"{label} keys: {', '.join(items[:limit])}{more}")
    return "; ".join(parts)


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load every key, strictly; on mismatch say which keys and shapes differ."""
    state = dict(state)
    _fill_missing_batch_counters(model, state)
    mismatch = describe_mismatch(model, state)
    if mismatch:
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__}: {mismatch}. "
            f"Is it a checkpoint of this architecture?"
        )
    model.load_state_dict(state, strict=True)


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Read a checkpoint file (any accepted format) strictly into ``model``."""
    state = extract_state_dict(read_checkpoint(path), source=f"checkpoint {path}")
    load_state_dict_strict(model, state, source=f"checkpoint {path}")
