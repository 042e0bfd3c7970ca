"""Whether a recorded job still exists: asked of Slurm (``squeue``) or, for a local job, of this machine.

A job that was killed outright (node failure, out-of-memory kill, ``scancel --signal=KILL``)
records nothing on its way out; its ``job.json`` still says ``running``. These checks
tell such a job from a live one. The answer is ``None`` when it cannot be known here
(no ``squeue`` on this host, a local job of another machine): the record is then
trusted as it stands.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

SQUEUE_TIMEOUT_S = 30

GONE_MARKERS = ("invalid job id",)
"""squeue's error for a job it no longer knows (it forgets finished jobs after MinJobAge)."""


def slurm_job_alive(job_id: str) -> bool | None:
    """``True`` if Slurm still lists the job (pending, running, requeued …), ``False`` if not, ``None`` if unknown."""
    squeue = shutil.which("squeue")
    if squeue is None:
        return None
    try:
        done = subprocess.run(
            [squeue, "--noheader", "--jobs", job_id, "--format", "%T"],
            capture_output=True, text=True, timeout=SQUEUE_TIMEOUT_S, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return False if any(marker in done.stderr.lower() for marker in GONE_MARKERS) else None
    return bool(done.stdout.strip())


def local_job_alive(job_id: str, host: str) -> bool | None:
    """For submitit's local executor the job id is its controller's process id: alive if that process is."""
    if host and host != socket.gethostname():
        return None
    try:
        pid = int(job_id)
    except ValueError:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user holds the id now: not ours, so ours ended
        return False
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """A child that ended but was not reaped yet still answers ``kill(pid, 0)``; Linux says ``Z`` in its stat."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def job_alive(executor: str, job_id: str, host: str = "") -> bool | None:
    """Whether the job ``job_id`` of ``executor`` (``slurm`` or ``local``) still exists; ``None`` when unknown."""
    if executor == "slurm":
        return slurm_job_alive(job_id)
    if executor == "local":
        return local_job_alive(job_id, host)
    return None
