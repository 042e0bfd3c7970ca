"""Which code a run ran: the git commit of the project a package comes from, and whether its tree was dirty.

``run.json`` records it so that a grid of runs can be tied to the code that produced
each cell. Reading it never fails a run: where it cannot be known (not a git checkout,
git missing or stuck) the fields are ``None`` and ``git_reason`` says why.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

GIT_TIMEOUT_S = 5.0
"""How long one git command may take before the commit is recorded as unknown (a hung network filesystem)."""


class _GitUnknown(Exception):
    """Why the commit cannot be read; its message becomes ``git_reason``."""


def _git(folder: Path, *arguments: str, timeout: float) -> str:
    """The stdout of ``git ARGUMENTS`` run in ``folder``; :class:`_GitUnknown` with a reason otherwise.

    ``GIT_OPTIONAL_LOCKS=0``: ``git status`` would otherwise refresh the index under
    ``index.lock``, and many runs of a grid starting at once from one checkout would
    trip over each other's lock (and over a developer's ``git commit``).
    """
    environment = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}
    try:
        done = subprocess.run(
            ["git", *arguments], cwd=folder, env=environment, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        raise _GitUnknown("git is not installed (no 'git' on PATH)") from None
    except subprocess.TimeoutExpired:
        raise _GitUnknown(f"'git {' '.join(arguments)}' did not answer within {timeout:g} s") from None
    except OSError as error:
        raise _GitUnknown(f"git could not be run in {folder}: {error}") from None
    if done.returncode != 0:
        message = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[0]
        raise _GitUnknown(f"'git {' '.join(arguments)}' in {folder} failed: {message}")
    return done.stdout


def git_provenance(folder: str | Path, timeout: float = GIT_TIMEOUT_S) -> dict[str, Any]:
    """``{"git_commit": SHA, "git_dirty": bool}`` of the git checkout holding ``folder``.

    ``git_dirty``: whether ``git status --porcelain`` lists anything (changed, staged or
    untracked files, anywhere in the checkout): the commit alone does not say which code ran.
    A ``folder`` that git does not track (a package installed into a virtualenv that
    happens to live inside some other checkout) does not take that checkout's commit.
    Otherwise, and when git is missing or slow, both are ``None`` and ``git_reason`` says why.
    """
    folder = Path(folder)
    try:
        if not folder.is_dir():
            raise _GitUnknown(f"{folder} is not a folder")
        commit = _git(folder, "rev-parse", "--verify", "HEAD", timeout=timeout).strip()
        if not _git(folder, "ls-files", "--", ".", timeout=timeout).strip():
            raise _GitUnknown(f"{folder} is not tracked by the git checkout around it (an installed copy?)")
        dirty = bool(_git(folder, "status", "--porcelain", timeout=timeout).strip())
    except _GitUnknown as unknown:
        return {"git_commit": None, "git_dirty": None, "git_reason": str(unknown)}
    return {"git_commit": commit, "git_dirty": dirty}
