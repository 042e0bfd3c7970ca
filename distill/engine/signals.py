"""Graceful stop on SIGTERM / SIGINT: finish the step, checkpoint, exit with :data:`EXIT_STOPPED`.

Cluster schedulers send SIGTERM some time before they kill a preempted job;
Ctrl-C sends SIGINT. The first such signal only sets a flag that the trainer
reads between steps: it finishes the step in progress, writes a checkpoint at
that exact position and raises :class:`TrainingStopped`, which the CLI turns
into exit status :data:`EXIT_STOPPED`. A second signal exits at once.

Under torchrun every process receives the signal (torchrun forwards it to each
worker), so the messages are printed by local rank 0 only, and the resume hint
names the launcher (:func:`stopped_message`, :func:`resume_command`).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterable
from types import FrameType, TracebackType

from distill.engine.launch import is_main_local_process, resume_command, stopped_exit_note
from distill.errors import DistillError

__all__ = [
    "EXIT_STOPPED",
    "STOP_SIGNALS",
    "StopSignals",
    "TrainingStopped",
    "is_main_local_process",
    "resume_command",
    "stopped_message",
]

EXIT_STOPPED = 75
"""Exit status of a run stopped by a signal after writing its checkpoint (EX_TEMPFAIL: resume it later)."""

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingStopped(DistillError):
    """The run stopped on request (a signal) after checkpointing; ``distill train --resume`` continues it.

    ``signal_name`` is the signal that asked for the stop (``"SIGTERM"``, ``"SIGUSR2"``), ``None``
    when it is not known: a cluster job tells a scheduler's warning (checkpoint, then requeue)
    from a cancellation (checkpoint, then end) by it.
    """

    def __init__(self, message: str, signal_name: str | None = None) -> None:
        super().__init__(message)
        self.signal_name = signal_name


def stopped_message(cause: str, where: str, checkpoint: object, run_dir: object) -> str:
    """The message of :class:`TrainingStopped`: what stopped the run, where, its checkpoint, how to continue.

    ``cause`` is e.g. ``"SIGINT"``; the command to continue is :func:`resume_command`
    (with torchrun or accelerate launch when the run was started by one), followed
    under a launcher by the note that the launcher's exit status is 1, not 75.
    """
    message = f"stopped by {cause} {where}; checkpoint {checkpoint}. Continue with: {resume_command(str(run_dir))}"
    note = stopped_exit_note()
    return f"{message}. {note}" if note else message


class StopSignals:
    """While active, SIGTERM and SIGINT (or the given ``signals``) request a stop instead of killing the process.

    ``requested`` is the name of the first signal received (``None`` before). A
    second signal ends the process immediately with status 128 + signal number,
    as an unhandled signal would. Handlers can only be installed from the main
    thread; elsewhere (a run started from a worker thread) this does nothing.
    Only the local main process prints (see :func:`is_main_local_process`).
    """

    def __init__(self, signals: Iterable[int] = STOP_SIGNALS) -> None:
        self.signals = tuple(signals)
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for number in self.signals:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        name = signal.Signals(number).name
        speaks = is_main_local_process()
        if self.requested is not None:
            if speaks:
                print(f"distill: second signal ({name}): exiting now, without a checkpoint", file=sys.stderr, flush=True)
            os._exit(128 + number)
        self.requested = name
        if speaks:
            print(
                f"distill: {name} received: finishing the current step, then writing a checkpoint "
                f"(send it again to exit at once)",
                file=sys.stderr,
                flush=True,
            )
