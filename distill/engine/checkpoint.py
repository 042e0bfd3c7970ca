"""Run checkpoints: atomic writes, and a layout that doubles as a reference checkpoint.

The student's weights sit under ``model`` with the zoo's (= the reference's) key
names, so a distilled student loads anywhere a RepDistiller teacher file does:
``create_model(arch, checkpoint=".../best.pt")`` or as another run's teacher.

Format 2 adds everything exact resume needs (see ``Trainer.checkpoint_payload``):
the position in the data order, the scheduler and grad-scaler states, and per
process the random generators, the loss modules' private generators and the
epoch's running loss sums. Format 1 files still evaluate, but cannot be resumed.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import torch

from distill.errors import CheckpointError
from distill.files.atomic import atomic_write
from distill.models.checkpoint import read_checkpoint

CHECKPOINT_FORMAT = "distill-checkpoint/2"
READABLE_FORMATS = ("distill-checkpoint/1", CHECKPOINT_FORMAT)
"""Run checkpoint formats ``distill eval`` reads; only :data:`CHECKPOINT_FORMAT` resumes."""


def is_run_checkpoint(checkpoint: Any) -> bool:
    """Whether a loaded object is a checkpoint written by distill's trainer (any readable format)."""
    return isinstance(checkpoint, dict) and checkpoint.get("format") in READABLE_FORMATS


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` through :func:`~distill.files.atomic.atomic_write`: a crash or a full disk leaves the previous file.

    Raises:
        CheckpointError: the file could not be written (full disk, no permission …);
            says that the previous file is intact.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda handle: torch.save(obj, handle))
    except (OSError, RuntimeError) as raised:
        error = _write_error(raised)
        kept = f"the previous {path.name} is intact" if path.exists() else f"no earlier {path.name} existed"
        hint = (
            "the disk is full: free space"
            if error.errno in (errno.ENOSPC, errno.EDQUOT)
            else "check that the run directory is writable"
        )
        raise CheckpointError(
            f"could not write checkpoint {path}: {error.strerror or error}; {kept}. "
            f"What to do: {hint}, then resume with 'distill train --resume {path.parent.parent}'."
        ) from error


def _write_error(raised: OSError | RuntimeError) -> OSError:
    """The operating system's error behind a failed write.

    ``torch.save`` reports a failed write of its zip writer as a ``RuntimeError``
    ("unexpected pos …") whose context holds the ``OSError`` (``No space left on
    device``); that is the error the user must see. A ``RuntimeError`` with no
    ``OSError`` behind it is not a write failure and goes on as it is.
    """
    cause: BaseException | None = raised
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        raise raised
    return cause


def load_run_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by distill's trainer (safe loading, on CPU)."""
    checkpoint = read_checkpoint(path)
    if not is_run_checkpoint(checkpoint):
        raise CheckpointError(
            f"{path} is not a distill run checkpoint (no format {CHECKPOINT_FORMAT!r}); "
            f"for a bare or reference checkpoint, name the architecture with --arch"
        )
    return checkpoint
