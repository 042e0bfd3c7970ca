"""What a start reports: the log's opening lines, ``run.json``'s facts, and ``distill train --dry-run``'s checks.

Pure functions of the recipe, the built run and the run directory's plan, so the
dry run reports exactly what a real start found.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

import distill
from distill.engine.batch_plan import batch_lines, batch_plan
from distill.engine.build import BuiltRun
from distill.engine.launch import detect_launch
from distill.engine.resume import RunDirPlan
from distill.engine.state import TrainState
from distill.engine.threads import cpu_threads_description
from distill.files.provenance import git_provenance
from distill.recipe.resolve import ResolvedRecipe
from distill.recipe.schema import Recipe


def speed_settings(recipe: Recipe, built: BuiltRun) -> str:
    """Precision, memory format and compilation as they take effect (fp16 is a no-op on CPU)."""
    precision = recipe.precision
    if precision == "fp16" and built.accelerator.device.type == "cpu":
        precision = "fp32 (precision fp16 has no effect on CPU; bf16 does)"
    parts = [f"precision {precision}"]
    if recipe.channels_last:
        parts.append("channels_last")
    if recipe.compile:
        parts.append(f"compiled ({recipe.compile_backend})")
    return ", ".join(parts)


def static_memory(recipe: Recipe, built: BuiltRun) -> int:
    """Bytes a run holds on its device before any activation: an estimate for ``--dry-run``.

    Student and loss parameters with their gradients and optimiser state (one
    buffer per parameter for SGD with momentum, two for AdamW), the teacher's
    weights, every buffer (memory banks, batch-norm statistics) and the
    device-resident training and test sets. Activations depend on the batch and
    are not included.
    """
    distiller = built.unwrapped
    per_parameter = 2 if recipe.optimizer.name == "adamw" else (1 if recipe.optimizer.momentum else 0)
    trainable = sum(p.numel() * p.element_size() for p in distiller.trainable_parameters())
    held = sum(t.numel() * t.element_size() for t in [*distiller.parameters(), *distiller.buffers()])
    teacher = 0
    if built.teacher is not None:
        module = built.teacher.module
        teacher = sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
    data = getattr(built.train_loader, "nbytes", 0) + getattr(built.test_loader, "nbytes", 0)
    return held + trainable * (1 + per_parameter) + teacher + data


def run_info(resolved: ResolvedRecipe, built: BuiltRun, tags: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``run.json`` of a new run: versions and the git commit of the code, command, tags, seeds, device and data
    path, the teacher file's sha256.

    ``git_commit``/``git_dirty``: of the checkout the running ``distill`` package comes
    from (:func:`~distill.files.provenance.git_provenance`; ``None`` and ``git_reason``
    when it is not one). ``tags``: what the run is in a grid (``distill train --tag``).
    """
    recipe, accelerator = resolved.recipe, built.accelerator
    return {
        "distill": distill.__version__,
        **git_provenance(Path(distill.__file__).resolve().parent),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": sys.argv,
        "tags": dict(tags or {}),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seed": recipe.seed,
        "data_seed": recipe.seed,
        "data_order": "a permutation per epoch, a pure function of (data_seed, epoch)",
        "deterministic": recipe.deterministic,
        "device": str(accelerator.device),
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "speed": speed_settings(recipe, built),
        "data_path": built.data_path,
        "train_size": built.train_size,
        "test_size": built.test_size,
        "num_classes": built.num_classes,
        "teacher_sha256": resolved.teacher_sha256,
    }


def start_lines(
    recipe: Recipe, built: BuiltRun, *, run_dir: object, resumed: TrainState | None, last_saved: str,
    forced: list[str], applied: list[str],
) -> list[str]:
    """The log's opening lines: where the run lives, what resumed, what trains with what, on which device.

    Then the batch per process and in all, the lr and the batch it was tuned for, and
    a warning when those batches differ (:mod:`distill.engine.batch_plan`).
    """
    accelerator = built.accelerator
    lines = [f"run directory: {run_dir}"]
    if resumed is not None:
        lines.append(
            f"resuming from {last_saved}: epoch {resumed.epoch + 1}, batch {resumed.batch + 1}"
            + (f" | forced: {'; '.join(forced)}" if forced else "")
        )
        if applied:
            lines.append(f"applied from step {resumed.step + 1}: {'; '.join(applied)}")
    lines.append(
        f"student {recipe.student.arch}"
        + (f" ← teacher {recipe.teacher.arch}" if recipe.teacher else " (no teacher)")
        + f" | losses: {', '.join(f'{s.weight:g}·{n}' for n, s in recipe.losses.items())}"
        + f" | {built.train_size} train / {built.test_size} test images | device {accelerator.device}"
        + f" × {accelerator.num_processes} process(es)"
    )
    lines.extend(batch_lines(batch_plan(recipe, accelerator.num_processes, detect_launch().nodes)))
    lines.append(f"data: {built.data_path} | {speed_settings(recipe, built)}")
    if accelerator.device.type == "cpu":
        lines.append(cpu_threads_description())
    for name, loss in built.unwrapped.losses.items():
        if loss.summary():
            lines.append(f"loss {name}: {loss.summary()}")
    return lines


def setup_report(resolved: ResolvedRecipe, built: BuiltRun, plan: RunDirPlan, forced: list[str]) -> list[str]:
    """What a start found, for ``distill train --dry-run``: every check a real start runs, short of training."""
    recipe, distiller, accelerator = resolved.recipe, built.unwrapped, built.accelerator
    if plan.resumes:
        where = f"{plan.path}: {'extends the finished run' if plan.extends else 'resumes'} from {plan.checkpoint}"
    elif plan.restart:
        where = f"{plan.path}: starts over in place (no checkpoint yet)"
    else:
        where = f"{plan.path}: a new run" + (" (time-stamped when it starts)" if plan.auto_named else "")
    lines = [f"run directory   {where}"]
    if forced:
        lines.append(f"forced          {'; '.join(forced)}")
    if recipe.teacher is not None:
        lines.append(
            f"teacher         {recipe.teacher.arch} from {recipe.teacher.checkpoint} (sha256 {resolved.teacher_sha256}), "
            f"loaded strictly"
        )
    lines.append(
        f"data            {recipe.data.dataset} at {recipe.data.root}: {built.train_size} train / {built.test_size} "
        f"test images, {built.num_classes} classes, md5 {'verified' if recipe.data.verify else 'not checked (data.verify=false)'}"
    )
    lines.append(f"data path       {built.data_path}")
    for name, loss in distiller.losses.items():
        trainable = sum(p.numel() for p in loss.parameters() if p.requires_grad)
        buffers = sum(b.numel() * b.element_size() for b in loss.buffers())
        summary = f" | {loss.summary()}" if loss.summary() else ""
        lines.append(
            f"loss {name:<10} {recipe.losses[name].type} × {recipe.losses[name].weight:g}: built on the real feature "
            f"shapes; {trainable:,} trainable parameters, {buffers / 2**20:.1f} MiB of buffers{summary}"
        )
    student = sum(p.numel() for p in distiller.student.parameters())
    teacher = sum(p.numel() for p in built.teacher.module.parameters()) if built.teacher is not None else 0
    lines.append(f"parameters      student {recipe.student.arch}: {student:,}" + (f"; teacher: {teacher:,}" if teacher else ""))
    lines.append(f"memory          {static_memory(recipe, built) / 2**20:,.0f} MiB on {accelerator.device} before activations "
                 f"(weights, gradients, optimiser state, buffers, device-resident data)")
    lines.append(f"device          {accelerator.device} × {accelerator.num_processes} process(es) | {speed_settings(recipe, built)}")
    batch, *warning = batch_lines(batch_plan(recipe, accelerator.num_processes, detect_launch().nodes))
    lines.append(f"batch           {batch.removeprefix('batch ')}")
    lines.extend(f"warning         {line.removeprefix('warning: ')}" for line in warning)
    return lines
