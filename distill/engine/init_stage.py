"""Init stages: what a loss trains before the main epochs (the reference's pre-training of FSP/AB connectors).

A loss declares its stage (:class:`~distill.losses.InitStage`): the modules to
train, the objective, the epochs and learning rate, and whether the modules are
frozen afterwards. The stage runs a fresh SGD at a constant learning rate, with
everything else in eval mode, and computes its objective through
:meth:`Distiller.objectives` — the same forward path as a main step (views,
channels-last, float32 losses).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from accelerate import Accelerator

from distill.engine.build import BuiltRun
from distill.engine.distiller import Distiller
from distill.engine.guard import NonFiniteError
from distill.engine.metrics import MetricsWriter
from distill.engine.progress import Progress
from distill.engine.signals import TrainingStopped
from distill.losses import InitStage
from distill.recipe.schema import Recipe

INIT_DATA_SEED_OFFSET = 1_000_000
"""Init-stage epochs shuffle with data_seed + this + epoch, apart from the main epochs' orders."""


def freeze(stage: InitStage) -> None:
    """Put a finished stage's modules in eval mode without gradients, when the stage says so."""
    if stage.freeze_after:
        for module in stage.modules:
            module.eval()
            module.requires_grad_(False)


def stage_modules(stage: InitStage, distiller: Distiller) -> list[torch.nn.Module]:
    """What a stage trains: its own modules, plus the student's feature layers when it asks for them."""
    return [*stage.modules, *(distiller.student.feature_modules() if stage.train_student_features else [])]


def run_init_stage(
    name: str,
    stage: InitStage,
    built: BuiltRun,
    recipe: Recipe,
    *,
    log: Callable[[str], None],
    metrics: MetricsWriter | None,
    stop_requested: Callable[[], str | None],
    run_dir: object,
) -> None:
    """Train one loss's init stage.

    Gradients are averaged across processes by hand: the stage runs the unwrapped
    modules, outside DDP's synchronisation. A stop request ends the stage with
    :class:`TrainingStopped` (stages are not checkpointed); a non-finite mean loss
    with :class:`NonFiniteError`.
    """
    accelerator: Accelerator = built.accelerator
    distiller = built.unwrapped
    epochs = recipe.init.epochs if recipe.init.epochs is not None else stage.epochs
    lr = recipe.init.lr or stage.lr or recipe.optimizer.lr
    modules = stage_modules(stage, distiller)
    parameters = list({id(p): p for m in modules for p in m.parameters() if p.requires_grad}.values())
    optimizer = torch.optim.SGD(
        parameters, lr=lr, momentum=recipe.optimizer.momentum, weight_decay=recipe.optimizer.weight_decay
    )
    optimizer = accelerator.prepare_optimizer(optimizer)  # fp16: the grad scaler unscales before the step
    log(f"init stage of {name}: {epochs} epochs at lr {lr:g}, {sum(p.numel() for p in parameters):,} parameters")
    loader = built.train_loader
    for epoch in range(1, epochs + 1):
        loader.set_epoch(INIT_DATA_SEED_OFFSET + epoch)
        distiller.eval()
        for module in modules:
            module.train()
        total = torch.zeros((), dtype=torch.float64, device=accelerator.device)
        seen = 0
        progress = Progress(len(loader), f"init {name} {epoch}/{epochs}", enabled=accelerator.is_main_process)
        for inputs, labels, indices in loader:
            with accelerator.autocast():
                value = distiller.objectives(inputs, labels, indices, {name: stage.loss})[0][name]
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(value)
            for parameter in parameters:
                if parameter.grad is not None:
                    parameter.grad.copy_(accelerator.reduce(parameter.grad, reduction="mean"))
            optimizer.step()
            total += value.detach().double() * labels.shape[0]
            seen += labels.shape[0]
            progress.update(1)
            signal = stop_requested()
            if signal:
                progress.close()
                raise TrainingStopped(
                    f"stopped by {signal} during the init stage of {name}, which is not "
                    f"checkpointed; the same command starts the run over"
                )
        progress.close()
        mean = (accelerator.reduce(total, reduction="sum") / (seen * accelerator.num_processes)).item()
        if not math.isfinite(mean):
            raise NonFiniteError(
                f"the init stage of {name} diverged: its loss became {mean} in init epoch {epoch}; no checkpoint "
                f"was written ({run_dir} records the failure). Lower init.lr (now {lr:g}) or check the "
                f"loss's inputs, then train again (with --run-dir {run_dir} it starts over in place)."
            )
        log(f"init {name} epoch {epoch}/{epochs} | loss {mean:.4f}")
        if metrics:
            metrics.write({"stage": "init", "init/epoch": epoch, f"init/loss/{name}": mean}, epoch)


def run_init_stages(built: BuiltRun, recipe: Recipe, *, train: bool = True, **stage_arguments) -> None:
    """Train what each loss declares in its init stage, before the main epochs.

    A resumed run passed the init stages before its checkpoint (which holds what
    they trained): ``train=False`` only freezes what they froze. ``stage_arguments``
    are :func:`run_init_stage`'s keywords.
    """
    for name, loss in built.unwrapped.losses.items():
        stage = loss.init_stage()
        if stage is None:
            continue
        if train:
            run_init_stage(name, stage, built, recipe, **stage_arguments)
        freeze(stage)
