"""A CPU stand-in for a CUDA graph, for testing :mod:`distill.engine.step_graph` without a GPU.

A real graph, once captured, replays fixed kernels on fixed memory and runs no Python.
:class:`EmulatedGraph` keeps the three consequences that the step graph's bookkeeping
must get right, so that a mistake there changes the results on this CPU as it would on
a GPU:

* **fixed memory:** before each replay, every buffer of the watched module is put back
  to the tensor it was at capture (a graph reads the memory it captured, whatever
  Python attribute now names another tensor);
* **frozen Python values:** each replay runs with the numbers the host had at capture
  (every int/float/bool attribute of the watched modules, and the optimiser's
  hyper-parameters such as the learning rate), and whatever the step's Python changes
  in them is undone afterwards (a replay runs no Python);
* **no work at capture:** capturing records the step and runs nothing.

It does not emulate kernels that read a host value mid-step (those fail a real capture)
or streams. Use: ``GRAPH_BACKENDS["cpu"] = EmulatedGraph`` (monkeypatch), then
``trainer.step_graph.graph.watch(trainer.unwrapped, trainer.optimizer)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from distill.engine.step_graph import buffer_slots

Scalar = (bool, int, float)


def python_values(module: nn.Module, optimizer: torch.optim.Optimizer) -> list[tuple[Any, str, Any]]:
    """Every number the host holds that a step's Python reads: module attributes and optimiser hyper-parameters."""
    values = [(owner, name, value) for owner in module.modules() for name, value in vars(owner).items() if isinstance(value, Scalar)]
    values += [(group, key, value) for group in optimizer.param_groups for key, value in group.items() if isinstance(value, Scalar)]
    return values


def put(values: list[tuple[Any, str, Any]]) -> None:
    for owner, name, value in values:
        if isinstance(owner, dict):
            owner[name] = value
        else:
            setattr(owner, name, value)


class EmulatedGraph:
    """Records a step at capture and re-runs it at replay, with the memory and Python values of the capture."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.module: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.body: Callable[[], None] | None = None
        self.captured_generators: list[torch.Generator] = []
        self.resets = 0

    def watch(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.module, self.optimizer = module, optimizer

    def warmup(self):
        return nullcontext()

    def capture(self, body: Callable[[], None], generators: Sequence[torch.Generator]) -> None:
        assert self.module is not None and self.optimizer is not None, "call watch() before training"
        self.body = body
        self.captured_generators = list(generators)
        self._buffers = buffer_slots(self.module)
        self._frozen = python_values(self.module, self.optimizer)

    def replay(self) -> None:
        assert self.body is not None, "replay before capture"
        for owner, name, tensor in self._buffers:
            owner._buffers[name] = tensor
        host = python_values(self.module, self.optimizer)
        put(self._frozen)
        self.body()
        put(host)

    def reset(self) -> None:
        self.body = None
        self.resets += 1
