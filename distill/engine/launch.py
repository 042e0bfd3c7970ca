"""How this process was launched (directly, torchrun, accelerate launch), read from the environment.

The launchers leave their mark in environment variables: torchrun (and
``accelerate launch --multi_gpu``, which runs torchrun's elastic agent) sets
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE`` and
``TORCHELASTIC_RUN_ID``; every ``accelerate launch`` sets ``ACCELERATE_*``
variables. From these, :func:`resume_command` writes the command line that
continues a stopped run the way it was started, :func:`is_main_local_process`
says which process speaks for the machine, and :func:`check_process_count`
catches the one launch that silently runs fewer processes than asked.

Only the standard library is used: these are read before torch is imported.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from distill.errors import DistillError

WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
"""Where a process learns how many processes it runs with: torchrun, then the MPI flavours (as Accelerate reads them)."""


class LaunchError(DistillError):
    """The launcher started a different number of processes than it was asked for."""


@dataclass(frozen=True)
class Launch:
    """What launched this process: ``launcher`` is ``"torchrun"``, ``"accelerate"`` or ``"direct"``."""

    launcher: str
    world_size: int = 1
    local_world_size: int = 1
    mixed_precision: str = "no"

    @property
    def nodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    try:
        return int(environ.get(name, default))
    except ValueError:
        return default


def _by_accelerate(environ: Mapping[str, str]) -> bool:
    """Every ``accelerate launch`` path sets the mixed-precision mode for its processes."""
    return "ACCELERATE_MIXED_PRECISION" in environ


def _by_elastic_agent(environ: Mapping[str, str]) -> bool:
    """torchrun's elastic agent (also behind ``accelerate launch --multi_gpu``) names its run."""
    return "TORCHELASTIC_RUN_ID" in environ or "LOCAL_WORLD_SIZE" in environ


def detect_launch(environ: Mapping[str, str] | None = None) -> Launch:
    """The launcher of this process and the process counts it set (1 when it set none)."""
    environ = os.environ if environ is None else environ
    world = _int(environ, "WORLD_SIZE", 1)
    local = _int(environ, "LOCAL_WORLD_SIZE", world)
    if _by_accelerate(environ):
        return Launch("accelerate", world, local, environ.get("ACCELERATE_MIXED_PRECISION", "no"))
    if _by_elastic_agent(environ):
        return Launch("torchrun", world, local)
    return Launch("direct", world, local)


def is_main_local_process(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process speaks for its machine: local rank 0 (``LOCAL_RANK``, else ``RANK``), or no launcher.

    Messages a user must see once (a signal was received, how to resume) are
    printed by this process only; every process of a torchrun job receives the
    signal that torchrun forwards, and would otherwise print them N times.
    """
    environ = os.environ if environ is None else environ
    return _int(environ, "LOCAL_RANK", _int(environ, "RANK", 0)) == 0


def launcher_prefix(launch: Launch) -> list[str]:
    """The words before ``-m distill`` that start the same number of processes again."""
    if launch.launcher == "torchrun":
        words = ["torchrun", "--nproc_per_node", str(launch.local_world_size)]
        if launch.nodes > 1:
            words += ["--nnodes", str(launch.nodes), "<your rendezvous options>"]
        return words
    if launch.launcher == "accelerate":
        words = ["accelerate", "launch"]
        if launch.world_size > 1:
            words += ["--multi_gpu", "--num_processes", str(launch.world_size)]
        if launch.nodes > 1:
            words += ["--num_machines", str(launch.nodes), "<your machine options>"]
        if launch.mixed_precision not in ("", "no"):
            words += ["--mixed_precision", launch.mixed_precision]
        return words
    return ["python"]


def resume_command(run_dir: str | Path, environ: Mapping[str, str] | None = None) -> str:
    """The command line that continues the run in ``run_dir`` with the launcher that started this process.

    ``distill train --resume DIR`` for a direct run; under torchrun
    ``torchrun --nproc_per_node N -m distill train --resume DIR`` (a resume checks
    the number of processes, so the launcher is part of the answer); under
    ``accelerate launch``, its equivalent.
    """
    launch = detect_launch(environ)
    tail = ["train", "--resume", str(run_dir)]
    if launch.launcher == "direct":
        return shlex.join(["distill", *tail])
    prefix = " ".join(shlex.quote(w) if not w.startswith("<") else w for w in launcher_prefix(launch))
    return f"{prefix} -m distill {shlex.join(tail)}"


def stopped_exit_note(environ: Mapping[str, str] | None = None) -> str:
    """Under a launcher, a sentence saying that its exit status is not 75 and where the truth is; else ``""``.

    torchrun decides its exit status itself: 1 when it received the signal (its
    elastic agent raises ``SignalException``) and 1 when a worker exits non-zero
    (``ChildFailedError``), whatever the workers' statuses; ``accelerate launch``
    likewise exits 1 for any non-zero child. The run directory's ``outcome.json``
    records ``stopped`` either way.
    """
    launch = detect_launch(environ)
    if launch.launcher == "direct":
        return ""
    return (
        f"Each process exits with status 75, but {launch.launcher} itself exits with 1 for any stopped or failed "
        f"process; the run directory's outcome.json says 'stopped'."
    )


def check_process_count(environ: Mapping[str, str] | None = None) -> None:
    """Refuse the launch that asked for several processes and started one.

    ``accelerate launch --num_processes N --cpu`` (and ``--num_processes N``
    without ``--multi_gpu`` on a machine without several GPUs) takes Accelerate's
    *simple* launcher: it starts one process and leaves the others to ``mpirun``
    (``--mpirun_hostfile``). That one process learns no world size, so it would
    train alone while the user believes N processes share the work. The mark of
    that path: the simple launcher's ``ACCELERATE_USE_CPU`` and the ``MASTER_ADDR``
    it sets only when asked for more than one process, without any world size.

    Raises:
        LaunchError: with the commands that do start N processes on CPU.
    """
    environ = os.environ if environ is None else environ
    simple_launcher = _by_accelerate(environ) and "ACCELERATE_USE_CPU" in environ
    asked_for_several = "MASTER_ADDR" in environ
    knows_its_world = any(name in environ for name in WORLD_SIZE_VARIABLES)
    if simple_launcher and asked_for_several and not knows_its_world:
        raise LaunchError(
            "accelerate launch started ONE process although it was asked for several: with --cpu (or without "
            "--multi_gpu) it uses its simple launcher, which runs a single process and leaves the others to mpirun. "
            "To train with N processes on CPU, run 'accelerate launch --multi_gpu --num_processes N -m distill train ...' "
            "(no --cpu: distill picks the CPU and gloo itself when there is no GPU) or "
            "'torchrun --nproc_per_node N -m distill train ...'. If you meant one process, unset MASTER_ADDR."
        )
