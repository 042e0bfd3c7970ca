"""Run directories: one per run, never overwritten."""

from __future__ import annotations

import time
from pathlib import Path

from distill.errors import DistillError


def slug(name: str) -> str:
    """A recipe name made safe for a directory name: ``cifar100/kd/a-b`` → ``cifar100-kd-a-b``."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-") or "run"


def new_run_dir(output_dir: str | Path, recipe_name: str, now: float | None = None) -> Path:
    """``OUTPUT/<recipe>-<YYYYmmdd-HHMMSS>``, with a numeric suffix if that already exists."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    base = Path(output_dir) / f"{slug(recipe_name)}-{stamp}"
    candidate, counter = base, 1
    while candidate.exists():
        candidate = base.with_name(f"{base.name}-{counter}")
        counter += 1
    return candidate


def claim_run_dir(path: Path) -> Path:
    """Create ``path`` for a new run; refuse one that already holds files."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise DistillError(
            f"run directory {path} already exists and is not empty; choose another --run-dir "
            f"or leave it out to get a fresh, time-stamped one"
        )
    path.mkdir(parents=True, exist_ok=True)
    (path / "checkpoints").mkdir(exist_ok=True)
    return path
