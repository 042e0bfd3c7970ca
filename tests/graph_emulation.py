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
* **no work at capture, but its Python runs:** capturing runs the step's Python once, as
  a real capture does, then puts every tensor it changed back (parameters, buffers,
  optimiser state, generators): the kernels were only recorded;
* **no host reads during capture:** a step that reads a device value on the host
  (``.item()``, ``bool(t)``, ``int(t)``, a boolean-mask index, ``nonzero``, ``bincount`` …)
  fails a real capture; :class:`HostReadDetector` makes it fail here too, by name.

The device is the CPU, so code that picks a CPU-only path (the negatives' ``claim``
draw) must be pointed at its GPU path by the test. Streams are not emulated. Use: ``GRAPH_BACKENDS["cpu"] = EmulatedGraph`` (monkeypatch), then
``trainer.step_graph.graph.watch(trainer.unwrapped, trainer.optimizer)``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from distill.engine.step_graph import buffer_slots

Scalar = (bool, int, float)

HOST_READS = frozenset({
    "__bool__", "__int__", "__float__", "__index__", "item", "tolist", "cpu", "numpy", "nonzero", "argwhere",
    "masked_select", "unique", "unique_consecutive", "bincount",
})  # fmt: skip
"""Tensor methods and functions whose result needs a device value on the host (a sync: not capturable)."""


def _bool_index(args: tuple) -> bool:
    """Whether an indexing call's index holds a boolean tensor (a data-dependent shape: a hidden ``nonzero``)."""
    index = args[1] if len(args) > 1 else None
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(part, torch.Tensor) and part.dtype == torch.bool for part in parts)


class HostReadError(RuntimeError):
    """A step read a device value on the host while it was being captured."""


class HostReadDetector(TorchFunctionMode):
    """Raises :class:`HostReadError` on any call of :data:`HOST_READS`, a boolean-mask index, or one-argument ``where``."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in HOST_READS or (name in ("__getitem__", "__setitem__") and _bool_index(args)) or (
            name == "where" and len(args) + len(kwargs or {}) == 1
        ):
            raise HostReadError(f"operation not permitted when stream is capturing (emulated): {name} reads the device on the host")
        return func(*args, **(kwargs or {}))


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
        self.captured_generators = list(generators)
        self._buffers = buffer_slots(self.module)
        self._frozen = python_values(self.module, self.optimizer)
        tensors = [*self.module.parameters(), *(tensor for _, _, tensor in self._buffers)]
        saved = [tensor.detach().clone() for tensor in tensors]
        optimizer_state = {parameter: copy.deepcopy(state) for parameter, state in self.optimizer.state.items()}
        generator_states = [generator.get_state() for generator in self.captured_generators]
        rng = torch.get_rng_state()
        with HostReadDetector():
            body()  # the Python of the step runs once; its kernels would only be recorded ...
        with torch.no_grad():  # ... so what they changed is put back
            for tensor, value in zip(tensors, saved):
                tensor.copy_(value)
            for parameter in list(self.optimizer.state):
                if parameter not in optimizer_state:
                    del self.optimizer.state[parameter]
                    continue
                for key, value in optimizer_state[parameter].items():
                    current = self.optimizer.state[parameter][key]
                    if isinstance(current, torch.Tensor):
                        current.copy_(value)
                    else:
                        self.optimizer.state[parameter][key] = value
        for generator, state in zip(self.captured_generators, generator_states):
            generator.set_state(state)
        torch.set_rng_state(rng)
        self.body = body

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
