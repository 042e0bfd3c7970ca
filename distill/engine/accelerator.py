"""The Accelerator a run trains with, ``torch.compile`` of its networks, and decisions taken on the main process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import AutocastKwargs, DataLoaderConfiguration, broadcast_object_list

from distill.errors import DistillError
from distill.recipe.schema import Recipe

T = TypeVar("T")

MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


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

    Under ``cuda_graph: true`` autocast keeps no cache of cast weights: PyTorch's CUDA
    graph notes require ``cache_enabled=False`` for autocast inside a captured region
    (a cached cast made during capture would be stale at replay). The values are the same.
    """
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") != MIXED_PRECISION[recipe.precision]:
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(
        cpu=not has_accelerator_device(),
        mixed_precision=MIXED_PRECISION[recipe.precision],
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=recipe.seed, non_blocking=True),
        kwargs_handlers=[AutocastKwargs(cache_enabled=False)] if recipe.cuda_graph else None,
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


def on_main(accelerator: Accelerator, decide: Callable[[], T]) -> T:
    """Run ``decide`` on the main process and hand every process its result, or its :class:`DistillError`."""
    box: list[Any] = [None]
    if accelerator.is_main_process:
        try:
            box[0] = ("result", decide())
        except DistillError as error:
            box[0] = ("error", error)
    if accelerator.num_processes > 1:
        broadcast_object_list(box, from_process=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value
