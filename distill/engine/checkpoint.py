"""Run checkpoints: atomic writes, and a layout that doubles as a reference checkpoint.

The student's weights sit under ``model`` with the zoo's (= the reference's) key
names, so a distilled student loads anywhere a RepDistiller teacher file does:
``create_model(arch, checkpoint=".../best.pt")`` or as another run's teacher.

A checkpoint is written by :func:`checkpoint_payload` and read back by
:func:`restore_checkpoint`, both here, next to the format:

* format 3 (written now): everything exact resume needs — the position in the data
  order and the best/last accuracies as one ``state`` record (:class:`TrainState`),
  the optimiser, scheduler and grad-scaler states, and per process the random
  generators, the loss modules' private generators and the epoch's running loss
  sums; ``epoch`` stays at the top level, where reference checkpoints keep it;
* format 2: the same, with the ``state`` counters as top-level keys; still resumes;
* format 1: evaluates, but cannot be resumed.
"""

from __future__ import annotations

import errno
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from distill.engine.build import BuiltRun
from distill.engine.resume import ResumeError
from distill.engine.rng import capture_rng_state
from distill.engine.state import TrainState
from distill.errors import CheckpointError
from distill.files.atomic import atomic_write
from distill.models.checkpoint import read_checkpoint
from distill.recipe.schema import Recipe
from distill.recipe.serialize import recipe_to_dict

CHECKPOINT_FORMAT = "distill-checkpoint/3"
RESUMABLE_FORMATS = ("distill-checkpoint/2", CHECKPOINT_FORMAT)
"""Formats a run resumes from (format 2 keeps the :class:`TrainState` counters at the top level)."""
READABLE_FORMATS = ("distill-checkpoint/1", *RESUMABLE_FORMATS)
"""Run checkpoint formats ``distill eval`` reads."""


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


def process_state(built: BuiltRun, epoch_sums: tuple[torch.Tensor, torch.Tensor] | None) -> dict[str, Any]:
    """What differs per process and decides its future: random generators, the losses' own state, the epoch's loss sums.

    ``epoch_sums``: the running sums of the epoch in progress (``None`` at an epoch boundary).
    """
    return {
        "rng": capture_rng_state(),
        "losses": {name: loss.process_state() for name, loss in built.unwrapped.losses.items()},
        "epoch_sums": tuple(t.detach().cpu() for t in epoch_sums) if epoch_sums is not None else None,
    }


def checkpoint_payload(
    built: BuiltRun,
    state: TrainState,
    *,
    recipe: Recipe,
    teacher_sha256: str | None,
    skipped_steps: int,
    metrics_rows: int,
    train_seconds: float,
    processes: list[dict[str, Any]],
) -> dict[str, Any]:
    """Everything that decides the rest of the run; ``processes``: each process's :func:`process_state`.

    ``train_seconds``: the time spent in the epochs so far, summed over the run's resumes
    (what ``summary.json`` reports as ``seconds`` when the run finishes).
    """
    distiller = built.unwrapped
    scaler = built.accelerator.scaler
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": state.epoch,
        "arch": recipe.student.arch,
        "num_classes": built.num_classes,
        "model": distiller.student.state_dict(),
        "losses": distiller.losses.state_dict(),
        "optimizer": built.optimizer.state_dict(),
        "scheduler": built.scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "state": asdict(state),
        "skipped_steps": skipped_steps,
        "metrics_rows": metrics_rows,
        "train_seconds": train_seconds,
        "teacher_sha256": teacher_sha256,
        "recipe": recipe_to_dict(recipe),
        "processes": processes,
    }


def check_resumable(checkpoint: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint whose format holds no resume state (format 1)."""
    if checkpoint.get("format") not in RESUMABLE_FORMATS:
        raise ResumeError(
            f"{path} was written by an older distill (format {checkpoint.get('format')!r}) "
            f"and holds no resume state; start a new run (another --run-dir)"
        )


def read_train_state(checkpoint: dict[str, Any]) -> TrainState:
    """The checkpoint's :class:`TrainState`: its ``state`` record (format 3) or the same keys at the top (format 2)."""
    record = checkpoint["state"] if checkpoint.get("format") == CHECKPOINT_FORMAT else checkpoint
    return TrainState(**{field.name: record[field.name] for field in fields(TrainState)})


@dataclass
class Restored:
    """What a checkpoint hands back besides the modules' state: the counters and this process's streams.

    ``rng`` and ``epoch_sums`` are ``None`` when the checkpoint was written by another
    number of processes (a forced resume): the epoch in progress then restarts
    (``state.batch`` is 0) and the random streams continue from the current seed.
    """

    state: TrainState
    skipped_steps: int
    metrics_rows: int
    train_seconds: float
    """The epochs' time before the checkpoint, over every earlier process (0 from a format-2 file: not recorded)."""
    rng: dict[str, Any] | None
    epoch_sums: tuple[torch.Tensor, torch.Tensor] | None


def restore_checkpoint(checkpoint: dict[str, Any], built: BuiltRun, path: Path, run_dir: Path) -> Restored:
    """Load a checkpoint's state into the freshly built run (on every process).

    Raises:
        ResumeError: the checkpoint does not fit the model, losses or optimiser the recipe builds.
    """
    distiller = built.unwrapped
    accelerator = built.accelerator
    try:
        distiller.student.load_state_dict(checkpoint["model"])
        distiller.losses.load_state_dict(checkpoint["losses"])
        built.optimizer.load_state_dict(checkpoint["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise ResumeError(
            f"{path} does not fit the model, losses or optimiser this recipe builds ({error}); "
            f"resume with the run's own recipe ('distill train --resume {run_dir}')"
        ) from None
    built.scheduler.load_state_dict(checkpoint["scheduler"])
    if accelerator.scaler is not None and checkpoint.get("scaler"):
        accelerator.scaler.load_state_dict(checkpoint["scaler"])
    state = read_train_state(checkpoint)
    restored = Restored(
        state, checkpoint.get("skipped_steps", 0), checkpoint["metrics_rows"], float(checkpoint.get("train_seconds", 0.0)), None, None
    )
    processes = checkpoint["processes"]
    if len(processes) != accelerator.num_processes:
        state.batch = 0
        return restored
    mine = processes[accelerator.process_index]
    restored.rng = mine["rng"]
    for name, loss in distiller.losses.items():
        loss.load_process_state(mine["losses"].get(name, {}))
    if mine["epoch_sums"] is not None:
        restored.epoch_sums = tuple(t.to(accelerator.device) for t in mine["epoch_sums"])  # type: ignore[assignment]
    return restored
