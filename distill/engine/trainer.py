"""The training loop: a recipe in, a run directory with a distilled student out.

One :class:`Trainer` serves every setting (CPU, one GPU, several processes)
through Hugging Face Accelerate. A training step follows one path:

    batch → Distiller.forward (student features, frozen-teacher features,
    every loss term) → weighted total → backward → optimiser step.

Each epoch ends with test accuracy, a ``metrics.jsonl`` row (mirrored to
TensorBoard) and the ``last`` (and, when it improves, ``best``) checkpoint.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration, broadcast_object_list

import distill
from distill.engine.checkpoint import CHECKPOINT_FORMAT, atomic_save
from distill.engine.distiller import Distiller, in_full_precision
from distill.engine.evaluate import Accuracy, evaluate
from distill.engine.loaders import build_datasets, build_loaders
from distill.engine.metrics import MetricsWriter
from distill.engine.optim import build_optimizer, build_scheduler
from distill.engine.progress import Progress
from distill.engine.rundir import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    LOG_FILE,
    RECIPE_FILE,
    RUN_INFO_FILE,
    SUMMARY_FILE,
    claim_run_dir,
    new_run_dir,
)
from distill.engine.seeding import seed_everything
from distill.engine.teacher import FrozenTeacher
from distill.errors import DistillError, RecipeError
from distill.losses import Batch, InitStage, LossContext, build_loss
from distill.models import create_model, probe_feature_shapes
from distill.recipe import Recipe, recipe_to_dict, recipe_to_yaml
from distill.recipe.load import resolve_teacher_checkpoint

MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
INIT_DATA_SEED_OFFSET = 1_000_000
"""Init-stage epochs shuffle with data_seed + this + epoch, apart from the main epochs' orders."""


@dataclass
class TrainState:
    """Counters that describe how far a run has come."""

    epoch: int = 0
    step: int = 0
    best_top1: float = -math.inf
    best_epoch: int = 0


@dataclass(frozen=True)
class TrainResult:
    """The outcome of a finished run.

    ``final_top1`` is the last epoch's test accuracy: the number the CRD paper
    reports. ``best_top1`` is selected on the test set and is shown for
    information only.
    """

    run_dir: Path
    final_top1: float
    final_top5: float
    best_top1: float
    best_epoch: int
    epochs: int
    seconds: float


def has_accelerator_device() -> bool:
    """Whether torch sees a GPU (or another accelerator) to train on."""
    if hasattr(torch, "accelerator"):
        return torch.accelerator.is_available()
    return torch.cuda.is_available()


def make_accelerator(recipe: Recipe) -> Accelerator:
    """An Accelerator for the recipe's precision, with a seeded, epoch-aware data order.

    Without a GPU, ``cpu=True`` lets Accelerate recognise several processes
    started by ``torchrun`` as one CPU job on the gloo backend.

    Accelerate keeps its settings in a process-wide singleton that refuses a second
    precision; a sweep (or a test) runs recipes of different precisions one after
    another in one process, so the precision part of that state is cleared first
    (the process group, in ``PartialState``, is kept).
    """
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != MIXED_PRECISION[recipe.precision]:
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(
        cpu=not has_accelerator_device(),
        mixed_precision=MIXED_PRECISION[recipe.precision],
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=recipe.seed, non_blocking=True),
    )


def compile_networks(student: torch.nn.Module, teacher: torch.nn.Module | None, backend: str) -> None:
    """``torch.compile`` the student and the teacher in place (``recipe.compile``).

    ``Module.compile`` rather than ``torch.compile(module)``: the module stays the
    same object with the same state_dict keys (no ``_orig_mod.`` prefix), so
    checkpoints, DDP wrapping and the loss modules see no difference. Compilation
    happens lazily, on the first batch, for each ``features=`` variant used.
    """
    student.compile(backend=backend)
    if teacher is not None:
        teacher.compile(backend=backend)


class Trainer:
    """Builds everything a recipe describes, then trains and evaluates epoch by epoch."""

    def __init__(
        self,
        recipe: Recipe,
        run_dir: str | Path | None = None,
        *,
        tensorboard: bool = True,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.recipe = recipe
        self.accelerator = make_accelerator(recipe)
        self._echo = echo or (lambda line: print(line, flush=True))
        seed_everything(recipe.seed, recipe.deterministic)
        self._check_files()
        self.run_dir = self._make_run_dir(run_dir)
        self._log_file = (self.run_dir / LOG_FILE).open("a", encoding="utf-8") if self.is_main else None
        self._build()
        self.metrics = MetricsWriter(self.run_dir, tensorboard=tensorboard) if self.is_main else None
        self.state = TrainState()

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

    def _check_files(self) -> None:
        """Fail before any work when a checkpoint the recipe names is missing.

        A teacher named through the manifest gets its checkpoint path filled in here, so
        the run directory's ``recipe.yaml`` records the file that was actually used.
        """
        teacher = self.recipe.teacher
        if teacher is not None:
            teacher.checkpoint = resolve_teacher_checkpoint(teacher)
        for role, spec in (("student", self.recipe.student), ("teacher", teacher)):
            if spec is not None and spec.checkpoint is not None and not Path(spec.checkpoint).is_file():
                hint = (
                    " Fetch a published teacher ('distill teachers fetch <name>', then use teacher.name=<name>) "
                    "or train one with 'distill train recipes/cifar100/teachers/<arch>.yaml'."
                    if role == "teacher"
                    else ""
                )
                raise DistillError(f"{role}.checkpoint: file {spec.checkpoint} does not exist.{hint}")

    def _make_run_dir(self, run_dir: str | Path | None) -> Path:
        chosen = [None]
        if self.is_main:
            path = Path(run_dir) if run_dir is not None else new_run_dir(self.recipe.output_dir, self.recipe.name)
            chosen[0] = str(claim_run_dir(path))
        if self.accelerator.num_processes > 1:
            broadcast_object_list(chosen, from_process=0)
        return Path(chosen[0])

    def _build(self) -> None:
        recipe, accelerator = self.recipe, self.accelerator
        device = accelerator.device
        with accelerator.main_process_first():
            train_set, test_set = build_datasets(recipe.data)
        num_classes = train_set.num_classes
        teacher = None
        if recipe.teacher is not None:
            teacher_net = create_model(recipe.teacher.arch, num_classes, recipe.teacher.checkpoint, **recipe.teacher.options)
            teacher = FrozenTeacher(teacher_net, device, channels_last=recipe.channels_last)
        student = create_model(recipe.student.arch, num_classes, recipe.student.checkpoint, **recipe.student.options)
        if recipe.channels_last:
            student.to(memory_format=torch.channels_last)
        student_shapes = probe_feature_shapes(student, train_set.input_shape)
        teacher_shapes = probe_feature_shapes(teacher.module, train_set.input_shape) if teacher else None
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
            except ValueError as error:
                raise RecipeError(f"losses.{name}: cannot build loss {spec.type!r}: {error}") from None
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
        )
        if data.on_device:  # batches are made on the device and sharded by the loader itself
            self.distiller, self.optimizer = accelerator.prepare(distiller, optimizer)
            self.train_loader, self.test_loader = data.train_loader, data.test_loader
        else:
            self.distiller, self.optimizer, self.train_loader, self.test_loader = accelerator.prepare(
                distiller, optimizer, data.train_loader, data.test_loader
            )
        self.data_path = data.description
        self.teacher = teacher
        self.num_classes = num_classes
        self.train_size, self.test_size = len(train_set), len(test_set)

    @property
    def unwrapped(self) -> Distiller:
        return self.accelerator.unwrap_model(self.distiller)

    def _write_run_info(self) -> None:
        if not self.is_main:
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
        }
        (self.run_dir / RUN_INFO_FILE).write_text(json.dumps(info, indent=2), encoding="utf-8")

    def checkpoint_payload(self, accuracy: Accuracy) -> dict:
        distiller = self.unwrapped
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.state.epoch,
            "step": self.state.step,
            "arch": self.recipe.student.arch,
            "num_classes": self.num_classes,
            "model": distiller.student.state_dict(),
            "losses": distiller.losses.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "top1": accuracy.top1,
            "top5": accuracy.top5,
            "best_top1": self.state.best_top1,
            "best_epoch": self.state.best_epoch,
            "recipe": recipe_to_dict(self.recipe),
        }

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training set; returns the epoch's mean loss terms and throughput."""
        accelerator, distiller = self.accelerator, self.distiller
        self.train_loader.set_epoch(epoch)
        for loss in self.unwrapped.losses.values():
            loss.start_epoch(epoch, self.recipe.schedule.epochs)
        distiller.train()
        names = [*self.recipe.losses, "total"]
        sums = torch.zeros(len(names), dtype=torch.float64, device=accelerator.device)
        seen = torch.zeros((), dtype=torch.float64, device=accelerator.device)
        progress = Progress(
            len(self.train_loader), f"epoch {epoch}/{self.recipe.schedule.epochs}", enabled=self.is_main
        )
        log_every, pending = self.recipe.log_every, 0
        started = time.perf_counter()
        for index, (inputs, labels, indices) in enumerate(self.train_loader, start=1):
            terms, total = self.train_step(inputs, labels, indices)
            batch = labels.shape[0]
            sums += torch.stack([*terms.values(), total]).detach().double() * batch
            seen += batch
            pending += 1
            if index % log_every == 0 or index == len(self.train_loader):
                means = (sums / seen).tolist()  # the only host sync: once per log interval
                self._check_finite(names, means, epoch, index)
                rate = seen.item() * accelerator.num_processes / (time.perf_counter() - started)
                progress.update(pending, {"loss": means[-1], "img/s": rate})
                pending = 0
        progress.close()
        elapsed = time.perf_counter() - started
        sums = accelerator.reduce(sums, reduction="sum")
        seen = accelerator.reduce(seen, reduction="sum")
        means = (sums / seen).tolist()
        record = {f"train/loss/{name}": value for name, value in zip(names, means)}
        record["train/images_per_s"] = seen.item() / elapsed
        record["time/epoch_s"] = elapsed
        return record

    def train_step(
        self, inputs: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """One optimisation step on one batch; returns the loss terms and the weighted total (on the device)."""
        terms, total, _ = self.distiller(inputs, labels, indices)
        if self.state.step == 0:
            self._check_first_terms(terms)
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(total)
        self.optimizer.step()
        self.state.step += 1
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

    def _check_finite(self, names: list[str], means: list[float], epoch: int, index: int) -> None:
        bad = [name for name, value in zip(names, means) if not math.isfinite(value)]
        if bad:
            raise DistillError(
                f"training diverged: loss term(s) {', '.join(bad)} became non-finite in epoch {epoch} "
                f"by step {index}; the last good checkpoint is {self.run_dir / LAST_CHECKPOINT} "
                f"(if one was written). Lower the learning rate or check the loss weights."
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
        """Train for the recipe's epochs; returns last- and best-epoch accuracy."""
        recipe = self.recipe
        self._write_run_info()
        self.log(f"run directory: {self.run_dir}")
        self.log(
            f"student {recipe.student.arch}"
            + (f" ← teacher {recipe.teacher.arch}" if recipe.teacher else " (no teacher)")
            + f" | losses: {', '.join(f'{s.weight:g}·{n}' for n, s in recipe.losses.items())}"
            + f" | {self.train_size} train / {self.test_size} test images | device {self.accelerator.device}"
            + f" × {self.accelerator.num_processes} process(es)"
        )
        self.log(f"data: {self.data_path} | {self.speed_settings()}")
        for name, loss in self.unwrapped.losses.items():
            if loss.summary():
                self.log(f"loss {name}: {loss.summary()}")
        if self.teacher is not None:
            teacher_accuracy = evaluate(self.teacher.module, self.test_loader, self.accelerator)
            self.log(f"teacher top-1 {teacher_accuracy.top1:.2f}  top-5 {teacher_accuracy.top5:.2f}")
            if self.metrics:
                self.metrics.write({"epoch": 0, "teacher/top1": teacher_accuracy.top1, "teacher/top5": teacher_accuracy.top5}, 0)
        self.run_init_stages()
        started = time.perf_counter()
        accuracy = Accuracy(top1=float("nan"), top5=float("nan"), count=0)
        for epoch in range(self.state.epoch + 1, recipe.schedule.epochs + 1):
            lr = self.optimizer.param_groups[0]["lr"]
            record = self.train_epoch(epoch)
            self.scheduler.step()
            accuracy = evaluate(self.unwrapped.student, self.test_loader, self.accelerator)
            self.state.epoch = epoch
            improved = accuracy.top1 > self.state.best_top1
            if improved:
                self.state.best_top1, self.state.best_epoch = accuracy.top1, epoch
            row = {"epoch": epoch, "step": self.state.step, "lr": lr, **record,
                   "test/top1": accuracy.top1, "test/top5": accuracy.top5}
            self._end_epoch(row, accuracy, improved)
        seconds = time.perf_counter() - started
        result = TrainResult(
            run_dir=self.run_dir,
            final_top1=accuracy.top1,
            final_top5=accuracy.top5,
            best_top1=self.state.best_top1,
            best_epoch=self.state.best_epoch,
            epochs=self.state.epoch,
            seconds=seconds,
        )
        self._finish(result)
        return result

    def run_init_stages(self) -> None:
        """Train what each loss declares in its init stage, before the main epochs."""
        for name, loss in self.unwrapped.losses.items():
            stage = loss.init_stage()
            if stage is not None:
                self.run_init_stage(name, stage)

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
                with accelerator.autocast():
                    student = distiller.student(inputs, features=True)
                    teacher = distiller.teacher(inputs) if distiller.teacher is not None else None
                batch = Batch(inputs=inputs, labels=labels, indices=indices)
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
            progress.close()
            mean = (accelerator.reduce(total, reduction="sum") / (seen * accelerator.num_processes)).item()
            self._check_finite([f"init/{name}"], [mean], epoch, len(self.train_loader))
            self.log(f"init {name} epoch {epoch}/{epochs} | loss {mean:.4f}")
            if self.metrics:
                self.metrics.write({"stage": "init", "init/epoch": epoch, f"init/loss/{name}": mean}, epoch)
        if stage.freeze_after:
            for module in stage.modules:
                module.eval()
                module.requires_grad_(False)

    def _end_epoch(self, row: dict, accuracy: Accuracy, improved: bool) -> None:
        self.accelerator.wait_for_everyone()
        if self.is_main:
            self.metrics.write(row, self.state.step)
            payload = self.checkpoint_payload(accuracy)
            atomic_save(payload, self.run_dir / LAST_CHECKPOINT)
            if improved:
                atomic_save(payload, self.run_dir / BEST_CHECKPOINT)
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
        if self.is_main:
            summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()}
            summary["final_top1_note"] = "last-epoch test top-1: the number the CRD paper reports"
            summary["best_top1_note"] = "best epoch, selected on the test set: for information, do not report"
            (self.run_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2), encoding="utf-8")
            self.metrics.close()
        self.log(
            f"done in {result.seconds / 60:.1f} min | final (last-epoch) top-1 {result.final_top1:.2f} "
            f"[the number the CRD paper reports] | best top-1 {result.best_top1:.2f} at epoch "
            f"{result.best_epoch} [selected on the test set] | {result.run_dir}"
        )
        if self._log_file is not None:
            self._log_file.close()


def train(recipe: Recipe, run_dir: str | Path | None = None, **kwargs) -> TrainResult:
    """Build a :class:`Trainer` for ``recipe`` and run it to the end."""
    return Trainer(recipe, run_dir, **kwargs).fit()
