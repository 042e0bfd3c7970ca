"""The training loop: a resolved recipe in, a run directory with a distilled student out.

One :class:`Trainer` serves CPU, one GPU or several processes through Accelerate. It
orchestrates — build (:mod:`~distill.engine.build`), the run directory
(:mod:`~distill.engine.run_directory`), restore, then for each epoch train, evaluate,
checkpoint (:mod:`~distill.engine.checkpoint`) — with no callbacks. A step is
``Distiller.forward`` (student and frozen-teacher features, every loss term) →
weighted total → backward → optimiser step, checked for non-finite values
(:mod:`~distill.engine.guard`); SIGTERM/SIGINT stop after a checkpoint
(:mod:`~distill.engine.signals`), from which a run resumes bit-identically.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from accelerate.utils import gather_object

from distill.engine.accelerator import make_accelerator
from distill.engine.build import build_run
from distill.engine.checkpoint import checkpoint_payload, load_run_checkpoint, process_state, restore_checkpoint
from distill.engine.checkpoint_writer import CheckpointWriter
from distill.engine.distiller import Distiller
from distill.engine.evaluate import evaluate
from distill.engine.guard import NonFiniteError, StepGuard, StepVerdict, check_first_terms, nonfinite_message
from distill.engine.init_stage import run_init_stages
from distill.engine.metrics import MetricsWriter
from distill.engine.optim import apply_hyperparameters
from distill.engine.progress import Progress
from distill.engine.rng import restore_rng_state
from distill.engine.run_directory import RunDirectory
from distill.engine.seeding import seed_everything
from distill.engine.signals import STOP_SIGNALS, StopSignals, TrainingStopped, stopped_message
from distill.engine.startup import run_info, setup_report, start_lines
from distill.engine.state import TrainResult, TrainState
from distill.engine.step_graph import make_step_graph
from distill.engine.tracking import Trackers, check_tags, check_trackers_available, tracker_config
from distill.files.rundir import BEST_CHECKPOINT, LAST_CHECKPOINT
from distill.recipe.resolve import ResolvedRecipe, resolve_recipe
from distill.recipe.schema import Recipe


class Trainer:
    """Builds everything a resolved recipe describes, then trains and evaluates epoch by epoch.

    ``run_dir``: where the run lives; a new time-stamped folder under the recipe's
    ``output_dir`` if not given. A ``run_dir`` that holds an unfinished run is
    resumed from its last checkpoint (or started over in place if it has none),
    after checking that the recipe and the teacher file are those the run started
    with; ``force=True`` continues despite differences. ``dry_run``: plan, build and
    restore, then stop (:meth:`setup_report` says what was found); nothing is written,
    and :meth:`train_step` still runs (``tools/benchmark.py`` times it so).

    ``tensorboard``: log to the recipe's trackers (``tracking.log_with``, TensorBoard by
    default); ``False`` logs to none (``--no-tensorboard``). ``tags``: what the run is in
    a grid (``{"task": ..., "method": ..., "seed": ...}``), kept in ``run.json`` and given
    to the trackers (:mod:`distill.engine.tracking`). ``stop_signals``: the signals that stop
    the run after a checkpoint (SIGTERM and SIGINT; a cluster job adds its scheduler's
    warning signal, see :mod:`distill.benchmark.launchers.cell_job`).
    """

    def __init__(
        self,
        resolved: ResolvedRecipe,
        run_dir: str | Path | None = None,
        *,
        force: bool = False,
        tensorboard: bool = True,
        echo: Callable[[str], None] | None = None,
        dry_run: bool = False,
        tags: Mapping[str, str] | None = None,
        stop_signals: Sequence[int] = STOP_SIGNALS,
    ) -> None:
        if not isinstance(resolved, ResolvedRecipe):
            raise TypeError("Trainer takes a ResolvedRecipe: resolve_recipe(recipe) (distill.recipe.resolve)")
        self.resolved, self.recipe = resolved, resolved.recipe
        self.stop_signals = tuple(stop_signals)
        self.tags = check_tags(tags or {})
        self.tracker_names = list(self.recipe.tracking.log_with) if tensorboard else []
        check_trackers_available(self.tracker_names)  # a tracker that is not installed leaves no run directory
        self.accelerator = make_accelerator(self.recipe)
        seed_everything(self.recipe.seed, self.recipe.deterministic)
        self.directory = RunDirectory(self.accelerator, echo or (lambda line: print(line, flush=True)))
        self.metrics: MetricsWriter | None = None
        self.checkpoints = CheckpointWriter(background=self.recipe.async_checkpoint)
        try:
            checkpoint = self.directory.decide(run_dir, self.recipe, resolved.teacher_sha256, force=force)  # 1. plan
            self.built = build_run(self.recipe, self.accelerator)  # 2. build: bad input leaves no run directory
            if dry_run:
                self.directory.release_lock()
                self.run_dir = self.directory.plan.path  # where it would live: nothing is written there
                self._start_state(checkpoint)  # a resumed checkpoint must fit what was built
                return
            self.run_dir = self.directory.open()  # 3. open the run directory
        except BaseException:
            self.directory.release_lock()
            raise
        try:
            self._start_state(checkpoint)  # 4. a fresh state, or the resumed checkpoint's
            if self.is_main:  # 5. metrics.jsonl, steps.jsonl and the trackers; a resume keeps the rows its checkpoint saw
                resumed = self.resumed_from is not None
                trackers = Trackers(self.run_dir, self.tracker_names, self.recipe.tracking.project,
                                    tracker_config(self.recipe, self.tags), self.tags)
                self.metrics = MetricsWriter(self.run_dir, keep_rows=self._metrics_rows if resumed else None,
                                             keep_steps_to=self.state.step if resumed else None, trackers=trackers)
        except BaseException as error:
            self.directory.record_end(error)
            self._close()
            raise

    def _start_state(self, checkpoint: dict | None) -> None:
        """The counters, the step guard and, for a resume, everything the checkpoint holds."""
        accelerator, plan = self.accelerator, self.directory.plan
        self.state = TrainState()
        self.guard = StepGuard(
            device=accelerator.device,
            num_processes=accelerator.num_processes,
            skip_limit=self.recipe.skip_nonfinite,
            check_gradients=accelerator.scaler is None,  # fp16's scaler skips overflowing steps itself
        )
        self.trained_parameters = self.built.trained_parameters
        self.step_graph = make_step_graph(self.unwrapped, self.accelerator.device, self.device_step) if self.recipe.cuda_graph else None
        self._signals: StopSignals | None = None
        self._stop_agreed = False
        self._where = ""  # the epoch and batch of the step in progress, for messages
        self.last_step_applied = True
        self._epoch_sums: tuple[torch.Tensor, torch.Tensor] | None = None
        self._resumed_rng: dict | None = None
        self.last_saved = "none (no checkpoint was written yet)"
        self.applied_changes: list[str] = []
        self.resumed_from: TrainState | None = None
        self._seconds_before, self._loop_started = 0.0, time.perf_counter()
        if plan.resumes:
            if checkpoint is None:  # read on the main process only while planning
                checkpoint = load_run_checkpoint(plan.checkpoint)
            restored = restore_checkpoint(checkpoint, self.built, plan.checkpoint, self.run_dir)
            recipe, changed = self.recipe, set(self.directory.changed_keys)
            self.applied_changes = apply_hyperparameters(self.optimizer, self.built.scheduler, recipe.optimizer, recipe.schedule, changed)
            self.state, self.guard.skipped = restored.state, restored.skipped_steps
            self._resumed_rng, self._epoch_sums = restored.rng, restored.epoch_sums
            self._metrics_rows, self._seconds_before = restored.metrics_rows, restored.train_seconds
            self.resumed_from = TrainState(**vars(self.state))
            self.last_saved = f"{plan.checkpoint} (epoch {self.state.epoch}, step {self.state.step})"

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def unwrapped(self) -> Distiller:
        return self.built.unwrapped

    @property
    def distiller(self) -> torch.nn.Module:
        return self.built.distiller

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.built.optimizer

    @property
    def train_loader(self):
        return self.built.train_loader

    def log(self, line: str) -> None:
        """A line for the user (main process only), also kept in ``log.txt``."""
        self.directory.log(line)

    def setup_report(self) -> list[str]:
        """What a start found, for ``distill train --dry-run``: every check a real start runs, short of training."""
        return setup_report(self.resolved, self.built, self.directory.plan, self.directory.forced)


    def fit(self) -> TrainResult:
        """Train to the recipe's last epoch (from where a resumed run stopped); returns last- and best-epoch accuracy.

        SIGTERM/SIGINT (the constructor's ``stop_signals``) stop the run after a checkpoint
        (:class:`TrainingStopped`, which names the signal).
        """
        try:
            with StopSignals(self.stop_signals) as signals:
                self._signals = signals
                result = self._fit()
        except BaseException as error:
            self.directory.record_end(error)
            raise
        finally:
            self._signals = None
            self._close()
        return result

    def _fit(self) -> TrainResult:
        recipe = self.recipe
        self.directory.record_start(recipe, run_info(self.resolved, self.built, self.tags), self.resumed_from)
        for line in start_lines(recipe, self.built, run_dir=self.run_dir, resumed=self.resumed_from,
                                last_saved=self.last_saved, forced=self.directory.forced, applied=self.applied_changes):
            self.log(line)
        if self.resumed_from is None:
            self._evaluate_teacher()
        self.run_init_stages(train=self.resumed_from is None)
        if self._resumed_rng is not None:
            restore_rng_state(self._resumed_rng)
            self._resumed_rng = None
        self._loop_started = time.perf_counter()
        for epoch in range(self.state.epoch + 1, recipe.schedule.epochs + 1):
            group = self.optimizer.param_groups[0]
            hyperparameters = {key: group[key] for key in ("lr", "momentum", "weight_decay") if key in group}
            record = self.train_epoch(epoch)
            self.built.scheduler.step()
            accuracy = evaluate(self.unwrapped.student, self.built.test_loader, self.accelerator)
            self.state.epoch, self.state.batch = epoch, 0
            self.state.top1, self.state.top5 = accuracy.top1, accuracy.top5
            improved = accuracy.top1 > self.state.best_top1
            if improved:
                self.state.best_top1, self.state.best_epoch = accuracy.top1, epoch
            row = {"epoch": epoch, "step": self.state.step, **hyperparameters, **record,
                   "test/top1": accuracy.top1, "test/top5": accuracy.top5}
            self._end_epoch(row, improved)
            if self._stop_agreed or (self._signals is not None and self._signals.requested):
                if epoch < recipe.schedule.epochs:
                    self._stop(f"at the end of epoch {epoch}")
        result = TrainResult(
            run_dir=self.run_dir,
            final_top1=self.state.top1,
            final_top5=self.state.top5,
            best_top1=self.state.best_top1,
            best_epoch=self.state.best_epoch,
            epochs=self.state.epoch,
            seconds=self.train_seconds(),
        )
        self._finish(result)
        return result

    def _evaluate_teacher(self) -> None:
        """A new run's first row: the frozen teacher's test accuracy (the ceiling the student is held against)."""
        if self.built.teacher is None:
            return
        accuracy = evaluate(self.built.teacher.module, self.built.test_loader, self.accelerator)
        self.log(f"teacher top-1 {accuracy.top1:.2f}  top-5 {accuracy.top5:.2f}")
        if self.metrics:
            self.metrics.write({"epoch": 0, "step": 0, "teacher/top1": accuracy.top1, "teacher/top5": accuracy.top5}, 0)

    def train_seconds(self) -> float:
        """The time spent in the epochs so far, this process's and every earlier one's (a resumed run's)."""
        return self._seconds_before + (time.perf_counter() - self._loop_started)

    def run_init_stages(self, train: bool = True) -> None:
        """Each loss's init stage (:mod:`distill.engine.init_stage`); a resumed run only freezes what they froze."""
        run_init_stages(
            self.built, self.recipe, train=train, log=self.log, metrics=self.metrics, run_dir=self.run_dir,
            stop_requested=lambda: self._signals.requested if self._signals is not None else None,
        )

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training set; returns the epoch's mean loss terms and throughput.

        A run resumed inside this epoch starts at the batch after its checkpoint,
        with the running sums of the batches before it. Every ``log_every`` batches (and
        at the last) the running means so far this epoch, the lr and images/s go to
        ``steps.jsonl`` and the trackers at the global step (the main process's own
        means: the epoch's row holds every process's).
        """
        accelerator, loader = self.accelerator, self.train_loader
        start = self.state.batch
        loader.set_epoch(epoch)
        if start:
            loader.skip(start)
        for loss in self.unwrapped.losses.values():
            loss.start_epoch(epoch, self.recipe.schedule.epochs)
        self.distiller.train()
        if self.step_graph is not None:
            self.step_graph.new_epoch()  # the lr and the losses' epoch values may have changed
        names = [*self.recipe.losses, "total"]
        if self._epoch_sums is None or start == 0:
            self._epoch_sums = (
                torch.zeros(len(names), dtype=torch.float64, device=accelerator.device),
                torch.zeros((), dtype=torch.float64, device=accelerator.device),
            )
        sums, seen = self._epoch_sums
        progress = Progress(len(loader), f"epoch {epoch}/{self.recipe.schedule.epochs}", enabled=self.is_main)
        progress.update(start)
        log_every, every, pending, counted = self.recipe.log_every, self.recipe.checkpoint_every_steps, 0, 0
        started = time.perf_counter()
        for index, (inputs, labels, indices) in enumerate(loader, start=start + 1):
            self._where = f"epoch {epoch}, batch {index}"
            terms, total = self.train_step(inputs, labels, indices)
            if self.last_step_applied:
                batch = labels.shape[0]
                sums += torch.stack([*terms.values(), total]).detach().double() * batch
                seen += batch
                counted += batch
            self.state.batch = index
            pending += 1
            if index % log_every == 0 or index == len(loader):
                means = (sums / seen.clamp(min=1)).tolist()  # the only host sync besides the guard's
                rate = counted * accelerator.num_processes / (time.perf_counter() - started)
                progress.update(pending, {"loss": means[-1], "img/s": rate})
                pending = 0
                if self.metrics:
                    self.metrics.write_step(step_row(epoch, index, self.state.step, names, means,
                                                     self.optimizer.param_groups[0]["lr"], rate))
            if index < len(loader) and (self._stop_agreed or (every and self.state.step % every == 0)):
                self.save_checkpoint()
                if self._stop_agreed:
                    progress.close()
                    self._stop(f"in epoch {epoch} after batch {index}")
        progress.close()
        self._handle(self.guard.flush())
        elapsed = time.perf_counter() - started
        sums = accelerator.reduce(sums.clone(), reduction="sum")
        seen = accelerator.reduce(seen.clone(), reduction="sum")
        means = (sums / seen.clamp(min=1)).tolist()
        record = {f"train/loss/{name}": value for name, value in zip(names, means)}
        record["train/images_per_s"] = counted * accelerator.num_processes / elapsed
        record["time/epoch_s"] = elapsed
        return record

    def train_step(
        self, inputs: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One optimisation step on one batch; returns the loss terms and the weighted total (on the device).

        The step is checked for non-finite values (see :class:`StepGuard`); with
        ``skip_nonfinite`` a bad step is dropped and ``last_step_applied`` is False.
        With ``cuda_graph: true`` the step runs through :class:`StepGraph` (replayed as
        one CUDA graph where the batch's shapes allow), with the same results.
        """
        step = self.state.step + 1
        where = self._where or f"step {step}"
        if self.step_graph is not None:
            self.note_stop_request()  # a replayed graph runs no Python: it reads the flag as it stands now
        if not self.guard.synchronous:
            terms, total, flags = (self.step_graph or self.device_step)(inputs, labels, indices)
            self.state.step = step
            self._handle(self.guard.defer(step, flags, terms, where))
            self.last_step_applied = True
            return terms, total
        terms, total = self.forward_backward(inputs, labels, indices)
        self.note_stop_request()
        flags = self.guard.flags(total, self.trained_parameters)
        self.state.step = step
        verdict = self.guard.read(step, flags, terms, where)
        if verdict.problem is not None and self.guard.may_skip():
            self.optimizer.zero_grad(set_to_none=True)
            self.last_step_applied = False
            self.log(
                f"step {step} ({where}): {verdict.problem}; step skipped "
                f"({self.guard.skipped} of skip_nonfinite={self.guard.skip_limit})"
            )
            self._stop_agreed = self._stop_agreed or verdict.stop
            return terms, total
        self._handle(verdict)
        self.optimizer.step()
        self.last_step_applied = True
        return terms, total

    def device_step(
        self, inputs: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """The step's work on the device, with no host sync: forward, backward, the guard's flags, the optimiser step.

        What a CUDA graph records (:mod:`distill.engine.step_graph`); returns the loss
        terms, the total and the flags, for the guard to read one step later.
        """
        terms, total = self.forward_backward(inputs, labels, indices)
        self.note_stop_request()  # a signal that came during this step's forward or backward counts in this step
        flags = self.guard.flags(total, self.trained_parameters)
        self.optimizer.step()
        return terms, total, flags

    def note_stop_request(self) -> None:
        """Put a pending stop request (SIGTERM/SIGINT, the constructor's ``stop_signals``) into the guard's device flag."""
        self.guard.mark_stop(self._signals is not None and self._signals.requested is not None)

    def forward_backward(
        self, inputs: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``Distiller.forward`` and the backward pass of the weighted total (the first step's terms checked first)."""
        terms, total, _ = self.distiller(inputs, labels, indices)
        if self.state.step == 0:
            check_first_terms(terms, {name: spec.type for name, spec in self.recipe.losses.items()})
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(total)
        return terms, total

    def save_checkpoint(self, *, best: bool = False) -> None:
        """Write ``last`` (and ``best``) at the current position, after making sure no bad step precedes it.

        Every process takes part (each contributes its own random states).
        """
        self._handle(self.guard.flush())
        label = f"{self.run_dir / LAST_CHECKPOINT} (epoch {self.state.epoch}, step {self.state.step})"
        processes = [process_state(self.built, self._epoch_sums if self.state.batch > 0 else None)]
        if self.accelerator.num_processes > 1:
            processes = gather_object(processes)
        if self.is_main:
            payload = checkpoint_payload(
                self.built, self.state, recipe=self.recipe, teacher_sha256=self.resolved.teacher_sha256,
                skipped_steps=self.guard.skipped, metrics_rows=self.metrics.rows if self.metrics else 0,
                train_seconds=self.train_seconds(), processes=processes,
            )
            paths = [self.run_dir / LAST_CHECKPOINT] + ([self.run_dir / BEST_CHECKPOINT] if best else [])
            self.checkpoints.submit(payload, paths, label)
        self.accelerator.wait_for_everyone()
        self.last_saved = label if self.checkpoints.in_flight is None else f"{label}, still being written"

    def wait_for_checkpoint(self) -> None:
        """Block until the checkpoint being written (``async_checkpoint``) is on disk; raise if its write failed."""
        self.checkpoints.wait()
        if self.checkpoints.written is not None:
            self.last_saved = self.checkpoints.written

    def _handle(self, verdict: StepVerdict | None) -> None:
        """Stop on a non-finite step; note an agreed stop request."""
        if verdict is None:
            return
        if verdict.problem is not None:
            raise NonFiniteError(nonfinite_message(verdict, self.last_saved, self.run_dir))
        self._stop_agreed = self._stop_agreed or verdict.stop

    def _stop(self, where: str) -> None:
        """Checkpoint at the current position (already done when ``where`` is an epoch end) and stop."""
        requested = self._signals.requested if self._signals else None
        self.wait_for_checkpoint()  # the process must not end before last.pt is whole
        message = stopped_message(requested or "a stop request", where, self.last_saved, self.run_dir)
        raise TrainingStopped(message, signal_name=requested)

    def _end_epoch(self, row: dict, improved: bool) -> None:
        self.accelerator.wait_for_everyone()
        if self.metrics:
            self.metrics.write(row, self.state.step)
        self.save_checkpoint(best=improved)
        terms = " ".join(
            f"{key.removeprefix('train/loss/')} {value:.4f}" for key, value in row.items() if key.startswith("train/loss/")
        )
        self.log(
            f"epoch {row['epoch']}/{self.recipe.schedule.epochs} lr {row['lr']:.3g} | loss {terms} | "
            f"test top-1 {row['test/top1']:.2f} top-5 {row['test/top5']:.2f} | "
            f"{row['train/images_per_s']:.0f} img/s, {row['time/epoch_s']:.1f} s"
        )

    def _finish(self, result: TrainResult) -> None:
        self.wait_for_checkpoint()
        self.accelerator.wait_for_everyone()
        protocol = f"last epoch of {result.epochs}, one run, seed {self.recipe.seed}"
        self.directory.write_summary(result, protocol)
        self.log(
            f"done in {result.seconds / 60:.1f} min | final top-1 {result.final_top1:.2f} [{protocol}] | "
            f"best top-1 {result.best_top1:.2f} at epoch {result.best_epoch} [selected on the test set: not a result] "
            f"| {result.run_dir}"
        )
        self.directory.record_end(None)

    def _close(self) -> None:
        """Wait for the checkpoint being written, then close the metrics sinks, the log and the lock (whatever way the run ended).

        A failed write is logged, not raised: the run may be ending on another error, which must not be masked.
        """
        try:
            self.wait_for_checkpoint()
        except Exception as error:  # noqa: BLE001 - reported, the original exception (if any) goes on
            self.log(f"distill: {error}")
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        self.directory.close()


def step_row(epoch: int, batch: int, step: int, names: list[str], means: list[float], lr: float, rate: float) -> dict:
    """A ``steps.jsonl`` row: where it is (epoch, batch, global step), the running loss terms, the lr and images/s."""
    return {"epoch": epoch, "batch": batch, "step": step, **{f"step/loss/{name}": mean for name, mean in zip(names, means)},
            "step/lr": lr, "step/images_per_s": rate}


def train(recipe: Recipe | ResolvedRecipe, run_dir: str | Path | None = None, **kwargs) -> TrainResult:
    """Resolve ``recipe``'s files, build a :class:`Trainer` and run it to the end (resuming ``run_dir`` if it holds a run).

    ``kwargs`` go to :class:`Trainer` (``force``, ``tensorboard``, ``tags``, ``echo``).
    """
    return Trainer(resolve_recipe(recipe), run_dir, **kwargs).fit()
