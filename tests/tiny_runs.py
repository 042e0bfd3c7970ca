"""One-epoch runs of a shipped recipe on the fake CIFAR-100 with the tiny teacher, in this process or under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def tiny_pair_overrides(data_root: Path, teacher: Path) -> list[str]:
    """A shipped task recipe on resnet14 (``teacher``, random weights) → resnet8, one epoch, no workers."""
    return [
        f"data.root={data_root}", "data.verify=false", "data.download=false", "data.num_workers=0",
        "schedule.epochs=1", "log_every=2", "student.arch=resnet8", "teacher.name=null", "teacher.arch=resnet14",
        f"teacher.checkpoint={teacher}",
    ]  # fmt: skip


def run_distill(*args: str, processes: int = 1, port: int = 0, fault: str = "") -> subprocess.CompletedProcess:
    """``python -m distill ARGS`` as a real process; with ``processes > 1`` under torchrun (gloo) on ``port``.

    ``fault`` sets ``DISTILL_FAULT`` for tests/fault_plugin.py; one torch thread per process.
    """
    launcher = [sys.executable, "-m", "distill"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                    "--master_port", str(port), "-m", "distill"]  # fmt: skip
    env = {**os.environ, "DISTILL_FAULT": fault, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*launcher, *args], capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
