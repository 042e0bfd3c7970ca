"""The whole training step as one CUDA graph (``cuda_graph: true``): launched once, not kernel by kernel.

At batch 64, resnet32x4 → resnet8x4 is a few milliseconds of arithmetic per step on a
recent GPU, and the step launches about a thousand kernels (both networks, every loss,
the memory update, backward, the optimiser): the host's Python and the launches, not
the GPU, set the pace. A CUDA graph records those launches once and replays them with
one call (PyTorch, "CUDA Graphs", whole-network capture; ``torch.cuda.graph``).

A graph replays fixed kernels on fixed memory, so :class:`StepGraph` keeps what the
plain step does exact:

* **Static inputs.** Each batch is copied into tensors allocated once; a batch of other
  shapes (the last, partial batch of an epoch) runs the plain step instead, eagerly.
* **Static outputs.** The loss terms, the total and the step guard's flags are written
  into one vector allocated before capture; each step hands back a copy of it, since
  the guard reads a step's flags one step later.
* **Values the host fixes at capture.** The learning rate and every Python number a loss
  reads (warm-up factors set in ``start_epoch``) are frozen into the graph. They change
  only between epochs, so the graph is dropped at each epoch start (:meth:`new_epoch`)
  and captured again after ``recapture_warmup`` plain steps. A loss must therefore keep
  whatever changes from step to step in tensors (as the memory banks and CRD's Z do).
* **Buffers written out of place.** The memory banks replace their tensor at each update
  (``self.memory = memory.index_copy(...)``: the step's backward may still need the old
  one). A graph would read the tensor it captured forever; so after every step this
  module copies each replaced buffer back into the tensor it replaced and puts that
  tensor back in place (:func:`restore_buffers`). Inside the graph, the copy is one
  more captured kernel.
* **Random draws.** The negatives' private generators (:meth:`DistillLoss.random_generators`)
  are registered with the graph, so each replay draws fresh numbers and the
  generators' states, which checkpoints save, advance as in the plain step.
* **Stop requests.** The guard's stop flag is a device tensor the graph reads; the trainer
  sets it before each step. A signal that arrives while a replayed step runs is therefore
  seen by the next step (the plain step sees it in the same step); either way the run
  checkpoints and stops after the step that saw it.

What cannot be captured is refused before the run starts (:func:`check_graphable`): a
step that syncs with the host (fp16's grad scaler, ``skip_nonfinite``), several
processes (DDP's gradient all-reduce is not captured here), or no CUDA device. A loss
that reads a value on the host inside its step fails the capture, with a message
naming the option to turn off.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Protocol

import torch
from torch import Tensor, nn

from distill.data.views import SharedViews, TwoViews
from distill.errors import DistillError, LossError, RecipeError

StepInputs = Tensor | TwoViews | SharedViews
StepResult = tuple[dict[str, Tensor], Tensor, Tensor]
"""What one training step returns: the loss terms, the weighted total and the guard's flags (all on the device)."""

FIRST_WARMUP_STEPS = 3
"""Plain steps before the run's first capture (PyTorch's whole-network example uses 3): lazy
initialisation (cuBLAS handles, cuDNN plans, the optimiser's momentum buffers, CRD's Z)
must happen outside the capture."""

RECAPTURE_WARMUP_STEPS = 1
"""Plain steps before each later capture (after an epoch start changed the host's values)."""


class GraphCaptureError(DistillError):
    """The training step could not be recorded as a CUDA graph."""


class CapturedGraph(Protocol):
    """What :class:`StepGraph` needs of a graph implementation (CUDA's; the tests use a CPU stand-in)."""

    def warmup(self) -> AbstractContextManager:
        """The context plain steps before a capture run in (CUDA: a side stream)."""

    def capture(self, body: Callable[[], None], generators: Sequence[torch.Generator]) -> None:
        """Record ``body`` (without running its kernels), drawing from ``generators``."""

    def replay(self) -> None:
        """Run the recorded kernels once."""

    def reset(self) -> None:
        """Drop the recording and its memory."""


class CudaGraph:
    """``torch.cuda.CUDAGraph`` with its capture stream: warm-up and capture on a side stream, as PyTorch requires."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.graph: torch.cuda.CUDAGraph | None = None

    @contextmanager
    def warmup(self) -> Iterator[None]:
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            yield
        torch.cuda.current_stream(self.device).wait_stream(self.stream)

    def capture(self, body: Callable[[], None], generators: Sequence[torch.Generator]) -> None:
        graph = torch.cuda.CUDAGraph()
        for generator in generators:
            graph.register_generator_state(generator)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        # thread_local: the background checkpoint writer may use CUDA while this thread captures
        with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
            body()
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        self.graph = graph

    def replay(self) -> None:
        assert self.graph is not None, "replay before capture"
        self.graph.replay()

    def reset(self) -> None:
        if self.graph is not None:
            self.graph.reset()
            self.graph = None


GRAPH_BACKENDS: dict[str, Callable[[torch.device], CapturedGraph]] = {"cuda": CudaGraph}
"""The graph implementation for each device type; a device type not listed cannot take ``cuda_graph: true``."""


def check_graphable(*, device: torch.device, num_processes: int, precision: str, skip_nonfinite: int) -> None:
    """Refuse ``cuda_graph: true`` where a whole-step graph cannot run, saying what to change.

    Raises:
        RecipeError: no CUDA device, several processes, fp16, or ``skip_nonfinite``.
    """
    problems = []
    if device.type not in GRAPH_BACKENDS:
        problems.append(f"it needs a CUDA device, and this run is on {device.type} (torch sees no GPU)")
    if num_processes > 1:
        problems.append(
            f"it runs on one process, and this run has {num_processes} (DDP's gradient all-reduce is not captured)"
        )
    if precision == "fp16":
        problems.append("fp16's grad scaler reads the gradients on the host at every step: use precision: bf16")
    if skip_nonfinite > 0:
        problems.append(
            f"skip_nonfinite: {skip_nonfinite} reads each step's flags on the host before the optimiser step: set it to 0"
        )
    if problems:
        raise RecipeError(f"cuda_graph: true cannot be used here: {'; '.join(problems)}. Or set cuda_graph: false")


def flat_inputs(inputs: StepInputs) -> tuple[Tensor, ...]:
    """The input tensors of a step in slot order (one batch, the two networks' views, or the shared views)."""
    return (inputs,) if isinstance(inputs, Tensor) else inputs.tensors()


def same_structure(inputs: StepInputs, tensors: Sequence[Tensor]) -> StepInputs:
    """``inputs``' structure (plain, :class:`TwoViews` or :class:`SharedViews`) holding ``tensors`` in slot order."""
    if isinstance(inputs, Tensor):
        (tensor,) = tensors
        return tensor
    if isinstance(inputs, TwoViews):
        teacher, student = tensors
        return TwoViews(teacher=teacher, student=student)
    return SharedViews(tuple(tensors))


def signature(tensors: Sequence[Tensor]) -> tuple:
    """What a graph's static input must match: each tensor's shape, dtype, device and strides."""
    return tuple((tuple(t.shape), t.dtype, t.device, t.stride()) for t in tensors)


class StaticBatch:
    """Tensors allocated once for a graph's inputs (first holding the capture's batch); later batches are copied in."""

    def __init__(self, inputs: StepInputs, labels: Tensor, indices: Tensor) -> None:
        tensors = (*flat_inputs(inputs), labels, indices)
        self.signature = signature(tensors)
        self.tensors = tuple(t.clone() for t in tensors)  # clone keeps the memory format
        self.inputs = same_structure(inputs, self.tensors[:-2])
        self.labels, self.indices = self.tensors[-2:]

    def fits(self, inputs: StepInputs, labels: Tensor, indices: Tensor) -> bool:
        """Whether a batch has this signature and structure (the last, partial batch of an epoch does not)."""
        return type(inputs) is type(self.inputs) and signature((*flat_inputs(inputs), labels, indices)) == self.signature

    def load(self, inputs: StepInputs, labels: Tensor, indices: Tensor) -> None:
        """Copy a batch that :meth:`fits` into the static tensors (on the device, no host sync)."""
        for static, tensor in zip(self.tensors, (*flat_inputs(inputs), labels, indices)):
            static.copy_(tensor, non_blocking=True)


def buffer_slots(module: nn.Module) -> list[tuple[nn.Module, str, Tensor]]:
    """Every buffer of ``module`` and its submodules, as (owner, attribute name, current tensor)."""
    return [(owner, name, tensor) for owner in module.modules() for name, tensor in owner._buffers.items() if tensor is not None]


def restore_buffers(slots: Sequence[tuple[nn.Module, str, Tensor]]) -> int:
    """Copy each buffer a step replaced back into the tensor it replaced, and put that tensor back.

    Returns how many were replaced. Values are unchanged; only which tensor holds them is.
    """
    replaced = 0
    for owner, name, original in slots:
        current = owner._buffers[name]
        if current is not original:
            original.copy_(current)
            owner._buffers[name] = original
            replaced += 1
    return replaced


class StepGraph:
    """Runs the training step plainly or as a replayed graph, with the same results.

    Args:
        step: the plain step, ``step(inputs, labels, indices) -> (terms, total, flags)``;
            its kernels are what the graph records.
        module: the module whose buffers the step may replace (the distiller).
        generators: the private random generators the step draws from (called at capture).
        make_graph: the graph implementation (:data:`GRAPH_BACKENDS` for the device).

    Per epoch: ``new_epoch()``; then ``warmup`` plain steps; then the next batch of a
    signature is captured and replayed, and every later batch with that signature is
    replayed. A batch of another signature runs the plain step.
    """

    def __init__(
        self,
        step: Callable[[StepInputs, Tensor, Tensor], StepResult],
        module: nn.Module,
        generators: Callable[[], Sequence[torch.Generator]],
        make_graph: Callable[[], CapturedGraph],
    ) -> None:
        self.step, self.module, self.generators = step, module, generators
        self.graph = make_graph()
        self.captures = 0
        self.replays = 0
        self.plain_steps = 0
        self._warmup_left = FIRST_WARMUP_STEPS
        self._static: StaticBatch | None = None
        self._outputs: Tensor | None = None
        self._names: list[str] = []
        self._keepalive: list[Tensor | None] = []

    def new_epoch(self) -> None:
        """Drop the graph: the learning rate and the losses' epoch values it froze may have changed."""
        if self._static is not None:
            self.graph.reset()
            self._static, self._outputs, self._keepalive = None, None, []
        self._warmup_left = max(self._warmup_left, RECAPTURE_WARMUP_STEPS)

    def __call__(self, inputs: StepInputs, labels: Tensor, indices: Tensor) -> StepResult:
        if self._static is not None:
            if self._static.fits(inputs, labels, indices):
                return self._replay(inputs, labels, indices)
            return self._plain(inputs, labels, indices, nullcontext())
        if self._warmup_left > 0:
            self._warmup_left -= 1
            return self._plain(inputs, labels, indices, self.graph.warmup())
        self._capture(inputs, labels, indices)
        return self._replay(inputs, labels, indices)

    def _plain(self, inputs: StepInputs, labels: Tensor, indices: Tensor, context: AbstractContextManager) -> StepResult:
        slots = buffer_slots(self.module)
        with context:
            terms, total, flags = self.step(inputs, labels, indices)
            restore_buffers(slots)
        self._names = list(terms)
        self.plain_steps += 1
        return terms, total, flags

    def _capture(self, inputs: StepInputs, labels: Tensor, indices: Tensor) -> None:
        static = StaticBatch(inputs, labels, indices)
        outputs = torch.empty(len(self._names) + 1 + 3, device=labels.device)
        slots = buffer_slots(self.module)

        def body() -> None:
            terms, total, flags = self.step(static.inputs, static.labels, static.indices)
            outputs.copy_(torch.cat([torch.stack([value.detach().float() for value in terms.values()]),
                                     total.detach().float().reshape(1), flags.float()]))
            restore_buffers(slots)

        try:
            self.graph.capture(body, list(self.generators()))
        except (RuntimeError, LossError) as error:  # a loss's failure comes named (distill.engine.distiller._term)
            self.graph.reset()
            raise GraphCaptureError(
                f"cuda_graph: true: the training step could not be captured as a CUDA graph ({error}). A loss that reads "
                f"a value on the host inside its step (.item(), a data-dependent shape) cannot be captured; "
                f"set cuda_graph: false"
            ) from error
        self._static, self._outputs = static, outputs
        # the gradients live in the graph's memory: keep them alive even if a plain step replaces them
        self._keepalive = [parameter.grad for parameter in self.module.parameters() if parameter.grad is not None]
        self.captures += 1

    def _replay(self, inputs: StepInputs, labels: Tensor, indices: Tensor) -> StepResult:
        assert self._static is not None and self._outputs is not None
        self._static.load(inputs, labels, indices)
        self.graph.replay()
        self.replays += 1
        values = self._outputs.clone()
        count = len(self._names)
        return dict(zip(self._names, values[:count])), values[count], values[count + 1:]


def make_step_graph(
    distiller: nn.Module, device: torch.device, step: Callable[[StepInputs, Tensor, Tensor], StepResult]
) -> StepGraph:
    """The :class:`StepGraph` of a run: ``distiller``'s buffers, its losses' generators, the device's graph."""
    losses = list(distiller.losses.values())
    return StepGraph(
        step,
        distiller,
        lambda: [generator for loss in losses for generator in loss.random_generators()],
        lambda: GRAPH_BACKENDS[device.type](device),
    )
