"""A run directory through its life: planned, locked, opened, written to, and closed with its outcome.

:meth:`RunDirectory.plan` decides (on the main process) whether a run is new,
starts over in place, or resumes, and checks a resume: the recipe and teacher file
against the run's, the number of processes, the changes a run in progress cannot
take. :meth:`RunDirectory.open` then creates, clears or keeps the folder. While the
run lives the directory holds its lock, its ``log.txt``, ``recipe.yaml`` and
``run.json``; at the end ``summary.json`` (written atomically: sweeps trust it as
"finished") and ``outcome.json``. The layout itself is :mod:`distill.files.rundir`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from accelerate import Accelerator

from distill.engine.accelerator import on_main
from distill.engine.checkpoint import check_resumable, load_run_checkpoint, read_train_state
from distill.engine.guard import NonFiniteError
from distill.engine.optim import UNAPPLICABLE_KEYS
from distill.engine.resume import (
    ResumeError,
    RunDirPlan,
    check_same_recipe,
    check_same_teacher,
    clear_for_restart,
    differing_keys,
    plan_run_dir,
    recorded_form,
    remove_stale_temporaries,
)
from distill.engine.signals import TrainingStopped
from distill.engine.state import TrainResult, TrainState
from distill.errors import DistillError
from distill.files.atomic import atomic_write_text
from distill.files.rundir import (
    CHECKPOINT_DIR,
    LOG_FILE,
    RECIPE_FILE,
    RUN_INFO_FILE,
    SUMMARY_FILE,
    RunDirLock,
    claim_new_run_dir,
    claim_run_dir,
    new_run_dir,
    write_outcome,
)
from distill.recipe.schema import Recipe
from distill.recipe.serialize import recipe_to_dict, recipe_to_yaml


class RunDirectory:
    """The run directory of one trainer: its plan, lock, log and records (written by the main process)."""

    def __init__(self, accelerator: Accelerator, echo: Callable[[str], None]) -> None:
        self.accelerator = accelerator
        self._echo = echo
        self._lock: RunDirLock | None = None
        self._log_file: TextIO | None = None
        self.plan: RunDirPlan | None = None
        self.path: Path | None = None
        self.forced: list[str] = []
        """Differences a forced resume accepted, as sentences (logged, and kept in ``run.json``)."""
        self.changed_keys: list[str] = []
        """Recipe keys whose values differ from the resumed checkpoint's recipe (they apply from the resumed step)."""

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    # --- planning -------------------------------------------------------------------------

    def decide(
        self, run_dir: str | Path | None, recipe: Recipe, teacher_sha256: str | None, *, force: bool
    ) -> dict[str, Any] | None:
        """Plan the run (new, restart in place, resume) and check a resume; returns, on the main process of a resume, its checkpoint."""
        read: dict[str, Any] = {}

        def decide() -> tuple[RunDirPlan, list[str]]:
            if run_dir is None:
                return RunDirPlan(new_run_dir(recipe.output_dir, recipe.name), auto_named=True), []
            path = Path(run_dir)
            if path.is_dir():
                self._take_lock(path)  # before reading it: another process may be writing it
            plan = plan_run_dir(path, extend_finished=force)
            changed: list[str] = []
            if plan.resumes or plan.restart:
                for difference in check_same_recipe(plan.path, recorded_form(recipe), force=force):
                    self.forced.append(f"recipe {difference}")
            if plan.resumes:
                checkpoint = load_run_checkpoint(plan.checkpoint)
                check_resumable(checkpoint, plan.checkpoint)
                note = check_same_teacher(plan.path, checkpoint.get("teacher_sha256"), teacher_sha256, force=force)
                if note:
                    self.forced.append(note)
                recorded = len(checkpoint["processes"])
                if recorded != self.accelerator.num_processes:
                    message = (
                        f"{plan.checkpoint} was written by {recorded} process(es), this run has "
                        f"{self.accelerator.num_processes}: the data order and random streams cannot continue exactly"
                    )
                    if not force:
                        raise ResumeError(f"{message}. Resume with {recorded} process(es), or pass --force.")
                    self.forced.append(message + " (the epoch in progress restarts from its first batch)")
                changed = differing_keys(checkpoint.get("recipe") or {}, recipe_to_dict(recipe))
                check_applicable(plan, read_train_state(checkpoint), changed, recipe.schedule.epochs)
                read["checkpoint"] = checkpoint
            return plan, changed

        self.plan, self.changed_keys = on_main(self.accelerator, decide)
        return read.get("checkpoint")

    # --- the folder and its lock ---------------------------------------------------------------

    def _take_lock(self, path: Path) -> None:
        """Hold the run directory's lock (main process) until :meth:`close`."""
        if self._lock is None:
            lock = RunDirLock(path)
            lock.acquire()
            self._lock = lock

    def release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def open(self) -> Path:
        """Create (new run), clear (restart in place) or keep (resume) the folder; record that the run is running."""
        plan = self.plan
        assert plan is not None, "plan the run directory first"

        def prepare() -> str:
            if plan.resumes:
                remove_stale_temporaries(plan.path)
                if plan.extends:
                    (plan.path / SUMMARY_FILE).unlink()
                path = plan.path
            elif plan.restart:
                clear_for_restart(plan.path)
                (plan.path / CHECKPOINT_DIR).mkdir()
                path = plan.path
            else:
                try:
                    path = claim_new_run_dir(plan.path) if plan.auto_named else claim_run_dir(plan.path)
                except OSError as error:
                    raise DistillError(
                        f"cannot create run directory {plan.path}: {error.strerror or error}; "
                        f"choose a writable --run-dir (or output_dir)"
                    ) from None
                self._take_lock(path)
            write_outcome(path, "running")
            return str(path)

        self.path = Path(on_main(self.accelerator, prepare))
        self._log_file = (self.path / LOG_FILE).open("a", encoding="utf-8") if self.is_main else None
        return self.path

    # --- what the run writes --------------------------------------------------------------------

    def log(self, line: str) -> None:
        """A line for the user (main process only), also kept in ``log.txt``."""
        if not self.is_main:
            return
        self._echo(line)
        if self._log_file is not None:
            self._log_file.write(line + "\n")
            self._log_file.flush()

    def record_start(self, recipe: Recipe, info: dict[str, Any], resumed_from: TrainState | None) -> None:
        """``recipe.yaml`` and ``run.json`` (with ``info``) for a new run; a resume appends itself to ``run.json``.

        A resume records the code it ran (``git_commit``, ``git_dirty``): a run requeued
        across a ``git pull`` says so.
        """
        if not self.is_main:
            return
        info_path = self.path / RUN_INFO_FILE
        if resumed_from is not None:
            recorded = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
            recorded.setdefault("resumes", []).append(
                {
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "command": sys.argv,
                    "from_epoch": resumed_from.epoch,
                    "from_batch": resumed_from.batch,
                    "from_step": resumed_from.step,
                    "forced": self.forced,
                    **{key: info[key] for key in ("git_commit", "git_dirty", "git_reason") if key in info},
                }
            )
            if self.forced:
                (self.path / RECIPE_FILE).write_text(recipe_to_yaml(recipe), encoding="utf-8")
            info_path.write_text(json.dumps(recorded, indent=2), encoding="utf-8")
            return
        (self.path / RECIPE_FILE).write_text(recipe_to_yaml(recipe), encoding="utf-8")
        info_path.write_text(json.dumps(info, indent=2), encoding="utf-8")

    def write_summary(self, result: TrainResult, protocol: str) -> None:
        """``summary.json``: the run's result with its protocol (atomic: its presence means "finished")."""
        if not self.is_main:
            return
        summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()}
        summary["final_top1_note"] = f"test top-1 of the {protocol} (the protocol of the CRD paper's tables)"
        summary["best_top1_note"] = "best epoch, selected on the test set: for information, do not report"
        summary["seconds_note"] = "time spent in the epochs, summed over the run's resumes (start-up and init stages excluded)"
        atomic_write_text(self.path / SUMMARY_FILE, json.dumps(summary, indent=2))

    def record_end(self, error: BaseException | None) -> None:
        """Say how the run ended, in ``log.txt`` and ``outcome.json`` (main process; best effort on a full disk)."""
        if not self.is_main or self.path is None:
            return
        status, message = outcome_of(error)
        try:
            if self._log_file is not None:
                self._log_file.write(f"run ended: {status}" + (f": {message}" if message else "") + "\n")
                self._log_file.flush()
            write_outcome(self.path, status, message)
        except OSError:
            pass

    def close(self) -> None:
        """Close the log and let go of the lock (whatever way the run ended)."""
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self.release_lock()


def outcome_of(error: BaseException | None) -> tuple[str, str]:
    """``(status, message)`` for ``outcome.json``: how an error (or none) ended a run."""
    if error is None:
        return "finished", ""
    if isinstance(error, TrainingStopped):
        return "stopped", str(error)
    if isinstance(error, NonFiniteError):
        return "nonfinite", str(error)
    if isinstance(error, DistillError):
        return "failed", str(error)
    return "failed", f"{type(error).__name__}: {error}".rstrip(": ")


def check_applicable(plan: RunDirPlan, done: TrainState, changed: list[str], epochs: int) -> None:
    """Refuse, by name, a forced change that a run in progress cannot take (even with ``--force``).

    ``done``: the resumed checkpoint's counters; ``epochs``: the recipe's ``schedule.epochs`` now.
    """
    for key in changed:
        if key in UNAPPLICABLE_KEYS:
            raise ResumeError(
                f"{key} cannot change when resuming {plan.path}: {UNAPPLICABLE_KEYS[key]}. "
                f"Start a new run (another --run-dir) with the new value."
            )
    if "data.batch_size" in changed and done.batch > 0:
        raise ResumeError(
            f"data.batch_size cannot change in the middle of an epoch ({plan.checkpoint} was written after "
            f"batch {done.batch} of epoch {done.epoch + 1}): the position in the data order "
            f"would mean other images. Resume with the run's batch size."
        )
    if epochs < done.epoch or (epochs == done.epoch and done.batch > 0):
        raise ResumeError(
            f"schedule.epochs={epochs}, but {plan.path} has already trained {done.epoch} epochs; "
            f"give at least {done.epoch + 1}"
        )
    if plan.extends and epochs == done.epoch:
        raise ResumeError(
            f"run directory {plan.path} finished its {epochs} epochs: there is nothing to resume. To train it "
            f"longer: distill train --resume {plan.path} schedule.epochs=N --force, with N > {epochs}"
        )
