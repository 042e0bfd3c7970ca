"""Per-step health checks: a non-finite loss or gradient, and a stop request, agreed by every process.

Each step computes one small flag tensor on the device, ``[loss bad, gradient bad,
stop requested]``, max-reduced across processes so every process reaches the same
verdict at the same step. Reading it costs a host sync, so by default the flags of
step *t* are read after step *t + 1* has been queued (the device never idles for
the check); the run then stops naming step *t*. The bad update was applied to the
weights in memory, but never saved: the trainer reads the pending flags before
every checkpoint. With ``skip_nonfinite: N`` the flags are read before the
optimiser step instead, so that a bad step can be dropped (up to N of them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from distill.distributed import all_reduce_
from distill.errors import DistillError

LOSS_BAD, GRADIENT_BAD, STOP = 0, 1, 2


class NonFiniteError(DistillError):
    """A loss term or the gradient became NaN or infinite during training."""


@dataclass(frozen=True)
class StepVerdict:
    """What the flags of one step said: ``problem`` describes a non-finite value (``None``: healthy)."""

    step: int
    problem: str | None
    stop: bool
    where: str = ""


@dataclass
class _Pending:
    step: int
    flags: Tensor
    terms: dict[str, Tensor]
    where: str


def nonfinite_terms(terms: dict[str, Tensor]) -> list[str]:
    """Names of the loss terms whose value is NaN or infinite, each with its value."""
    values = {name: float(value.detach().float().sum()) for name, value in terms.items()}
    return [f"{name} = {value}" for name, value in values.items() if not math.isfinite(value)]


class StepGuard:
    """Builds, reduces and reads the per-step flags; counts the steps skipped so far.

    Args:
        device: where the flags live (the training device).
        num_processes: above 1, the flags are max-reduced across processes.
        skip_limit: how many non-finite steps may be skipped (0: the first one stops the run).
        check_gradients: also test the gradient norm (off under fp16 grad scaling,
            whose scaler skips overflowing steps on its own).
    """

    def __init__(self, *, device: torch.device, num_processes: int, skip_limit: int, check_gradients: bool) -> None:
        self.num_processes, self.skip_limit, self.check_gradients = num_processes, skip_limit, check_gradients
        self.skipped = 0
        self._stop_flag = torch.zeros((), device=device)
        self._stop_marked = False
        self._pending: _Pending | None = None

    @property
    def synchronous(self) -> bool:
        """Whether flags must be read before the optimiser step (to be able to skip it)."""
        return self.skip_limit > 0

    def mark_stop(self, requested: bool) -> None:
        """Note a stop request (once) in the device flag every later step's :meth:`flags` reads.

        Kept apart from :meth:`flags`, which only computes on the device: a step replayed
        as a CUDA graph (:mod:`distill.engine.step_graph`) runs no Python, but reads the
        flag's memory.
        """
        if requested and not self._stop_marked:
            self._stop_flag.fill_(1.0)
            self._stop_marked = True

    def flags(self, total: Tensor, parameters: list[Tensor]) -> Tensor:
        """The step's ``[loss bad, gradient bad, stop]`` flags on the device (reduced across processes); no sync."""
        loss_bad = (~torch.isfinite(total.detach())).float()
        if self.check_gradients:
            grads = [p.grad for p in parameters if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads) if grads else total.new_zeros(())
            gradient_bad = (~torch.isfinite(norm)).float().to(loss_bad.device)
        else:
            gradient_bad = torch.zeros_like(loss_bad)
        flags = torch.stack([loss_bad, gradient_bad, self._stop_flag.to(loss_bad.dtype)])
        if self.num_processes > 1:
            all_reduce_(flags, op="max")
        return flags

    def read(self, step: int, flags: Tensor, terms: dict[str, Tensor], where: str = "") -> StepVerdict:
        """Read ``flags`` now (a host sync) and describe what went wrong, if anything; ``where``: e.g. epoch and batch."""
        loss_bad, gradient_bad, stop = (bool(v) for v in flags.tolist())
        problem = None
        if loss_bad:
            local = nonfinite_terms(terms)
            problem = (
                f"loss term {', '.join(local)} became non-finite"
                if local
                else "a loss term became non-finite on another process"
            )
        elif gradient_bad:
            problem = "the gradient became non-finite (every loss term was finite)"
        return StepVerdict(step=step, problem=problem, stop=stop, where=where)

    def defer(self, step: int, flags: Tensor, terms: dict[str, Tensor], where: str = "") -> StepVerdict | None:
        """Keep this step's flags for later and read the previous step's (``None`` if there was none)."""
        previous, self._pending = self._pending, _Pending(step, flags, terms, where)
        return self.read(previous.step, previous.flags, previous.terms, previous.where) if previous else None

    def flush(self) -> StepVerdict | None:
        """Read the flags still pending (before a checkpoint, an evaluation, the end)."""
        previous, self._pending = self._pending, None
        return self.read(previous.step, previous.flags, previous.terms, previous.where) if previous else None

    def may_skip(self) -> bool:
        """Count one more skipped step if the budget allows it."""
        if self.skipped < self.skip_limit:
            self.skipped += 1
            return True
        return False


def check_first_terms(terms: dict[str, Tensor], loss_types: dict[str, str]) -> None:
    """On the very first batch, every loss must give a finite scalar (catches broken plugins early).

    ``loss_types``: each term's loss type, for the message.
    """
    for name, value in terms.items():
        if not isinstance(value, Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise DistillError(
                f"losses.{name} (type {loss_types[name]!r}) returned {shape} on the first batch; "
                f"a loss must return a scalar tensor (reduce it, e.g. with .mean())"
            )
        if not torch.isfinite(value.detach()).all():
            raise DistillError(
                f"losses.{name} (type {loss_types[name]!r}) returned {value.item()} on the first batch; "
                f"check its inputs and parameters"
            )


def nonfinite_message(verdict: StepVerdict, last_saved: str, run_dir: object) -> str:
    """Why training stopped at a non-finite step, what was kept, and how to go on."""
    return (
        f"training stopped at step {verdict.step} ({verdict.where}): {verdict.problem}. "
        f"Nothing from this step on was saved; the last good checkpoint is {last_saved}. "
        f"What to do: lower optimizer.lr or the loss weights, then resume from that checkpoint "
        f"('distill train --resume {run_dir} optimizer.lr=... --force'), or set skip_nonfinite: N "
        f"to skip up to N such steps."
    )
