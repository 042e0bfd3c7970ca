"""Everything a recipe describes, built and placed: datasets, networks, losses, distiller, optimiser, loaders.

:func:`build_run` is the one way a run's objects come into being; the trainer, the
speed benchmark (``tools/benchmark.py``) and the tests all call it, so what they
time or check is what trains. Building touches no run directory: bad input (an
unknown option, a checkpoint that does not fit, a loss that cannot take the
network's features) fails here and leaves nothing behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from distill.data.placement import Placement
from distill.data.views import build_views, views_per_step
from distill.engine.accelerator import compile_networks
from distill.engine.distiller import Distiller
from distill.engine.loaders import build_datasets, build_loaders
from distill.engine.optim import build_optimizer, build_scheduler
from distill.engine.step_graph import check_graphable
from distill.engine.teacher import FrozenTeacher
from distill.errors import CheckpointError, DistillError, LossError, RecipeError
from distill.losses import DistillLoss, LossContext, build_loss
from distill.models import create_model
from distill.models.options import ModelOptionError, check_reserved_options
from distill.models.probe import probe_model
from distill.recipe.schema import ModelSpec, Recipe, TeacherSpec


@dataclass
class BuiltRun:
    """A run's objects, placed by Accelerate.

    ``distiller`` and ``optimizer`` are prepared (the distiller DDP-wrapped when
    there are several processes: :attr:`unwrapped` is the plain module). The training
    loader shards itself and yields batches on the device; so does the test loader
    when the data lives on the device, else Accelerate prepared it.
    """

    accelerator: Accelerator
    distiller: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: Any
    test_loader: Any
    teacher: FrozenTeacher | None
    num_classes: int
    train_size: int
    test_size: int
    data_path: str

    @property
    def unwrapped(self) -> Distiller:
        return self.accelerator.unwrap_model(self.distiller)

    @property
    def trained_parameters(self) -> list[torch.Tensor]:
        """Every tensor the optimiser steps (the student's and the losses' trainable ones)."""
        return [p for group in self.optimizer.param_groups for p in group["params"]]


def build_network(role: str, spec: ModelSpec | TeacherSpec, num_classes: int) -> nn.Module:
    """The student's or the teacher's network with its weights; a bad checkpoint or option names the recipe key."""
    try:
        check_reserved_options(spec.options)
        return create_model(spec.arch, num_classes, spec.checkpoint, **spec.options)
    except CheckpointError as error:
        raise CheckpointError(f"{role}.checkpoint: {error}") from None
    except ModelOptionError as error:
        raise error.under(role) from error


def build_losses(recipe: Recipe, context: LossContext) -> dict[str, DistillLoss]:
    """Each of the recipe's loss terms, built on the networks' real feature shapes; errors name ``losses.<term>``."""
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
    return losses


def build_run(recipe: Recipe, accelerator: Accelerator) -> BuiltRun:
    """Build and place everything ``recipe`` describes (its checkpoint files must be resolved already).

    In order: the datasets (the main process first: it may download or check them),
    the frozen teacher and the student, their feature shapes probed on one batch,
    the loss context and the losses, the distiller, the optimiser and scheduler,
    the loaders; then Accelerate prepares the distiller and the optimiser.
    """
    if recipe.cuda_graph:
        check_graphable(device=accelerator.device, num_processes=accelerator.num_processes,
                        precision=recipe.precision, skip_nonfinite=recipe.skip_nonfinite)
    with accelerator.main_process_first():
        train_set, test_set = build_datasets(recipe.data)
    num_classes = train_set.num_classes
    teacher = None
    if recipe.teacher is not None:
        teacher_net = build_network("teacher", recipe.teacher, num_classes)
        teacher = FrozenTeacher(teacher_net, accelerator.device, channels_last=recipe.channels_last)
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
        views=views_per_step(recipe.data.views),
    )
    losses = build_losses(recipe, context)
    weights = {name: spec.weight for name, spec in recipe.losses.items()}
    distiller = Distiller(student, losses, weights, teacher, channels_last=recipe.channels_last)
    optimizer = build_optimizer(recipe.optimizer, distiller.trainable_parameters(), capturable=recipe.cuda_graph)
    scheduler = build_scheduler(recipe.schedule, optimizer)
    placement = Placement(
        device=accelerator.device,
        process_index=accelerator.process_index,
        num_processes=accelerator.num_processes,
        seed=recipe.seed,
        channels_last=recipe.channels_last,
    )
    views = build_views(recipe.data.views, train_set.input_shape[-1], recipe.seed)
    data = build_loaders(recipe.data, train_set, test_set, placement, views=views)
    distiller, optimizer = accelerator.prepare(distiller, optimizer)
    return BuiltRun(
        accelerator=accelerator,
        distiller=distiller,
        optimizer=optimizer,
        scheduler=scheduler,
        train_loader=data.train_loader,
        test_loader=data.test_loader if data.on_device else accelerator.prepare(data.test_loader),
        teacher=teacher,
        num_classes=num_classes,
        train_size=len(train_set),
        test_size=len(test_set),
        data_path=data.description,
    )
