"""Job records of a cluster sweep: which job a cell was submitted as, and what that job said of itself.

Each cell of a sweep submitted through a scheduler has a folder
``<output>/jobs/<method>/<task>/seed<N>/`` with two small JSON files, written atomically:

- ``submitted.json``, by the submitting command: the job id the scheduler gave, the
  executor (``slurm`` or ``local``), when, and where the job's output goes;
- ``job.json``, by the job itself (global rank 0): ``running`` when it starts (with its
  host and attempt number), then ``finished``, ``failed`` (with the error's last line),
  ``stopped`` (a signal ended it after a checkpoint) or ``requeued`` (the scheduler's
  warning: checkpointed and put back in the queue).

Two files, because the submitter learns the job id only after the scheduler has it, and
the job may already be running by then: neither ever overwrites the other's record.
``job.json`` speaks for the submission whose job id it carries; a ``submitted.json`` with
another job id is a newer submission that has not started yet. Records are only read as
JSON (never unpickled), so a records folder is as safe to read as a run directory.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from distill.files.atomic import atomic_write_text

JOBS_DIR = "jobs"
"""The folder under a sweep's output that holds the job records and submitit's files."""
SUBMITTED_FILE = "submitted.json"
JOB_FILE = "job.json"

RUNNING, FINISHED, FAILED, STOPPED, REQUEUED = "running", "finished", "failed", "stopped", "requeued"
JOB_STATES = (RUNNING, FINISHED, FAILED, STOPPED, REQUEUED)


@dataclass(frozen=True)
class Submission:
    """What the submitting command recorded: the scheduler's job id, the submitting host, where the job's output goes."""

    job_id: str
    executor: str
    submitted: str
    host: str = ""
    stdout: str = ""
    stderr: str = ""


@dataclass(frozen=True)
class JobReport:
    """What the job recorded of itself (``state`` is one of :data:`JOB_STATES`)."""

    job_id: str
    state: str
    host: str
    time: str
    attempt: int = 1
    message: str = ""


def records_dir(output: Path, method: str, task: str, seed: int) -> Path:
    """``<output>/jobs/<method>/<task>/seed<seed>``: the records of one cell."""
    return Path(output) / JOBS_DIR / method / task / f"seed{seed}"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def write_submission(folder: Path, submission: Submission) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / SUBMITTED_FILE, json.dumps(asdict(submission), indent=1) + "\n")


def write_job_report(folder: Path, job_id: str, state: str, message: str = "") -> JobReport:
    """Record this job's ``state``; the attempt number counts the ``running`` records of the same job id."""
    if state not in JOB_STATES:
        raise ValueError(f"job state {state!r} is not one of {JOB_STATES}")
    previous = read_job_report(folder)
    attempt = previous.attempt if previous is not None and previous.job_id == job_id else 0
    if state == RUNNING:
        attempt += 1
    report = JobReport(job_id, state, socket.gethostname(), now(), max(attempt, 1), message)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / JOB_FILE, json.dumps(asdict(report), indent=1) + "\n")
    return report


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def read_submission(folder: Path) -> Submission | None:
    """The cell's last submission, ``None`` when it has none or the file is unreadable."""
    record = _read_json(folder / SUBMITTED_FILE)
    if record is None or not isinstance(record.get("job_id"), str):
        return None
    return Submission(
        job_id=record["job_id"],
        executor=str(record.get("executor", "")),
        submitted=str(record.get("submitted", "")),
        host=str(record.get("host", "")),
        stdout=str(record.get("stdout", "")),
        stderr=str(record.get("stderr", "")),
    )


def read_job_report(folder: Path) -> JobReport | None:
    """What the cell's last job said of itself, ``None`` when it said nothing yet (or the file is unreadable)."""
    record = _read_json(folder / JOB_FILE)
    if record is None or not isinstance(record.get("job_id"), str) or record.get("state") not in JOB_STATES:
        return None
    attempt = record.get("attempt", 1)
    return JobReport(
        job_id=record["job_id"],
        state=record["state"],
        host=str(record.get("host", "")),
        time=str(record.get("time", "")),
        attempt=attempt if isinstance(attempt, int) and attempt > 0 else 1,
        message=str(record.get("message", "")),
    )
