"""File checksums: a teacher checkpoint is identified by its content, not its path."""

from __future__ import annotations

import hashlib
from pathlib import Path

_HASH_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    """The file's sha256 as 64 lowercase hex characters, read in chunks (checkpoints reach 100 MB)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as file:
        for chunk in iter(lambda: file.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
