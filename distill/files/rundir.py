"""Run directories: one per run, never overwritten, and the names of what a run writes there.

Reports, sweeps and the teacher manifest read run directories; they take the file
names (and what makes a run finished) from here, where the trainer takes them too.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.errors import DistillError

RECIPE_FILE = "recipe.yaml"
RUN_INFO_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
STEPS_FILE = "steps.jsonl"
"""The per-step rows (running loss terms, lr, images/s every ``log_every`` steps), apart from
``metrics.jsonl`` so that its readers see the per-epoch record they always saw."""
TRACKERS_FILE = "trackers.json"
"""The ids of the run in remote trackers (W&B, MLflow, Aim, Comet), so that a resume continues them."""
SUMMARY_FILE = "summary.json"
"""Written once, when the last epoch is done: its presence is what "finished" means."""
LOG_FILE = "log.txt"
LOCK_FILE = "run.lock"
"""Held (an exclusive ``flock``) by the one process that trains the run: see :class:`RunDirLock`."""
OUTCOME_FILE = "outcome.json"
"""How the run's last process ended (or that it is running): see :func:`write_outcome`."""
TENSORBOARD_DIR = "tensorboard"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = Path(CHECKPOINT_DIR) / "last.pt"
BEST_CHECKPOINT = Path(CHECKPOINT_DIR) / "best.pt"
RUN_ENTRIES = frozenset(
    {RECIPE_FILE, RUN_INFO_FILE, METRICS_FILE, STEPS_FILE, TRACKERS_FILE, SUMMARY_FILE, LOG_FILE, OUTCOME_FILE, LOCK_FILE,
     TENSORBOARD_DIR, CHECKPOINT_DIR}
)
"""Everything a run writes at the top of its directory."""


OUTCOME_STATUSES = ("running", "finished", "stopped", "nonfinite", "failed")
"""``running``: a process is training it (or was killed without a word: SIGKILL, power loss);
``finished``: trained to its last epoch; ``stopped``: by a signal, after a checkpoint (resumable);
``nonfinite``: a non-finite loss or gradient ended it; ``failed``: any other error ended it."""


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended, as recorded in its ``outcome.json``."""

    status: str
    message: str = ""
    time: str = ""

    @property
    def ended_badly(self) -> bool:
        """A run that an error ended (not one that is running, finished or stopped on request)."""
        return self.status in ("nonfinite", "failed")


def write_outcome(run_dir: str | Path, status: str, message: str = "") -> None:
    """Record how the run ended (``status`` one of :data:`OUTCOME_STATUSES`).

    A plain write: a file cut short by a crash reads as no outcome (:func:`read_outcome`),
    which is what a crash is, and leaves no temporary beside the run's own files.
    """
    if status not in OUTCOME_STATUSES:
        raise ValueError(f"unknown run outcome {status!r}; expected one of {', '.join(OUTCOME_STATUSES)}")
    record = {"status": status, "message": message, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (Path(run_dir) / OUTCOME_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def read_outcome(run_dir: str | Path) -> RunOutcome | None:
    """The run's recorded outcome; ``None`` when it has none (a run from before outcomes were recorded)."""
    path = Path(run_dir) / OUTCOME_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("status") not in OUTCOME_STATUSES:
        return None
    return RunOutcome(str(record["status"]), str(record.get("message", "")), str(record.get("time", "")))


def is_finished(run_dir: str | Path) -> bool:
    """Whether the run in ``run_dir`` trained to its last epoch (it wrote its summary)."""
    return (Path(run_dir) / SUMMARY_FILE).is_file()


def slug(name: str) -> str:
    """A recipe name made safe for a directory name: ``cifar100/kd/a-b`` → ``cifar100-kd-a-b``."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-") or "run"


def new_run_dir(output_dir: str | Path, recipe_name: str, now: float | None = None) -> Path:
    """``OUTPUT/<recipe>-<YYYYmmdd-HHMMSS>``: the name a new run would get (claim it with :func:`claim_new_run_dir`)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return Path(output_dir) / f"{slug(recipe_name)}-{stamp}"


def claim_new_run_dir(base: Path) -> Path:
    """Create ``base``, or ``base-1``, ``base-2`` … whichever is free, atomically.

    Two runs of one recipe started in the same second get the same time-stamped
    name; ``mkdir`` without ``exist_ok`` lets exactly one of them have each name,
    so neither ever writes into the other's directory.
    """
    base.parent.mkdir(parents=True, exist_ok=True)
    candidate, counter = base, 1
    while True:
        try:
            candidate.mkdir()
        except FileExistsError:
            candidate = base.with_name(f"{base.name}-{counter}")
            counter += 1
            continue
        (candidate / CHECKPOINT_DIR).mkdir()
        return candidate


def claim_run_dir(path: Path) -> Path:
    """Create ``path`` for a new run; refuse one that already holds files."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise DistillError(
            f"run directory {path} already exists and is not empty; choose another --run-dir "
            f"or leave it out to get a fresh, time-stamped one"
        )
    path.mkdir(parents=True, exist_ok=True)
    (path / CHECKPOINT_DIR).mkdir(exist_ok=True)
    return path


class RunDirBusyError(DistillError):
    """Another process is training the run directory (it holds the run's lock)."""


def holder_text(pid: int, host: str) -> str:
    """How a run's lock file names the process that trains it: ``pid N on host H``."""
    return f"pid {pid} on host {host}"


def read_lock_holder(run_dir: str | Path) -> tuple[int, str] | None:
    """The (pid, host) the run's lock file names (the last process that trained it), ``None`` if it names none."""
    try:
        words = (Path(run_dir) / LOCK_FILE).read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return None
    if len(words) != 5 or words[0] != "pid" or words[2:4] != ["on", "host"] or not words[1].isdigit():
        return None
    return int(words[1]), words[4]


class RunDirLock:
    """An exclusive lock on a run directory, held for as long as a process trains it.

    Two processes training one directory (two ``--resume`` of the same run, a sweep
    and a hand-started run) would interleave metrics rows, TensorBoard files and
    checkpoints. The lock is a ``flock`` on ``run.lock``: the kernel releases it
    when the holder exits, however it exits (SIGKILL included), so a crashed run
    never leaves a stale lock. The holder writes its PID and host into the file,
    which a refused process quotes.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._descriptor: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`RunDirBusyError` naming the holder."""
        import fcntl

        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(descriptor, 512).decode("utf-8", "replace").strip() or "an unknown process"
            os.close(descriptor)
            raise RunDirBusyError(
                f"run directory {self.path.parent} is being trained by another process ({holder}); "
                f"wait for it to end or stop it (SIGTERM checkpoints it), then resume"
            ) from None
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{holder_text(os.getpid(), socket.gethostname())}\n".encode())
        self._descriptor = descriptor

    def release(self) -> None:
        """Let go of the lock (closing the file releases the ``flock``); the file itself stays."""
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None


class MetricsFileError(DistillError):
    """A run's ``metrics.jsonl`` (or ``steps.jsonl``) cannot be read or holds a line that is not a JSON object."""


def read_metrics(run_dir: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The records of a run's ``metrics.jsonl``, in order (none if the file does not exist yet).

    ``limit``: read only the first ``limit`` records; what follows is not parsed (a
    resumed run drops it, possibly with a line a crash cut short).

    Raises :class:`MetricsFileError` naming the file and line when it is damaged.
    """
    return read_jsonl(Path(run_dir) / METRICS_FILE, limit)


def read_steps(run_dir: Path) -> list[dict[str, Any]]:
    """The per-step rows of a run's ``steps.jsonl`` (:data:`STEPS_FILE`), in order; none if it has none.

    Raises :class:`MetricsFileError` naming the file and line when it is damaged.
    """
    return read_jsonl(Path(run_dir) / STEPS_FILE)


def read_jsonl(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, one per non-blank line (none if the file does not exist).

    ``limit``: read only the first ``limit`` objects; what follows is not parsed.
    """
    if not path.is_file():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise MetricsFileError(f"{path}: cannot be read: {error}") from None
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if limit is not None and len(rows) == limit:
            break
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise MetricsFileError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise MetricsFileError(f"{path}:{number}: expected a JSON object")
        rows.append(row)
    return rows
