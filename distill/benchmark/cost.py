"""What runs cost: wall time, and device-hours counted per kind of device (GPU or CPU), never added across kinds.

A GPU-hour and a CPU-hour are not the same unit, so a report cell whose runs ran
on both shows two figures, each labelled. Device-hours are wall time × processes:
four processes on four GPUs for an hour are four GPU-hours.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass

CPU = "CPU"
GPU = "GPU"
UNKNOWN = "unknown device"
KINDS = (GPU, CPU, UNKNOWN)
"""The order the kinds are shown in."""


def device_kind(device: str | None) -> str:
    """``GPU`` for an accelerator (``cuda:0``, ``mps``, ``xpu``), ``CPU`` for ``cpu``, ``unknown device`` when not recorded."""
    if not device:
        return UNKNOWN
    return CPU if device.split(":")[0].strip().lower() == "cpu" else GPU


@dataclass(frozen=True)
class RunCost:
    """One run's wall time and where it ran (``run.json``'s ``device`` and ``num_processes``)."""

    wall_seconds: float
    device: str | None
    processes: int | None

    @property
    def kind(self) -> str:
        return device_kind(self.device) if self.processes is not None else UNKNOWN

    @property
    def device_hours(self) -> float | None:
        """Wall time × processes, in hours; None where the device or the process count is unknown."""
        return None if self.kind == UNKNOWN else self.wall_seconds * (self.processes or 1) / 3600


@dataclass(frozen=True)
class CostGroup:
    """The runs of one kind of device in a cell: how many, their mean wall time and mean device-hours per run."""

    kind: str
    runs: int
    wall_seconds: float
    device_hours: float | None

    @property
    def unit(self) -> str:
        """``GPU-h`` or ``CPU-h``: the label every device-hour figure carries."""
        return f"{self.kind}-h"


def cost_groups(costs: Iterable[RunCost]) -> list[CostGroup]:
    """Per kind of device (GPU, CPU, unknown, in that order), the mean wall time and device-hours per run."""
    by_kind: dict[str, list[RunCost]] = {}
    for cost in costs:
        by_kind.setdefault(cost.kind, []).append(cost)
    groups = []
    for kind in KINDS:
        runs = by_kind.get(kind)
        if not runs:
            continue
        hours = [run.device_hours for run in runs if run.device_hours is not None]
        groups.append(
            CostGroup(kind, len(runs), statistics.fmean(run.wall_seconds for run in runs), statistics.fmean(hours) if hours else None)
        )
    return groups


def format_duration(seconds: float) -> str:
    """``42 s``, ``12.5 min`` or ``2.41 h``: a wall time in the unit that reads best."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"
