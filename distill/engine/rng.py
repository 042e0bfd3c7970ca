"""The global random generators of one process, captured and restored for exact resume.

Python's ``random``, NumPy's legacy global generator, torch's CPU generator and
the generator of every visible CUDA device. The captured state holds only
tensors, ints, strings and tuples, so it travels inside a checkpoint that is read
back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture_rng_state() -> dict[str, Any]:
    """The state of every global generator of this process."""
    kind, keys, position, has_gauss, cached_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gauss": float(cached_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put every global generator back to ``state`` (from :func:`capture_rng_state`)."""
    random.setstate(_as_python_state(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gauss"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        devices = torch.cuda.device_count()
        if len(state["cuda"]) == devices:
            torch.cuda.set_rng_state_all(state["cuda"])
        else:  # another machine layout: restore what matches (this process uses one device)
            for index, device_state in enumerate(state["cuda"][:devices]):
                torch.cuda.set_rng_state(device_state, index)


def _as_python_state(value: Any) -> tuple:
    """``random.setstate`` wants tuples all the way down; a checkpoint may hand back lists."""
    version, internal, gauss = value
    return (version, tuple(internal), gauss)
