"""The state of every cell of a sweep, from its run directory and its job records: ``distill sweep --status``.

A cell is ``finished`` (``summary.json``), ``running`` (a job, or a local process,
trains it now), ``queued`` (submitted; the job has not started, or was requeued after
a checkpoint and waits), ``failed`` (an error ended it, or its job vanished without a
word), ``stopped`` (a signal ended it after a checkpoint: the next submission resumes
it) or ``not started``. The run directory decides first (it is the truth about the
training); the job records (:mod:`distill.benchmark.launchers.records`) say which job
holds a cell that has not finished, and the scheduler is asked whether that job still
exists (:mod:`distill.benchmark.launchers.liveness`).

Nothing here writes anything or takes a lock: ``--status`` can run while jobs train.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from distill.benchmark.launchers.liveness import job_alive, local_job_alive
from distill.benchmark.launchers.records import (
    FAILED,
    FINISHED,
    REQUEUED,
    RUNNING,
    STOPPED,
    JobReport,
    Submission,
    read_job_report,
    read_submission,
    records_dir,
)
from distill.benchmark.sweep import SweepCell, last_line
from distill.files.rundir import holder_text, is_finished, read_lock_holder, read_outcome

CELL_FINISHED, CELL_RUNNING, CELL_QUEUED, CELL_FAILED, CELL_STOPPED, CELL_NOT_STARTED = (
    "finished", "running", "queued", "failed", "stopped", "not started",
)
CELL_STATES = (CELL_FINISHED, CELL_RUNNING, CELL_QUEUED, CELL_FAILED, CELL_STOPPED, CELL_NOT_STARTED)
IN_FLIGHT = (CELL_RUNNING, CELL_QUEUED)
"""States whose cell a new submission must leave alone: a job holds it."""

Alive = Callable[[str, str, str], "bool | None"]


@dataclass(frozen=True)
class CellState:
    """One cell's state, with the job that holds it (if any) and a detail line (an error's last line, a host …)."""

    cell: SweepCell
    state: str
    job_id: str = ""
    detail: str = ""
    log: str = ""


def _run_dir_state(cell: SweepCell) -> CellState:
    """The state from the run directory alone (a cell without job records: a local sweep or a hand-started run)."""
    outcome = read_outcome(cell.run_dir)
    if outcome is None:
        started = cell.run_dir.is_dir() and any(cell.run_dir.iterdir())
        return CellState(cell, CELL_STOPPED if started else CELL_NOT_STARTED, detail="unfinished" if started else "")
    if outcome.ended_badly:
        return CellState(cell, CELL_FAILED, detail=last_line(outcome.message) or outcome.status)
    if outcome.status == "running":
        holder = read_lock_holder(cell.run_dir)
        if holder is not None and local_job_alive(str(holder[0]), holder[1]) is True:  # another host's: cannot tell
            return CellState(cell, CELL_RUNNING, detail=holder_text(*holder))
        return CellState(cell, CELL_FAILED, detail="its process ended without recording an outcome (killed?)")
    return CellState(cell, CELL_STOPPED, detail=last_line(outcome.message))


def _job_state(cell: SweepCell, submission: Submission | None, report: JobReport | None, alive: Alive) -> CellState:
    """The state of a cell a job was submitted for: the job's own report, checked against the scheduler."""
    log = submission.stdout if submission is not None else ""
    if submission is not None and (report is None or report.job_id != submission.job_id):
        live = alive(submission.executor, submission.job_id, submission.host)
        if live is False:
            return CellState(cell, CELL_FAILED, submission.job_id, "the job ended before it started training", log)
        return CellState(cell, CELL_QUEUED, submission.job_id, f"submitted {submission.submitted}", log)
    assert report is not None
    executor = submission.executor if submission is not None else ""
    if report.state in (RUNNING, REQUEUED):
        live = alive(executor, report.job_id, submission.host if submission is not None else report.host)
        if live is False:
            return CellState(cell, CELL_FAILED, report.job_id, "the job ended without recording an outcome (killed? "
                             "out of memory? node failure?): see its log", log)
        if report.state == REQUEUED:
            return CellState(cell, CELL_QUEUED, report.job_id, f"requeued after a checkpoint ({report.time})", log)
        return CellState(cell, CELL_RUNNING, report.job_id, f"on {report.host}, attempt {report.attempt}", log)
    if report.state == FAILED:
        return CellState(cell, CELL_FAILED, report.job_id, report.message or "failed", log)
    if report.state == STOPPED:
        return CellState(cell, CELL_STOPPED, report.job_id, last_line(report.message), log)
    assert report.state == FINISHED  # but the run directory is not: it was removed or replaced since
    return _run_dir_state(cell)


def cell_state(cell: SweepCell, output: Path, alive: Alive = job_alive) -> CellState:
    """The state of ``cell`` of the sweep under ``output``; ``alive`` asks whether a job still exists."""
    if is_finished(cell.run_dir):
        return CellState(cell, CELL_FINISHED)
    folder = records_dir(output, cell.method, cell.task, cell.seed)
    submission, report = read_submission(folder), read_job_report(folder)
    if submission is None and report is None:
        return _run_dir_state(cell)
    return _job_state(cell, submission, report, alive)


def grid_states(cells: Sequence[SweepCell], output: Path, alive: Alive = job_alive) -> list[CellState]:
    return [cell_state(cell, output, alive) for cell in cells]


def format_status(states: Sequence[CellState]) -> str:
    """The grid at a glance: one line per cell (state, job, detail), then the counts per state."""
    width = max((len(state.cell.label) for state in states), default=0)
    lines = []
    for state in states:
        job = f"job {state.job_id}" if state.job_id else ""
        detail = f"  {state.detail}" if state.detail else ""
        log = f"  (log: {state.log})" if state.log and state.state == CELL_FAILED else ""
        lines.append(f"{state.cell.label:<{width}}  {state.state:<11}  {job:<14}{detail}{log}".rstrip())
    counts = {name: sum(state.state == name for state in states) for name in CELL_STATES}
    lines.append(
        f"{len(states)} cells: " + ", ".join(f"{counts[name]} {name}" for name in CELL_STATES)
        + f" ({time.strftime('%Y-%m-%d %H:%M')})"
    )
    return "\n".join(lines)
