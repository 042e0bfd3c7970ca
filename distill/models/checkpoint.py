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
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.errors import CheckpointError

STATE_DICT_KEYS = ("model", "state_dict")

ZIP_HEADER = b"PK\x03\x04"
"""How every file written by ``torch.save`` (torch ≥ 1.6, the zip format) begins."""
LEGACY_MAGIC = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)[2:-1]
"""The pickled magic number near the start of files from the legacy ``torch.save`` format."""

_REFUSED_OBJECT_PATTERNS = (
    re.compile(r"GLOBAL (\S+) was not an allowed global"),
    re.compile(r"unsupported GLOBAL (\S+) whose module"),
    re.compile(r"call reduce for unrecognized function (.+?)(?: which belongs|$)", re.MULTILINE),
    re.compile(r"create new object for .+? but got (.+)$", re.MULTILINE),
)
"""What torch's safe unpickler says when a pickle asks for a callable or class beyond tensors and containers."""
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def refused_object(message: str) -> str | None:
    """The callable or class that safe loading refused to touch (e.g. ``posix.system``), if that is the failure.

    ``None`` means the unpickler failed for another reason (damaged or foreign bytes).
    """
    for pattern in _REFUSED_OBJECT_PATTERNS:
        match = pattern.search(message)
        if match:
            return match.group(1).strip()
    return None


def describe_unreadable(path: Path) -> str:
    """Why a file that ``torch.load`` cannot parse is unreadable, judged from its first bytes."""
    with path.open("rb") as handle:
        head = handle.read(64)
    if not head:
        return "the file is empty"
    if head.startswith(ZIP_HEADER) or LEGACY_MAGIC in head:
        return "it starts like a torch checkpoint but is truncated or corrupted (an interrupted download or copy?)"
    return "it is not a torch checkpoint (it has neither the zip nor the legacy header that torch.save writes)"


def _underlying_message(error: BaseException) -> str:
    """``Type: first sentence`` of a loading failure, without terminal colour codes.

    torch wraps the safe unpickler's own message in advice to retry with
    ``weights_only=False``; that advice is wrong for a damaged file, so only the
    unpickler's message (after ``WeightsUnpickler error:`` or in the last paragraph) is
    kept, and only its first sentence: the rest is torch's generic guesswork.
    """
    text = _ANSI_ESCAPE.sub("", str(error))
    inner = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if inner:
        line = inner.group(1)
    else:
        paragraphs = [
            part.strip() for part in text.split("\n\n") if part.strip() and not part.strip().startswith("Check the documentation")
        ]
        line = paragraphs[-1].splitlines()[0] if paragraphs else ""
    sentence = line.strip().split(". ")[0].rstrip(".")
    return f"{type(error).__name__}: {sentence}" if sentence else type(error).__name__


def read_checkpoint(path: str | Path) -> Any:
    """``torch.load`` on CPU with ``weights_only=True``, turning every failure into a CheckpointError.

    Unpickling foreign or damaged bytes can raise almost any exception (a KeyError
    from a bogus memo index, a struct or Unicode error, ...), so everything is caught;
    the message then tells a refusal of pickled code apart from an unreadable file.
    torch's warning about an unexpected pickle protocol is silenced: on noise it is
    spurious (the error explains the failure), and on a file that loads it is harmless.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a file)")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # unpickling arbitrary bytes can raise almost anything
            raise _load_failure(path, error) from None


def _load_failure(path: Path, error: Exception) -> CheckpointError:
    """The error for a file ``torch.load`` failed on: pickled code refused, or bytes that are not a checkpoint."""
    refused = refused_object(str(error)) if isinstance(error, pickle.UnpicklingError) else None
    if refused is not None:
        return CheckpointError(
            f"checkpoint {path} was refused by safe loading (weights_only=True): it asks to call or build "
            f"{refused}, which is neither a tensor nor a container, so loading it could run arbitrary code; "
            f"nothing in it was executed. If you trust the file, load it yourself and re-save only its "
            f"state_dict (torch.save(model.state_dict(), ...)); otherwise get the checkpoint from a trusted source"
        )
    return CheckpointError(
        f"checkpoint {path} could not be read ({_underlying_message(error)}): {describe_unreadable(path)}. "
        f"Re-download or re-copy it, or point to the right file"
    )


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


def load_state_dict_strict(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, arch: str | None = None
) -> None:
    """Load every key, strictly; on mismatch say which keys and shapes differ and what to change.

    ``arch`` is the model's name as a recipe spells it (``resnet8x4``); without it the
    message falls back to the class name.
    """
    state = dict(state)
    _fill_missing_batch_counters(model, state)
    mismatch = describe_mismatch(model, state)
    if mismatch:
        name = arch or type(model).__name__
        raise CheckpointError(
            f"{source} does not fit {name}: {mismatch}. It was saved from another architecture, or for "
            f"another number of classes: set the arch to the architecture the checkpoint was trained as, "
            f"or use a checkpoint of {name} trained on this dataset"
        )
    model.load_state_dict(state, strict=True)


def load_weights(model: nn.Module, path: str | Path, arch: str | None = None) -> None:
    """Read a checkpoint file (any accepted format) strictly into ``model`` (named ``arch`` in errors)."""
    state = extract_state_dict(read_checkpoint(path), source=f"checkpoint {path}")
    load_state_dict_strict(model, state, source=f"checkpoint {path}", arch=arch)
