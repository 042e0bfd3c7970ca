"""The training loop: a recipe in, a run directory with a distilled student out.

One :class:`Trainer` serves every setting (CPU, one GPU, several processes)
through Hugging Face Accelerate. A training step follows one path:

    batch → Distiller.forward (student features, frozen-teacher features,
    every loss term) → weighted total → backward → optimiser step.

Each epoch ends with test accuracy, a ``metrics.jsonl`` row (mirrored to
TensorBoard) and the ``last`` (and, when it improves, ``best``) checkpoint;
``checkpoint_every_steps`` adds checkpoints inside epochs.

Reliability: a checkpoint holds everything that decides the rest of the run, so a
run given its directory again resumes bit-identically (:mod:`distill.engine.resume`
decides when that is allowed); every step is checked for non-finite values
(:mod:`distill.engine.guard`); SIGTERM/SIGINT stop the run cleanly after a
checkpoint (:mod:`distill.engine.signals`).
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate.utils import broadcast_object_list, gather_object

import distill
from distill.data.views import build_views, split_views
from distill.engine.accelerator import compile_networks, make_accelerator
from distill.engine.checkpoint import CHECKPOINT_FORMAT, atomic_save, load_run_checkpoint
from distill.engine.distiller import Distiller, in_full_precision
from distill.engine.evaluate import Accuracy, evaluate
from distill.engine.guard import NonFiniteError, StepGuard, StepVerdict
from distill.engine.loaders import build_datasets, build_loaders
from distill.engine.metrics import MetricsWriter
from distill.engine.optim import UNAPPLICABLE_KEYS, apply_hyperparameters, build_optimizer, build_scheduler
from distill.engine.progress import Progress
from distill.engine.resume import (
    ResumeError,
    RunDirPlan,
    check_same_recipe,
    check_same_teacher,
    clear_for_restart,
    differing_keys,
    recorded_form,
    plan_run_dir,
    remove_stale_temporaries,
)
from distill.engine.rng import capture_rng_state, restore_rng_state
from distill.files.rundir import (
    BEST_CHECKPOINT,
    CHECKPOINT_DIR,
    LAST_CHECKPOINT,
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
from distill.engine.seeding import seed_everything
from distill.engine.signals import StopSignals, TrainingStopped, stopped_message
from distill.engine.threads import cpu_threads_description
from distill.engine.teacher import FrozenTeacher
from distill.errors import CheckpointError, DistillError, LossError, RecipeError
from distill.losses import Batch, InitStage, LossContext, build_loss
from distill.models import create_model
from distill.models.options import ModelOptionError, check_reserved_options
from distill.models.probe import probe_model
from distill.recipe.resolve import ResolvedRecipe, resolve_recipe
from distill.recipe.schema import ModelSpec, Recipe, TeacherSpec
from distill.recipe.serialize import recipe_to_dict, recipe_to_yaml

INIT_DATA_SEED_OFFSET = 1_000_000
"""Init-stage epochs shuffle with data_seed + this + epoch, apart from the main epochs' orders."""


@dataclass
class TrainState:
    """Counters that describe how far a run has come.

    ``epoch`` counts finished epochs; ``batch`` the batches done of the next one
    (0 at an epoch boundary); ``step`` every optimisation step, skipped ones included.
    """

    epoch: int = 0
    step: int = 0
    batch: int = 0
    best_top1: float = -math.inf
    best_epoch: int = 0
    top1: float = math.nan
    top5: float = math.nan


@dataclass(frozen=True)
class TrainResult:
    """The outcome of a finished run.

    ``final_top1`` is the last epoch's test accuracy: the protocol of the CRD
    paper's tables. ``best_top1`` is selected on the test set and is shown for
    information only.
    """

    run_dir: Path
    final_top1: float
    final_top5: float
    best_top1: float
    best_epoch: int
    epochs: int
    seconds: float


def static_memory(trainer: Trainer) -> int:
    """Bytes a run holds on its device before any activation: an estimate for ``--dry-run``.

    Student and loss parameters with their gradients and optimiser state (one
    buffer per parameter for SGD with momentum, two for AdamW), the teacher's
    weights, every buffer (memory banks, batch-norm statistics) and the
    device-resident training and test sets. Activations depend on the batch and
    are not included.
    """
    distiller = trainer.unwrapped
    per_parameter = 2 if trainer.recipe.optimizer.name == "adamw" else (1 if trainer.recipe.optimizer.momentum else 0)
    trainable = sum(p.numel() * p.element_size() for p in distiller.trainable_parameters())
    held = sum(t.numel() * t.element_size() for t in [*distiller.parameters(), *distiller.buffers()])
    teacher = 0
    if trainer.teacher is not None:
        module = trainer.teacher.module
        teacher = sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
    data = getattr(trainer.train_loader, "nbytes", 0) + getattr(trainer.test_loader, "nbytes", 0)
    return held + trainable * (1 + per_parameter) + teacher + data


def build_network(role: str, spec: ModelSpec | TeacherSpec, num_classes: int) -> torch.nn.Module:
    """The student's or the teacher's network with its weights; a bad checkpoint or option names the recipe key."""
    try:
        check_reserved_options(spec.options)
        return create_model(spec.arch, num_classes, spec.checkpoint, **spec.options)
    except CheckpointError as error:
        raise CheckpointError(f"{role}.checkpoint: {error}") from None
    except ModelOptionError as error:
        raise error.under(role) from error


class Trainer:
    """Builds everything a recipe describes, then trains and evaluates epoch by epoch.

    ``run_dir``: where the run lives; a new time-stamped folder under the recipe's
    ``output_dir`` if not given. A ``run_dir`` that holds an unfinished run is
    resumed from its last checkpoint (or started over in place if it has none),
    after checking that the recipe and the teacher file are those the run started
    with; ``force=True`` continues despite differences.
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
    ) -> None:
        if not isinstance(resolved, ResolvedRecipe):
            raise TypeError("Trainer takes a ResolvedRecipe: resolve_recipe(recipe) (distill.recipe.resolve)")
        self.recipe = recipe = resolved.recipe
        self.teacher_sha256 = resolved.teacher_sha256
        self.accelerator = make_accelerator(recipe)
        self._echo = echo or (lambda line: print(line, flush=True))
        seed_everything(recipe.seed, recipe.deterministic)
        self._lock: RunDirLock | None = None
        self._log_file = None
        self.metrics: MetricsWriter | None = None
        try:
            plan, checkpoint = self._plan(run_dir, force)
            self._build()  # before the run directory is touched: bad input leaves nothing behind
            if dry_run:
                self.plan = plan
                self._release_lock()
                return
            self.run_dir = self._open_run_dir(plan)
        except BaseException:
            self._release_lock()
            raise
        self._log_file = (self.run_dir / LOG_FILE).open("a", encoding="utf-8") if self.is_main else None
        try:
            self._prepare(plan, checkpoint, tensorboard)
        except BaseException as error:
            self._record_end(error)
            self._close()
            raise

    def _prepare(self, plan: RunDirPlan, checkpoint: dict | None, tensorboard: bool) -> None:
        """Everything after the run directory exists: guard, state, and a resumed run's checkpoint."""
        recipe = self.recipe
        self.state = TrainState()
        self.guard = StepGuard(
            device=self.accelerator.device,
            num_processes=self.accelerator.num_processes,
            skip_limit=recipe.skip_nonfinite,
            check_gradients=self.accelerator.scaler is None,  # fp16's scaler skips overflowing steps itself
        )
        self._parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        self._signals: StopSignals | None = None
        self._stop_agreed = False
        self._where = ""  # the epoch and batch of the step in progress, for messages
        self.last_step_applied = True
        self._epoch_sums: tuple[torch.Tensor, torch.Tensor] | None = None
        self._resumed_rng: dict | None = None
        self.last_saved = "none (no checkpoint was written yet)"
        self.resumed = plan.resumes
        self.applied_changes: list[str] = []
        if plan.resumes:
            if checkpoint is None:
                checkpoint = load_run_checkpoint(plan.checkpoint)
            self._restore(checkpoint, plan.checkpoint)
        keep_rows = checkpoint["metrics_rows"] if plan.resumes else None
        self.metrics = MetricsWriter(self.run_dir, tensorboard=tensorboard, keep_rows=keep_rows) if self.is_main else None

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def log(self, line: str) -> None:
        """A line for the user (main process only), also kept in ``log.txt``."""
        if not self.is_main:
            return
        self._echo(line)
        if self._log_file is not None:
            self._log_file.write(line + "\n")
            self._log_file.flush()

    def _on_main(self, decide: Callable[[], Any]) -> Any:
        """Run ``decide`` on the main process and hand every process its result, or its error."""
        box: list[Any] = [None]
        if self.is_main:
            try:
                box[0] = ("result", decide())
            except DistillError as error:
                box[0] = ("error", error)
        if self.accelerator.num_processes > 1:
            broadcast_object_list(box, from_process=0)
        kind, value = box[0]
        if kind == "error":
            raise value
        return value

    def _plan(self, run_dir: str | Path | None, force: bool) -> tuple[RunDirPlan, dict | None]:
        """Decide (on the main process) whether this is a new run, a restart in place or a resume; check a resume.

        Returns the plan and, on the main process of a resume, the checkpoint it read.
        """
        read: dict[str, Any] = {}

        def decide() -> tuple[RunDirPlan, list[str]]:
            if run_dir is None:
                return RunDirPlan(new_run_dir(self.recipe.output_dir, self.recipe.name), auto_named=True), []
            path = Path(run_dir)
            if path.is_dir():
                self._lock_run_dir(path)  # before reading it: another process may be writing it
            plan = plan_run_dir(path, extend_finished=force)
            changed: list[str] = []
            if plan.resumes or plan.restart:
                for difference in check_same_recipe(plan.path, recorded_form(self.recipe), force=force):
                    self._forced.append(f"recipe {difference}")
            if plan.resumes:
                checkpoint = load_run_checkpoint(plan.checkpoint)
                if checkpoint.get("format") != CHECKPOINT_FORMAT:
                    raise ResumeError(
                        f"{plan.checkpoint} was written by an older distill (format {checkpoint.get('format')!r}) "
                        f"and holds no resume state; start a new run (another --run-dir)"
                    )
                note = check_same_teacher(plan.path, checkpoint.get("teacher_sha256"), self.teacher_sha256, force=force)
                if note:
                    self._forced.append(note)
                recorded = len(checkpoint["processes"])
                if recorded != self.accelerator.num_processes:
                    message = (
                        f"{plan.checkpoint} was written by {recorded} process(es), this run has "
                        f"{self.accelerator.num_processes}: the data order and random streams cannot continue exactly"
                    )
                    if not force:
                        raise ResumeError(f"{message}. Resume with {recorded} process(es), or pass --force.")
                    self._forced.append(message + " (the epoch in progress restarts from its first batch)")
                changed = differing_keys(checkpoint.get("recipe") or {}, recipe_to_dict(self.recipe))
                self._check_applicable(plan, checkpoint, changed)
                read["checkpoint"] = checkpoint
            return plan, changed

        self._forced: list[str] = []
        plan, self._changed_keys = self._on_main(decide)
        return plan, read.get("checkpoint")

    def _check_applicable(self, plan: RunDirPlan, checkpoint: dict[str, Any], changed: list[str]) -> None:
        """Refuse, by name, a forced change that a run in progress cannot take (even with ``--force``)."""
        for key in changed:
            if key in UNAPPLICABLE_KEYS:
                raise ResumeError(
                    f"{key} cannot change when resuming {plan.path}: {UNAPPLICABLE_KEYS[key]}. "
                    f"Start a new run (another --run-dir) with the new value."
                )
        if "data.batch_size" in changed and checkpoint["batch"] > 0:
            raise ResumeError(
                f"data.batch_size cannot change in the middle of an epoch ({plan.checkpoint} was written after "
                f"batch {checkpoint['batch']} of epoch {checkpoint['epoch'] + 1}): the position in the data order "
                f"would mean other images. Resume with the run's batch size."
            )
        epochs = self.recipe.schedule.epochs
        if epochs < checkpoint["epoch"] or (epochs == checkpoint["epoch"] and checkpoint["batch"] > 0):
            raise ResumeError(
                f"schedule.epochs={epochs}, but {plan.path} has already trained {checkpoint['epoch']} epochs; "
                f"give at least {checkpoint['epoch'] + 1}"
            )
        if plan.extends and epochs == checkpoint["epoch"]:
            raise ResumeError(
                f"run directory {plan.path} finished its {epochs} epochs: there is nothing to resume. To train it "
                f"longer: distill train --resume {plan.path} schedule.epochs=N --force, with N > {epochs}"
            )

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _lock_run_dir(self, path: Path) -> None:
        """Hold the run directory's lock (main process) for as long as this trainer lives."""
        if self._lock is None:
            lock = RunDirLock(path)
            lock.acquire()
            self._lock = lock

    def _open_run_dir(self, plan: RunDirPlan) -> Path:
        """Create (new run), clear (restart in place) or keep (resume) the run directory."""

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
                self._lock_run_dir(path)
            write_outcome(path, "running")
            return str(path)

        return Path(self._on_main(prepare))

    def _build(self) -> None:
        recipe, accelerator = self.recipe, self.accelerator
        device = accelerator.device
        with accelerator.main_process_first():
            train_set, test_set = build_datasets(recipe.data)
        num_classes = train_set.num_classes
        teacher = None
        if recipe.teacher is not None:
            teacher_net = build_network("teacher", recipe.teacher, num_classes)
            teacher = FrozenTeacher(teacher_net, device, channels_last=recipe.channels_last)
        student = build_network("student", recipe.student, num_classes)
        if recipe.channels_last:
            student.to(memory_format=torch.channels_last)
        student_shapes = probe_model(student, train_set.input_shape, arch=recipe.student.arch, role="student")
        teacher_shapes = (
            probe_model(teacher.module, train_set.input_shape, arch=recipe.teacher.arch, role="teacher") if teacher else None
        )
        if recipe.compile:
            compile_networks(student, teacher.module if teacher else None, recipe.compile_backend)
        context = LossContext(
            student=student_shapes,
            teacher=teacher_shapes,
            num_classes=num_classes,
            dataset_size=len(train_set),
            labels=train_set.labels,
            student_arch=recipe.student.arch,
            teacher_arch=recipe.teacher.arch if recipe.teacher else None,
            batch_size=recipe.data.batch_size,
        )
        losses = {}
        for name, spec in recipe.losses.items():
            try:
                losses[name] = build_loss(spec.type, context, spec.params)
            except DistillError:
                raise
            except ValueError as error:
                raise RecipeError(f"losses.{name}: cannot build loss {spec.type!r}: {error}") from None
            except Exception as error:
                raise LossError(
                    f"losses.{name}: building loss {spec.type!r} failed: {type(error).__name__}: {error}. "
                    f"If it is your plugin, fix it; run with 'distill --debug' for the traceback"
                ) from error
        distiller = Distiller(
            student, losses, {n: s.weight for n, s in recipe.losses.items()}, teacher, channels_last=recipe.channels_last
        )
        optimizer = build_optimizer(recipe.optimizer, distiller.trainable_parameters())
        self.scheduler = build_scheduler(recipe.schedule, optimizer)
        data = build_loaders(
            recipe.data,
            train_set,
            test_set,
            device=device,
            process_index=accelerator.process_index,
            num_processes=accelerator.num_processes,
            seed=recipe.seed,
            channels_last=recipe.channels_last,
            views=build_views(recipe.data.views, train_set.input_shape[-1], recipe.seed),
        )
        self.distiller, self.optimizer = accelerator.prepare(distiller, optimizer)
        self.train_loader = data.train_loader  # shards itself and yields batches on the device
        self.test_loader = data.test_loader if data.on_device else accelerator.prepare(data.test_loader)
        self.data_path = data.description
        self.teacher = teacher
        self.num_classes = num_classes
        self.train_size, self.test_size = len(train_set), len(test_set)

    def setup_report(self) -> list[str]:
        """What a start found, for ``distill train --dry-run``: every check a real start runs, short of training."""
        recipe, distiller = self.recipe, self.unwrapped
        plan: RunDirPlan = self.plan
        if plan.resumes:
            where = f"{plan.path}: {'extends the finished run' if plan.extends else 'resumes'} from {plan.checkpoint}"
        elif plan.restart:
            where = f"{plan.path}: starts over in place (no checkpoint yet)"
        else:
            where = f"{plan.path}: a new run" + (" (time-stamped when it starts)" if plan.auto_named else "")
        lines = [f"run directory   {where}"]
        if self._forced:
            lines.append(f"forced          {'; '.join(self._forced)}")
        if recipe.teacher is not None:
            lines.append(
                f"teacher         {recipe.teacher.arch} from {recipe.teacher.checkpoint} (sha256 {self.teacher_sha256}), "
                f"loaded strictly"
            )
        lines.append(
            f"data            {recipe.data.dataset} at {recipe.data.root}: {self.train_size} train / {self.test_size} "
            f"test images, {self.num_classes} classes, md5 {'verified' if recipe.data.verify else 'not checked (data.verify=false)'}"
        )
        lines.append(f"data path       {self.data_path}")
        for name, loss in distiller.losses.items():
            trainable = sum(p.numel() for p in loss.parameters() if p.requires_grad)
            buffers = sum(b.numel() * b.element_size() for b in loss.buffers())
            summary = f" | {loss.summary()}" if loss.summary() else ""
            lines.append(
                f"loss {name:<10} {recipe.losses[name].type} × {recipe.losses[name].weight:g}: built on the real feature "
                f"shapes; {trainable:,} trainable parameters, {buffers / 2**20:.1f} MiB of buffers{summary}"
            )
        student = sum(p.numel() for p in distiller.student.parameters())
        teacher = sum(p.numel() for p in self.teacher.module.parameters()) if self.teacher is not None else 0
        lines.append(f"parameters      student {recipe.student.arch}: {student:,}" + (f"; teacher: {teacher:,}" if teacher else ""))
        lines.append(f"memory          {static_memory(self) / 2**20:,.0f} MiB on {self.accelerator.device} before activations "
                     f"(weights, gradients, optimiser state, buffers, device-resident data)")
        lines.append(f"device          {self.accelerator.device} × {self.accelerator.num_processes} process(es) | {self.speed_settings()}")
        return lines

    @property
    def unwrapped(self) -> Distiller:
        return self.accelerator.unwrap_model(self.distiller)

    def _write_run_info(self) -> None:
        """``recipe.yaml`` and ``run.json`` for a new run; a resume appends itself to ``run.json``."""
        if not self.is_main:
            return
        info_path = self.run_dir / RUN_INFO_FILE
        if self.resumed:
            info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
            info.setdefault("resumes", []).append(
                {
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "command": sys.argv,
                    "from_epoch": self.state.epoch,
                    "from_batch": self.state.batch,
                    "from_step": self.state.step,
                    "forced": self._forced,
                }
            )
            if self._forced:
                (self.run_dir / RECIPE_FILE).write_text(recipe_to_yaml(self.recipe), encoding="utf-8")
            info_path.write_text(json.dumps(info, indent=2), encoding="utf-8")
            return
        (self.run_dir / RECIPE_FILE).write_text(recipe_to_yaml(self.recipe), encoding="utf-8")
        info = {
            "distill": distill.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "command": sys.argv,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seed": self.recipe.seed,
            "data_seed": self.recipe.seed,
            "data_order": "a permutation per epoch, a pure function of (data_seed, epoch)",
            "deterministic": self.recipe.deterministic,
            "device": str(self.accelerator.device),
            "num_processes": self.accelerator.num_processes,
            "mixed_precision": self.accelerator.mixed_precision,
            "speed": self.speed_settings(),
            "data_path": self.data_path,
            "train_size": self.train_size,
            "test_size": self.test_size,
            "num_classes": self.num_classes,
            "teacher_sha256": self.teacher_sha256,
        }
        info_path.write_text(json.dumps(info, indent=2), encoding="utf-8")

    def _process_state(self) -> dict[str, Any]:
        """What differs per process and decides its future: random generators, the epoch's running loss sums."""
        sums = None
        if self._epoch_sums is not None and self.state.batch > 0:
            sums = tuple(t.detach().cpu() for t in self._epoch_sums)
        return {
            "rng": capture_rng_state(),
            "losses": {name: loss.process_state() for name, loss in self.unwrapped.losses.items()},
            "epoch_sums": sums,
        }

    def checkpoint_payload(self, processes: list[dict[str, Any]]) -> dict:
        """Everything that decides the rest of the run; ``processes``: each process's :meth:`_process_state`."""
        distiller = self.unwrapped
        scaler = self.accelerator.scaler
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.state.epoch,
            "batch": self.state.batch,
            "step": self.state.step,
            "arch": self.recipe.student.arch,
            "num_classes": self.num_classes,
            "model": distiller.student.state_dict(),
            "losses": distiller.losses.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "top1": self.state.top1,
            "top5": self.state.top5,
            "best_top1": self.state.best_top1,
            "best_epoch": self.state.best_epoch,
            "skipped_steps": self.guard.skipped,
            "metrics_rows": self.metrics.rows if self.metrics else 0,
            "teacher_sha256": self.teacher_sha256,
            "recipe": recipe_to_dict(self.recipe),
            "processes": processes,
        }

    def _restore(self, checkpoint: dict[str, Any], path: Path) -> None:
        """Load a checkpoint's state into the freshly built run (on every process)."""
        distiller = self.unwrapped
        try:
            distiller.student.load_state_dict(checkpoint["model"])
            distiller.losses.load_state_dict(checkpoint["losses"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise ResumeError(
                f"{path} does not fit the model, losses or optimiser this recipe builds ({error}); "
                f"resume with the run's own recipe ('distill train --resume {self.run_dir}')"
            ) from None
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.applied_changes = apply_hyperparameters(
            self.optimizer, self.scheduler, self.recipe.optimizer, self.recipe.schedule, set(self._changed_keys)
        )
        if self.accelerator.scaler is not None and checkpoint.get("scaler"):
            self.accelerator.scaler.load_state_dict(checkpoint["scaler"])
        state = self.state
        state.epoch, state.batch, state.step = checkpoint["epoch"], checkpoint["batch"], checkpoint["step"]
        state.best_top1, state.best_epoch = checkpoint["best_top1"], checkpoint["best_epoch"]
        state.top1, state.top5 = checkpoint["top1"], checkpoint["top5"]
        self.guard.skipped = checkpoint.get("skipped_steps", 0)
        processes = checkpoint["processes"]
        if len(processes) == self.accelerator.num_processes:
            mine = processes[self.accelerator.process_index]
            self._resumed_rng = mine["rng"]
            for name, loss in distiller.losses.items():
                loss.load_process_state(mine["losses"].get(name, {}))
            if mine["epoch_sums"] is not None:
                device = self.accelerator.device
                self._epoch_sums = tuple(t.to(device) for t in mine["epoch_sums"])  # type: ignore[assignment]
        else:  # forced across a different number of processes: restart the epoch in progress
            state.batch = 0
        self.last_saved = f"{path} (epoch {state.epoch}, step {state.step})"

    def save_checkpoint(self, *, best: bool = False) -> None:
        """Write ``last`` (and ``best``) at the current position, after making sure no bad step precedes it.

        Every process takes part (each contributes its own random states).
        """
        self._handle(self.guard.flush())
        processes = [self._process_state()]
        if self.accelerator.num_processes > 1:
            processes = gather_object(processes)
        if self.is_main:
            payload = self.checkpoint_payload(processes)
            atomic_save(payload, self.run_dir / LAST_CHECKPOINT)
            if best:
                atomic_save(payload, self.run_dir / BEST_CHECKPOINT)
        self.accelerator.wait_for_everyone()
        self.last_saved = f"{self.run_dir / LAST_CHECKPOINT} (epoch {self.state.epoch}, step {self.state.step})"

    def _handle(self, verdict: StepVerdict | None) -> None:
        """Stop on a non-finite step; note an agreed stop request."""
        if verdict is None:
            return
        if verdict.problem is not None:
            raise NonFiniteError(
                f"training stopped at step {verdict.step} ({verdict.where}): {verdict.problem}. "
                f"Nothing from this step on was saved; the last good checkpoint is {self.last_saved}. "
                f"What to do: lower optimizer.lr or the loss weights, then resume from that checkpoint "
                f"('distill train --resume {self.run_dir} optimizer.lr=... --force'), or set skip_nonfinite: N "
                f"to skip up to N such steps."
            )
        self._stop_agreed = self._stop_agreed or verdict.stop

    def _stop(self, where: str) -> None:
        """Checkpoint at the current position (already done when ``where`` is an epoch end) and stop."""
        signal_name = self._signals.requested if self._signals and self._signals.requested else "a stop request"
        raise TrainingStopped(stopped_message(signal_name, where, self.last_saved, self.run_dir))

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training set; returns the epoch's mean loss terms and throughput.

        A run resumed inside this epoch starts at the batch after its checkpoint,
        with the running sums of the batches before it.
        """
        accelerator, distiller, loader = self.accelerator, self.distiller, self.train_loader
        start = self.state.batch
        loader.set_epoch(epoch)
        if start:
            loader.skip(start)
        for loss in self.unwrapped.losses.values():
            loss.start_epoch(epoch, self.recipe.schedule.epochs)
        distiller.train()
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
        """
        terms, total, _ = self.distiller(inputs, labels, indices)
        if self.state.step == 0:
            self._check_first_terms(terms)
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(total)
        step = self.state.step + 1
        where = self._where or f"step {step}"
        stop_requested = self._signals is not None and self._signals.requested is not None
        flags = self.guard.flags(total, self._parameters, stop_requested)
        self.state.step = step
        if self.guard.synchronous:
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
        else:
            self.optimizer.step()
            self._handle(self.guard.defer(step, flags, terms, where))
        self.last_step_applied = True
        return terms, total

    def _check_first_terms(self, terms: dict[str, torch.Tensor]) -> None:
        """On the very first batch, every loss must give a finite scalar (catches broken plugins early)."""
        for name, value in terms.items():
            loss_type = self.recipe.losses[name].type
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise DistillError(
                    f"losses.{name} (type {loss_type!r}) returned {shape} on the first batch; "
                    f"a loss must return a scalar tensor (reduce it, e.g. with .mean())"
                )
            if not torch.isfinite(value.detach()).all():
                raise DistillError(
                    f"losses.{name} (type {loss_type!r}) returned {value.item()} on the first batch; "
                    f"check its inputs and parameters"
                )

    def speed_settings(self) -> str:
        """Precision, memory format and compilation as they take effect (fp16 is a no-op on CPU)."""
        recipe = self.recipe
        precision = recipe.precision
        if precision == "fp16" and self.accelerator.device.type == "cpu":
            precision = "fp32 (precision fp16 has no effect on CPU; bf16 does)"
        parts = [f"precision {precision}"]
        if recipe.channels_last:
            parts.append("channels_last")
        if recipe.compile:
            parts.append(f"compiled ({recipe.compile_backend})")
        return ", ".join(parts)

    def fit(self) -> TrainResult:
        """Train to the recipe's last epoch (from where a resumed run stopped); returns last- and best-epoch accuracy.

        SIGTERM/SIGINT stop the run after a checkpoint (:class:`TrainingStopped`).
        """
        try:
            with StopSignals() as signals:
                self._signals = signals
                result = self._fit()
        except BaseException as error:
            self._record_end(error)
            raise
        finally:
            self._signals = None
            self._close()
        return result

    def _record_end(self, error: BaseException | None) -> None:
        """Say how the run ended, in ``log.txt`` and ``outcome.json`` (main process; best effort on a full disk)."""
        if not self.is_main:
            return
        if error is None:
            status, message = "finished", ""
        elif isinstance(error, TrainingStopped):
            status, message = "stopped", str(error)
        elif isinstance(error, NonFiniteError):
            status, message = "nonfinite", str(error)
        elif isinstance(error, DistillError):
            status, message = "failed", str(error)
        else:
            status, message = "failed", f"{type(error).__name__}: {error}".rstrip(": ")
        try:
            if self._log_file is not None:
                self._log_file.write(f"run ended: {status}" + (f": {message}" if message else "") + "\n")
                self._log_file.flush()
            write_outcome(self.run_dir, status, message)
        except OSError:
            pass

    def _fit(self) -> TrainResult:
        recipe = self.recipe
        self._write_run_info()
        self._log_start()
        if self.resumed:
            self.run_init_stages(train=False)
        else:
            if self.teacher is not None:
                teacher_accuracy = evaluate(self.teacher.module, self.test_loader, self.accelerator)
                self.log(f"teacher top-1 {teacher_accuracy.top1:.2f}  top-5 {teacher_accuracy.top5:.2f}")
                if self.metrics:
                    row = {"epoch": 0, "step": 0, "teacher/top1": teacher_accuracy.top1, "teacher/top5": teacher_accuracy.top5}
                    self.metrics.write(row, 0)
            self.run_init_stages()
        if self._resumed_rng is not None:
            restore_rng_state(self._resumed_rng)
            self._resumed_rng = None
        started = time.perf_counter()
        for epoch in range(self.state.epoch + 1, recipe.schedule.epochs + 1):
            group = self.optimizer.param_groups[0]
            hyperparameters = {key: group[key] for key in ("lr", "momentum", "weight_decay") if key in group}
            record = self.train_epoch(epoch)
            self.scheduler.step()
            accuracy = evaluate(self.unwrapped.student, self.test_loader, self.accelerator)
            self.state.epoch, self.state.batch = epoch, 0
            self.state.top1, self.state.top5 = accuracy.top1, accuracy.top5
            improved = accuracy.top1 > self.state.best_top1
            if improved:
                self.state.best_top1, self.state.best_epoch = accuracy.top1, epoch
            row = {"epoch": epoch, "step": self.state.step, **hyperparameters, **record,
                   "test/top1": accuracy.top1, "test/top5": accuracy.top5}
            self._end_epoch(row, accuracy, improved)
            if self._stop_agreed or (self._signals is not None and self._signals.requested):
                if epoch < recipe.schedule.epochs:
                    self._stop(f"at the end of epoch {epoch}")
        seconds = time.perf_counter() - started
        result = TrainResult(
            run_dir=self.run_dir,
            final_top1=self.state.top1,
            final_top5=self.state.top5,
            best_top1=self.state.best_top1,
            best_epoch=self.state.best_epoch,
            epochs=self.state.epoch,
            seconds=seconds,
        )
        self._finish(result)
        return result

    def _log_start(self) -> None:
        recipe = self.recipe
        self.log(f"run directory: {self.run_dir}")
        if self.resumed:
            self.log(
                f"resuming from {self.last_saved}: epoch {self.state.epoch + 1}, batch {self.state.batch + 1}"
                + (f" | forced: {'; '.join(self._forced)}" if self._forced else "")
            )
            if self.applied_changes:
                self.log(f"applied from step {self.state.step + 1}: {'; '.join(self.applied_changes)}")
        self.log(
            f"student {recipe.student.arch}"
            + (f" ← teacher {recipe.teacher.arch}" if recipe.teacher else " (no teacher)")
            + f" | losses: {', '.join(f'{s.weight:g}·{n}' for n, s in recipe.losses.items())}"
            + f" | {self.train_size} train / {self.test_size} test images | device {self.accelerator.device}"
            + f" × {self.accelerator.num_processes} process(es)"
        )
        self.log(f"data: {self.data_path} | {self.speed_settings()}")
        if self.accelerator.device.type == "cpu":
            self.log(cpu_threads_description())
        for name, loss in self.unwrapped.losses.items():
            if loss.summary():
                self.log(f"loss {name}: {loss.summary()}")

    def run_init_stages(self, train: bool = True) -> None:
        """Train what each loss declares in its init stage, before the main epochs.

        A resumed run passed the init stages before its checkpoint (which holds what
        they trained): ``train=False`` only freezes what they froze.
        """
        for name, loss in self.unwrapped.losses.items():
            stage = loss.init_stage()
            if stage is None:
                continue
            if train:
                self.run_init_stage(name, stage)
            if stage.freeze_after:
                for module in stage.modules:
                    module.eval()
                    module.requires_grad_(False)

    def run_init_stage(self, name: str, stage: InitStage) -> None:
        """The reference's init stage: a fresh SGD at a constant lr, everything else in eval mode.

        Gradients are averaged across processes by hand: the stage runs the
        unwrapped modules, outside DDP's synchronisation.
        """
        recipe, accelerator, distiller = self.recipe, self.accelerator, self.unwrapped
        epochs = recipe.init.epochs if recipe.init.epochs is not None else stage.epochs
        lr = recipe.init.lr or stage.lr or recipe.optimizer.lr
        modules = [*stage.modules, *(distiller.student.feature_modules() if stage.train_student_features else [])]
        parameters = list({id(p): p for m in modules for p in m.parameters() if p.requires_grad}.values())
        optimizer = torch.optim.SGD(
            parameters, lr=lr, momentum=recipe.optimizer.momentum, weight_decay=recipe.optimizer.weight_decay
        )
        optimizer = accelerator.prepare_optimizer(optimizer)  # fp16: the grad scaler unscales before the step
        self.log(f"init stage of {name}: {epochs} epochs at lr {lr:g}, {sum(p.numel() for p in parameters):,} parameters")
        for epoch in range(1, epochs + 1):
            self.train_loader.set_epoch(INIT_DATA_SEED_OFFSET + epoch)
            distiller.eval()
            for module in modules:
                module.train()
            total = torch.zeros((), dtype=torch.float64, device=accelerator.device)
            seen = 0
            progress = Progress(len(self.train_loader), f"init {name} {epoch}/{epochs}", enabled=self.is_main)
            for inputs, labels, indices in self.train_loader:
                student_inputs, teacher_inputs = split_views(inputs)
                with accelerator.autocast():
                    student = distiller.student(student_inputs, features=True)
                    teacher = distiller.teacher(teacher_inputs) if distiller.teacher is not None else None
                batch = Batch(inputs=student_inputs, labels=labels, indices=indices)
                value = in_full_precision({name: stage.loss}, student, teacher, batch)[name]
                optimizer.zero_grad(set_to_none=True)
                accelerator.backward(value)
                for parameter in parameters:
                    if parameter.grad is not None:
                        parameter.grad.copy_(accelerator.reduce(parameter.grad, reduction="mean"))
                optimizer.step()
                total += value.detach().double() * labels.shape[0]
                seen += labels.shape[0]
                progress.update(1)
                if self._signals is not None and self._signals.requested:
                    progress.close()
                    raise TrainingStopped(
                        f"stopped by {self._signals.requested} during the init stage of {name}, which is not "
                        f"checkpointed; the same command starts the run over"
                    )
            progress.close()
            mean = (accelerator.reduce(total, reduction="sum") / (seen * accelerator.num_processes)).item()
            if not math.isfinite(mean):
                raise NonFiniteError(
                    f"the init stage of {name} diverged: its loss became {mean} in init epoch {epoch}; no checkpoint "
                    f"was written ({self.run_dir} records the failure). Lower init.lr (now {lr:g}) or check the "
                    f"loss's inputs, then train again (with --run-dir {self.run_dir} it starts over in place)."
                )
            self.log(f"init {name} epoch {epoch}/{epochs} | loss {mean:.4f}")
            if self.metrics:
                self.metrics.write({"stage": "init", "init/epoch": epoch, f"init/loss/{name}": mean}, epoch)

    def _end_epoch(self, row: dict, accuracy: Accuracy, improved: bool) -> None:
        self.accelerator.wait_for_everyone()
        if self.metrics:
            self.metrics.write(row, self.state.step)
        self.save_checkpoint(best=improved)
        terms = " ".join(
            f"{key.removeprefix('train/loss/')} {value:.4f}" for key, value in row.items() if key.startswith("train/loss/")
        )
        self.log(
            f"epoch {row['epoch']}/{self.recipe.schedule.epochs} lr {row['lr']:.3g} | loss {terms} | "
            f"test top-1 {accuracy.top1:.2f} top-5 {accuracy.top5:.2f} | "
            f"{row['train/images_per_s']:.0f} img/s, {row['time/epoch_s']:.1f} s"
        )

    def _finish(self, result: TrainResult) -> None:
        self.accelerator.wait_for_everyone()
        protocol = f"last epoch of {result.epochs}, one run, seed {self.recipe.seed}"
        if self.is_main:
            summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()}
            summary["final_top1_note"] = f"test top-1 of the {protocol} (the protocol of the CRD paper's tables)"
            summary["best_top1_note"] = "best epoch, selected on the test set: for information, do not report"
            (self.run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2), encoding="utf-8")
        self.log(
            f"done in {result.seconds / 60:.1f} min | final top-1 {result.final_top1:.2f} [{protocol}] | "
            f"best top-1 {result.best_top1:.2f} at epoch {result.best_epoch} [selected on the test set: not a result] "
            f"| {result.run_dir}"
        )
        self._record_end(None)

    def _close(self) -> None:
        """Close the metrics sinks and the log (whatever way the run ended)."""
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self._release_lock()


def train(recipe: Recipe | ResolvedRecipe, run_dir: str | Path | None = None, **kwargs) -> TrainResult:
    """Resolve ``recipe``'s files, build a :class:`Trainer` and run it to the end (resuming ``run_dir`` if it holds a run)."""
    return Trainer(resolve_recipe(recipe), run_dir, **kwargs).fit()
