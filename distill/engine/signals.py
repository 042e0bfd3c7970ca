"""Graceful stop on SIGTERM / SIGINT: finish the step, checkpoint, exit with :data:`EXIT_STOPPED`.

Cluster schedulers send SIGTERM some time before they kill a preempted job;
Ctrl-C sends SIGINT. The first such signal only sets a flag that the trainer
reads between steps: it finishes the step in progress, writes a checkpoint at
that exact position and raises :class:`TrainingStopped`, which the CLI turns
into exit status :data:`EXIT_STOPPED`. A second signal exits at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType, TracebackType

from distill.errors import DistillError

EXIT_STOPPED = 75
"""Exit status of a run stopped by a signal after writing its checkpoint (EX_TEMPFAIL: resume it later)."""

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingStopped(DistillError):
    """The run stopped on request (a signal) after checkpointing; ``distill train --resume`` continues it."""


class StopSignals:
    """While active, SIGTERM and SIGINT request a stop instead of killing the process.

    ``requested`` is the name of the first signal received (``None`` before). A
    second signal ends the process immediately with status 128 + signal number,
    as an unhandled signal would. Handlers can only be installed from the main
    thread; elsewhere (a run started from a worker thread) this does nothing.
    """

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, number: int, frame: FrameType | None) -> None:
        name = signal.Signals(number).name
        if self.requested is not None:
            print(f"distill: second signal ({name}): exiting now, without a checkpoint", file=sys.stderr, flush=True)
            os._exit(128 + number)
        self.requested = name
        print(
            f"distill: {name} received: finishing the current step, then writing a checkpoint "
            f"(send it again to exit at once)",
            file=sys.stderr,
            flush=True,
        )
