"""Checkpoint files written off the training thread (recipe ``async_checkpoint``).

Writing a CRD checkpoint (``torch.save`` of ~60 MB, ``fsync``, rename: see
:func:`~distill.engine.checkpoint.atomic_save`) takes long next to a GPU epoch of a
few seconds, and the accelerator idles meanwhile. :class:`CheckpointWriter` takes a
snapshot of the payload at once (every tensor copied to CPU, so training may go on
changing its own tensors) and writes the files in a background thread, one write at
a time. Its synchronous mode, the default, writes inline through the same
:meth:`CheckpointWriter.submit`, exactly as before.

A failed background write is never lost: its :class:`~distill.errors.CheckpointError`
(the message :func:`atomic_save` wrote, unchanged) is raised by the next
:meth:`~CheckpointWriter.submit` or :meth:`~CheckpointWriter.wait`.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from distill.engine.checkpoint import atomic_save


def snapshot(payload: Any, copies: dict[int, torch.Tensor] | None = None) -> Any:
    """A copy of ``payload`` that shares no tensor with training: each tensor copied to CPU now.

    Dicts (of any dict type: the scheduler's milestones are a ``Counter``), lists and
    tuples are rebuilt, recursively; any other leaf is kept: a checkpoint loads with
    ``weights_only=True``, so those are numbers, strings and ``None``, which do not
    change. CPU tensors are copied too: the optimiser and the memory banks change
    them in place after the snapshot is taken. A tensor met twice
    (``copies``, by identity) is copied once, so ``torch.save`` still stores it once.
    """
    copies = {} if copies is None else copies
    if isinstance(payload, torch.Tensor):
        if id(payload) not in copies:
            copies[id(payload)] = payload.detach().to("cpu", copy=True)
        return copies[id(payload)]
    if isinstance(payload, dict):  # a shallow copy keeps the type (Counter(pairs) would count the pairs)
        rebuilt = copy.copy(payload)
        for key, value in payload.items():
            rebuilt[key] = snapshot(value, copies)
        return rebuilt
    if isinstance(payload, list):
        return [snapshot(value, copies) for value in payload]
    if isinstance(payload, tuple):
        values = [snapshot(value, copies) for value in payload]
        return type(payload)(*values) if hasattr(payload, "_fields") else tuple(values)
    return payload


def write_files(payload: Any, paths: Sequence[Path]) -> None:
    """:func:`atomic_save` of ``payload`` to each path in turn (``last.pt``, then ``best.pt``)."""
    for path in paths:
        atomic_save(payload, path)


class CheckpointWriter:
    """Writes checkpoint payloads to files, inline or in one background thread, one write at a time.

    ``background``: ``False`` (the default) writes in :meth:`submit` itself; ``True``
    snapshots the payload in :meth:`submit` and writes it in a thread. ``written``:
    the label of the last write that completed (``None`` before any); ``in_flight``:
    the label of the write in progress (``None`` when there is none).

    The thread is not a daemon: the interpreter waits for it at exit, so a process that
    ends normally never leaves a write half done (``atomic_save`` leaves the previous
    file whole in any case).
    """

    def __init__(self, background: bool = False) -> None:
        self.background = background
        self.written: str | None = None
        self.in_flight: str | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, payload: Any, paths: Sequence[Path], label: str = "") -> None:
        """Write ``payload`` to every path in ``paths``; ``label`` names it in :attr:`written`.

        First waits for the previous write (raising its error, if it failed). In
        background mode the payload is snapshot (:func:`snapshot`) before this returns,
        so the caller may change its tensors at once.
        """
        self.wait()
        if not self.background:
            write_files(payload, paths)
            self.written = label
            return
        frozen, targets = snapshot(payload), tuple(Path(path) for path in paths)
        self.in_flight = label
        self._thread = threading.Thread(target=self._write, args=(frozen, targets, label), name="distill-checkpoint-writer")
        self._thread.start()

    def _write(self, payload: Any, paths: tuple[Path, ...], label: str) -> None:
        """The thread's work: write, then record success, or keep the error for :meth:`wait`."""
        try:
            write_files(payload, paths)
        except BaseException as error:  # handed to the training thread, which raises it
            self._error = error
        else:
            self.written = label

    def wait(self) -> None:
        """Block until the write in progress (if any) is on disk; raise its error if it failed.

        Raises:
            CheckpointError: the background write failed (the message ``atomic_save`` wrote).
        """
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        self.in_flight = None
        error, self._error = self._error, None
        if error is not None:
            raise error
