"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one.

Checkpoints, ``summary.json`` (the marker sweeps trust as "finished"), the teacher
manifest and the verification record are all written this way.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

TEMPORARY_MARK = ".tmp-"
"""Temporaries are named ``.<name>.tmp-<pid>-<random>`` beside their file (see :func:`temporary_beside`)."""


def temporary_beside(path: Path) -> Path:
    """A fresh temporary name in ``path``'s folder: hidden, with the writer's PID, unique per call."""
    return path.with_name(f".{path.name}{TEMPORARY_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(handle)`` on a temporary file beside ``path``, sync it to disk, then rename it over ``path``.

    The file keeps the permissions of the one it replaces (a new file gets the
    process's default ones). The folder is synced after the rename, so the new name
    survives a power cut too. On any error the temporary is removed, ``path`` is left
    as it was, and the error propagates.
    """
    path = Path(path)
    temporary = temporary_beside(path)
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            os.chmod(temporary, path.stat().st_mode & 0o777)
        os.replace(temporary, path)
        sync_directory(path.parent)
    finally:
        if temporary.exists():
            temporary.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write` of ``text`` in UTF-8, line endings as given."""
    encoded = text.encode("utf-8")
    atomic_write(path, lambda handle: handle.write(encoded))


def sync_directory(directory: Path) -> None:
    """fsync a directory so that a rename inside it is durable (a no-op where unsupported)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
