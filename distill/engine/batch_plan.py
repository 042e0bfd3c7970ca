"""The batch a run trains with across processes and nodes, next to the batch its learning rate was tuned for.

``data.batch_size`` is the batch of *each* process: every process's loader takes
its own shard of the epoch (:class:`~distill.data.device_loader.DeviceLoader`,
:class:`~distill.data.worker_loader.WorkerLoader`), and the gradients are averaged
over the processes, so N processes take optimiser steps on an effective batch of
N × ``data.batch_size`` at the recipe's ``optimizer.lr``. The reference recipes
were tuned for batch 64 on one GPU; for larger batches the linear-scaling rule
(lr × effective / reference) is the usual starting point, but not always the best
choice, so distill never scales the lr itself: a start reports the numbers, and
warns when the effective batch differs from ``optimizer.reference_batch_size``
(null: ``data.batch_size``, i.e. the recipe as written for one process), saying
which override gives the scaled lr and which keeps the reference batch.

Pure functions of the recipe and the process counts: the log's start lines and
``distill train --dry-run`` show the same sentences.
"""

from __future__ import annotations

from dataclasses import dataclass

from distill.recipe.schema import Recipe

REFERENCE_KEY = "optimizer.reference_batch_size"


@dataclass(frozen=True)
class BatchPlan:
    """What one optimiser step sees: ``per_process`` samples on each of ``processes`` processes over ``nodes`` nodes.

    ``lr`` is the recipe's (base) learning rate; ``reference`` the effective batch it
    was tuned for, ``reference_set`` whether the recipe said so (else it is
    ``data.batch_size``: one process).
    """

    per_process: int
    processes: int
    nodes: int
    lr: float
    reference: int
    reference_set: bool

    @property
    def effective(self) -> int:
        """Samples per optimiser step, all processes together (the last batch of an epoch may be smaller)."""
        return self.per_process * self.processes

    @property
    def linear_scaling_lr(self) -> float:
        """The lr the linear-scaling rule gives for the effective batch: lr × effective / reference."""
        return self.lr * self.effective / self.reference

    @property
    def per_process_for_reference(self) -> int | None:
        """The ``data.batch_size`` that makes the effective batch the reference one (None: no whole number does)."""
        quotient, remainder = divmod(self.reference, self.processes)
        return quotient if remainder == 0 and quotient > 0 else None


def batch_plan(recipe: Recipe, processes: int, nodes: int = 1) -> BatchPlan:
    """The batch plan of ``recipe`` run by ``processes`` processes on ``nodes`` nodes."""
    if processes < 1 or nodes < 1:
        raise ValueError(f"processes and nodes must be positive, got {processes} and {nodes}")
    reference = recipe.optimizer.reference_batch_size
    return BatchPlan(
        per_process=recipe.data.batch_size,
        processes=processes,
        nodes=nodes,
        lr=recipe.optimizer.lr,
        reference=reference if reference is not None else recipe.data.batch_size,
        reference_set=reference is not None,
    )


def _number(value: float) -> str:
    """A learning rate as a user would type it: ``0.1``, not ``0.10000000000000002``."""
    return f"{value:.6g}"


def batch_line(plan: BatchPlan) -> str:
    """``batch 64 per process × 2 processes on 2 nodes = effective batch 128 | lr 0.05, tuned for batch 64 (...)``."""
    spread = f" × {plan.processes} processes" if plan.processes > 1 else " × 1 process"
    if plan.nodes > 1:
        spread += f" on {plan.nodes} nodes"
    source = REFERENCE_KEY if plan.reference_set else f"data.batch_size on one process; {REFERENCE_KEY} is unset"
    return (
        f"batch {plan.per_process} per process{spread} = effective batch {plan.effective} | "
        f"lr {_number(plan.lr)}, tuned for batch {plan.reference} ({source})"
    )


def batch_warning(plan: BatchPlan) -> str | None:
    """A sentence when the effective batch is not the one the lr was tuned for: the scaled lr and how to get it.

    ``None`` when they agree. The overrides it names are ``distill train``'s
    ``key=value`` arguments: the linear-scaling lr, the per-process batch that
    restores the reference batch (when a whole number does), or the reference key
    for an lr that was already chosen for this batch.
    """
    if plan.effective == plan.reference:
        return None
    lr, scaled = _number(plan.lr), _number(plan.linear_scaling_lr)
    ways = [f"optimizer.lr={scaled} (linear scaling: {lr} × {plan.effective}/{plan.reference})"]
    per_process = plan.per_process_for_reference
    if per_process is not None:
        ways.append(f"data.batch_size={per_process} (effective batch {plan.reference})")
    ways.append(f"{REFERENCE_KEY}={plan.effective} if lr {lr} is already meant for batch {plan.effective}")
    return (
        f"warning: effective batch {plan.effective} differs from batch {plan.reference}, which lr {lr} was tuned for; "
        f"distill does not scale the lr itself. Pass {', or '.join(ways)}"
    )


def batch_lines(plan: BatchPlan) -> list[str]:
    """The batch line and, when the batches differ, the warning."""
    warning = batch_warning(plan)
    return [batch_line(plan)] + ([warning] if warning else [])
