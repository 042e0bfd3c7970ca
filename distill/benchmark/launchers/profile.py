"""Cluster profiles for ``distill sweep --launcher slurm``: where each grid cell runs and how big its job is.

A profile is a small YAML file (``--cluster-profile my-cluster.yaml``; every key is
shown in ``recipes/cluster/example-slurm.yaml``) with command-line flags over it.
It is checked like a recipe (unknown keys with suggestions, types, ranges; errors
read ``FILE: key: message``) and turned here into the parameters of submitit's
``AutoExecutor``, so what reaches ``sbatch`` is decided in one place and can be
tested without a cluster.

One grid cell is one job on one node: ``gpus_per_cell`` GPUs and as many processes
(Slurm tasks), each with ``cpus_per_gpu`` cores. The cells go out as job arrays of
which at most ``max_running`` run at once.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import submitit

from distill.errors import DistillError
from distill.recipe.yaml_io import parse_yaml
from distill.schema import KeyPath, ValidationIssue, at_least, build_dataclass, checked, positive

Executor = Literal["slurm", "local"]
CLUSTER_EXECUTORS: tuple[str, ...] = get_args(Executor)

# sbatch options a profile key sets: an extra option may not set them a second time.
PROFILE_SETS = {
    "partition": "partition",
    "account": "account",
    "qos": "qos",
    "constraint": "constraint",
    "gpus-per-node": "gpus_per_cell",
    "gpus": "gpus_per_cell",
    "ntasks-per-node": "gpus_per_cell",
    "ntasks": "gpus_per_cell",
    "nodes": "gpus_per_cell",
    "cpus-per-task": "cpus_per_gpu",
    "mem": "mem_gb",
    "time": "time_limit_min",
    "signal": "signal_delay_s",
    "job-name": "job_name",
}
# sbatch options submitit writes for every job: overriding them breaks its bookkeeping.
SUBMITIT_SETS = ("array", "output", "error", "open-mode")

SLURM_OPTION_NAME = re.compile(r"[a-z][a-z0-9-]*\Z")


def one_line(value: str) -> str:
    """A non-empty line of printable text: these values end up in ``#SBATCH`` lines, where a line break would start a
    shell command."""
    if not value.strip():
        raise ValueError("must not be empty: remove the key to leave it unset")
    if not value.isprintable():
        raise ValueError(f"must be one line of printable text, got {value!r}")
    return value


def setup_lines(lines: list[str]) -> tuple[str, ...]:
    """The setup lines as a tuple, each one shell line (a line break inside one would hide a second command)."""
    for number, line in enumerate(lines, start=1):
        if "\n" in line or "\r" in line or "\0" in line:
            raise ValueError(f"line {number} holds a line break ({line!r}): give each shell line as its own list item")
    return tuple(lines)


def slurm_option_name(key: str) -> str:
    """The sbatch long option ``key`` names, as sbatch spells it (``mail_type`` → ``mail-type``).

    Raises:
        ValueError: not an option name, or one the profile's keys or submitit already set.
    """
    name = key.replace("_", "-")
    if not SLURM_OPTION_NAME.match(name):
        raise ValueError(
            f"{key!r} is not an sbatch option name: write sbatch's long option in lower case without its leading "
            "'--', e.g. exclude or mail-type"
        )
    if name in PROFILE_SETS:
        raise ValueError(f"{key!r}: sbatch's --{name} comes from the profile key {PROFILE_SETS[name]}: set that instead")
    if name in SUBMITIT_SETS:
        raise ValueError(f"{key!r}: submitit writes --{name} for every job (it finds its logs and array cells by it): remove it")
    return name


def slurm_option_value(key: str, value: str | int | float | bool) -> str:
    """The value as sbatch text; ``true`` (or an empty string) stands for an option without a value, like ``--exclusive``."""
    if value is True:
        return ""
    if value is False:
        raise ValueError(f"{key!r}: false is not an sbatch value: remove the option to leave it unset")
    if isinstance(value, (int, float)):
        return str(value)
    if value and not value.isprintable():
        raise ValueError(f"{key!r}: the value must be one line of printable text, got {value!r}")
    return value


def slurm_options_of(options: dict[str, str | int | float | bool]) -> dict[str, str]:
    """Extra sbatch options with their names as sbatch spells them and their values as text."""
    checked_options: dict[str, str] = {}
    for key, value in options.items():
        name = slurm_option_name(key)
        if name in checked_options:
            raise ValueError(f"{key!r}: the option --{name} is given twice (with '-' and with '_'): keep one")
        checked_options[name] = slurm_option_value(key, value)
    return checked_options


@dataclass(frozen=True)
class ClusterProfile:
    """Where the cells of a sweep run and what each cell's job asks for.

    Attributes:
        executor: ``slurm`` (sbatch job arrays) or ``local`` (submitit's LocalExecutor: real processes on this
            machine, to try a profile and a grid without a cluster; setup lines and Slurm keys do not apply there).
        partition, account, qos, constraint: sbatch's options of those names (None: the cluster's default).
        gpus_per_cell: GPUs of one cell = processes of one cell, all on one node (0: a CPU cell, one process).
        cpus_per_gpu: CPU cores per process (sbatch's cpus-per-task); with 0 GPUs, the cores of the one process.
        mem_gb: memory per job (node), None: the partition's default.
        time_limit_min: the time limit of one job; a run that needs longer is checkpointed and requeued before it.
        max_running: the job-array throttle: at most this many cells run at once (``--array=0-N%max_running``).
        signal_delay_s: Slurm warns the job this long before its time limit (``--signal=USR2@N``).
        max_requeues: time-limit requeues allowed per cell (preemptions do not count; submitit's max_num_timeout).
        job_name: the jobs' name in squeue.
        setup: shell lines run in the job before the cell starts (``module load ...``, ``source venv/bin/activate``).
        slurm_options: any other sbatch option, name without ``--`` → value (stored as text; ``""`` writes the
            option without a value), e.g. ``{"exclude": "node7", "mail-type": "END"}``.
    """

    executor: Executor = "slurm"
    partition: str | None = field(default=None, metadata=checked(one_line))
    account: str | None = field(default=None, metadata=checked(one_line))
    qos: str | None = field(default=None, metadata=checked(one_line))
    constraint: str | None = field(default=None, metadata=checked(one_line))
    gpus_per_cell: int = field(default=1, metadata=at_least(0))
    cpus_per_gpu: int = field(default=8, metadata=positive())
    mem_gb: float | None = field(default=None, metadata=positive())
    time_limit_min: int = field(default=240, metadata=positive())
    max_running: int = field(default=64, metadata=positive())
    signal_delay_s: int = field(default=120, metadata=positive())
    max_requeues: int = field(default=50, metadata=at_least(0))
    job_name: str = field(default="distill", metadata=checked(one_line))
    setup: tuple[str, ...] = field(default=(), metadata=checked(setup_lines))
    slurm_options: dict[str, str | int | float | bool] = field(default_factory=dict, metadata=checked(slurm_options_of))

    def __post_init__(self) -> None:
        object.__setattr__(self, "setup", tuple(self.setup))
        object.__setattr__(self, "slurm_options", dict(self.slurm_options))
        if self.signal_delay_s >= 60 * self.time_limit_min:
            raise ValidationIssue(
                ("time_limit_min",),
                f"{self.time_limit_min} min leaves no time before Slurm's warning, which comes signal_delay_s = "
                f"{self.signal_delay_s} s before the limit: give more minutes or a shorter signal_delay_s",
            )


def _validated(data: Any, where: Callable[[KeyPath], str]) -> ClusterProfile:
    """``data`` checked against :class:`ClusterProfile`; ``where(path)`` says where a bad value came from."""
    try:
        return build_dataclass(ClusterProfile, data, ())
    except ValidationIssue as issue:
        raise DistillError(f"{where(issue.path)}: {issue.message}") from None


def load_profile(path: str | Path) -> ClusterProfile:
    """The cluster profile in the YAML file ``path``, checked (an empty file is all defaults).

    The YAML is read safely (no tag can build an object or run code).

    Raises:
        DistillError: ``FILE: key: message`` for an unknown key (with the closest keys and all of them), a value of
            the wrong type or out of range, an unknown executor; or the file is missing, unreadable or not YAML.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DistillError(
            f"cluster profile {path} does not exist: give the path of a YAML file like recipes/cluster/example-slurm.yaml"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise DistillError(f"cluster profile {path} cannot be read: {error}") from None
    data = parse_yaml(text, str(path))
    return _validated({} if data is None else data, lambda key: f"{path}: {'.'.join(key) or '(top level)'}")


# The flag that sets a field, where it is not the field's name in dashes.
FLAG_OF_FIELD = {"time_limit_min": "--time-limit", "slurm_options": "--slurm-option"}


def flag_of(key: KeyPath) -> str:
    """The command-line flag that sets the field at ``key`` (``gpus_per_cell`` → ``--gpus-per-cell``)."""
    name = key[0] if key else ""
    return FLAG_OF_FIELD.get(name, "--" + name.replace("_", "-"))


def with_flags(profile: ClusterProfile, **flags: Any) -> ClusterProfile:
    """``profile`` with the command-line flags over it, checked the same way.

    ``flags`` are named like the fields; None means the flag was not given. ``slurm_options`` is merged key by key
    (a flag's value wins over the profile's for the same option).

    Raises:
        DistillError: ``command line: --flag: message``.
    """
    data = {f.name: getattr(profile, f.name) for f in dataclasses.fields(ClusterProfile)}
    for name, value in flags.items():
        if value is None:
            continue
        if name == "slurm_options":
            try:
                value = {**profile.slurm_options, **{slurm_option_name(k): v for k, v in value.items()}}
            except ValueError as error:
                raise DistillError(f"command line: --slurm-option: {error}") from None
        data[name] = value
    return _validated(data, lambda key: f"command line: {flag_of(key)}")


def parse_slurm_option(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` of ``--slurm-option`` as (name, value); ``KEY=`` writes the option without a value.

    Raises:
        DistillError: no ``=``, or a name that is not an sbatch option a profile may add.
    """
    key, equals, value = text.partition("=")
    if not equals:
        raise DistillError(
            f"--slurm-option {text!r}: expected KEY=VALUE, e.g. --slurm-option exclude=node7 "
            "(KEY= for an option without a value, e.g. exclusive=)"
        )
    try:
        return slurm_option_name(key.strip()), slurm_option_value(key, value)
    except ValueError as error:
        raise DistillError(f"--slurm-option {text!r}: {error}") from None


def executor_parameters(profile: ClusterProfile) -> dict[str, Any]:
    """The keyword arguments of ``submitit.AutoExecutor.update_parameters`` for this profile.

    Keys left at the cluster's default (no partition, no memory, no GPUs) are left out, so sbatch gets no line
    for them. For ``local`` only what submitit's LocalExecutor uses: its time limit, GPUs and processes.
    """
    processes = max(1, profile.gpus_per_cell)
    shared: dict[str, Any] = {"timeout_min": profile.time_limit_min, "nodes": 1, "tasks_per_node": processes}
    if profile.gpus_per_cell:
        shared["gpus_per_node"] = profile.gpus_per_cell
    if profile.executor == "local":
        return shared
    parameters = {
        **shared,
        "cpus_per_task": profile.cpus_per_gpu,
        "name": profile.job_name,
        "slurm_array_parallelism": profile.max_running,
        "slurm_signal_delay_s": profile.signal_delay_s,
    }
    unless_default = {
        "mem_gb": profile.mem_gb,
        "slurm_partition": profile.partition,
        "slurm_account": profile.account,
        "slurm_qos": profile.qos,
        "slurm_constraint": profile.constraint,
        "slurm_setup": list(profile.setup) or None,
        # submitit writes a value of True as a bare "#SBATCH --NAME"
        "slurm_additional_parameters": {k: v if v else True for k, v in profile.slurm_options.items()} or None,
    }
    parameters.update({k: v for k, v in unless_default.items() if v is not None})
    return parameters


SLURM_COMMANDS = ("sbatch", "srun")


def make_executor(profile: ClusterProfile, folder: Path) -> submitit.AutoExecutor:
    """A submitit executor for ``profile`` that keeps its jobs' files (pickles, logs, sbatch scripts) in ``folder``.

    The cluster is named explicitly (submitit would otherwise guess it from the machine).

    Raises:
        DistillError: ``slurm`` on a machine without Slurm's commands.
    """
    if profile.executor == "slurm":
        missing = [command for command in SLURM_COMMANDS if shutil.which(command) is None]
        if missing:
            raise DistillError(
                f"--launcher slurm needs Slurm's {' and '.join(missing)} on PATH (this machine has no "
                f"{', '.join(missing)}); run the sweep on the cluster's login node, or to try the grid on this machine "
                "use executor: local in the profile"
            )
    executor = submitit.AutoExecutor(
        folder=folder, cluster=profile.executor, **{f"{profile.executor}_max_num_timeout": profile.max_requeues}
    )
    executor.update_parameters(**executor_parameters(profile))
    if profile.executor == "local":
        # The LocalExecutor reads signal_delay_s, but submitit 1.5's AutoExecutor refuses "local_signal_delay_s".
        executor._executor.update_parameters(signal_delay_s=profile.signal_delay_s)
    return executor


def _count(number: int, word: str) -> str:
    return f"{number} {word}" + ("" if number == 1 else "es" if word.endswith("s") else "s")


def describe(profile: ClusterProfile) -> str:
    """One line for the sweep's output: where the cells run and what each asks for."""
    if profile.executor == "local":  # no CPU, memory or throttle limits there
        processes = _count(max(1, profile.gpus_per_cell), "process")
        gpus = _count(profile.gpus_per_cell, "GPU")
        return f"local processes on this machine (no Slurm), {processes} and {gpus} per cell, {profile.time_limit_min} min per job"
    if profile.gpus_per_cell:
        cell = f"{_count(profile.gpus_per_cell, 'GPU')} × {_count(profile.cpus_per_gpu, 'CPU')} per cell"
    else:
        cell = f"CPU cells of {_count(profile.cpus_per_gpu, 'CPU')}"
    parts = [f"partition {profile.partition}" if profile.partition else "the default partition", cell]
    if profile.mem_gb is not None:
        parts.append(f"{profile.mem_gb:g} GB per job")
    parts += [f"{profile.time_limit_min} min per job", f"at most {profile.max_running} running"]
    parts += [f"{name} {value}" for name, value in
              (("account", profile.account), ("qos", profile.qos), ("constraint", profile.constraint)) if value]
    if profile.slurm_options:
        parts.append(" ".join(f"--{k}={v}" if v else f"--{k}" for k, v in profile.slurm_options.items()))
    return ", ".join(parts)
