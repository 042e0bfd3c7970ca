"""Run checkpoints: atomic writes, and a layout that doubles as a reference checkpoint.

The student's weights sit under ``model`` with the zoo's (= the reference's) key
names, so a distilled student loads anywhere a RepDistiller teacher file does:
``create_model(arch, checkpoint=".../best.pt")`` or as another run's teacher.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from distill.errors import CheckpointError
from distill.models.checkpoint import read_checkpoint

CHECKPOINT_FORMAT = "distill-checkpoint/1"


def atomic_save(obj: Any, path: Path) -> None:
    """Write to a temporary file beside ``path``, flush it to disk, then rename over ``path``.

    A crash mid-write leaves the previous file intact.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with temporary.open("wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def load_run_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by distill's trainer (safe loading, on CPU)."""
    checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a distill run checkpoint (no format {CHECKPOINT_FORMAT!r}); "
            f"for a bare or reference checkpoint, name the architecture with --arch"
        )
    return checkpoint
