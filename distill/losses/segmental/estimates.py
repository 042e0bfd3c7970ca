"""Batch statistics for the segmental loss: one estimate across processes, averaged over batches.

The loss is a non-linear function (entropies) of batch means, so it is not the
mean of per-process losses: every process must see the joint of the whole global
batch. :func:`global_means` all-reduces the statistics and keeps them
differentiable for this process's samples. :class:`MovingAverage` averages the
between-segment joints over batches: from N samples, the plug-in dependence of
independent segments reads about (C − 1)² / (2N) nats (``objectives.md`` §3.3
warns of this bias when C² ~ N), and a penalty on that bias would push the codes
to use fewer attributes. The cross-network joint is not averaged (``loss.py``
says why).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distill.distributed import all_reduce_, world_size


def global_means(local_means: list[Tensor], count: int) -> list[Tensor]:
    """The means over every process's samples of statistics given as means over this process's ``count``.

    The value is the global mean (one all-reduce for all the statistics; processes
    may hold different counts). The gradient reaches only this process's samples,
    scaled by the number of processes: DDP averages the gradients of the processes,
    and the average then equals the exact gradient of the loss of the global batch.
    With one process the means are returned unchanged.
    """
    world = world_size()
    if world == 1:
        return local_means
    local_sums = [mean * count for mean in local_means]
    packed = torch.cat([s.detach().flatten() for s in local_sums] + [local_sums[0].new_tensor([float(count)])])
    all_reduce_(packed)
    total_count = packed[-1]
    results, offset = [], 0
    for local in local_sums:
        total = packed[offset : offset + local.numel()].view_as(local)
        offset += local.numel()
        scaled = local * world
        results.append((scaled + (total - scaled).detach()) / total_count)
    return results


class MovingAverage(nn.Module):
    """Exponential moving average of a batch statistic, bias-corrected, with a straight-through gradient.

    After t training batches with momentum m, the estimate is

        Ê_t = A_t / (1 − m^t),  A_t = m · A_{t−1} + (1 − m) · B_t,  A_0 = 0,

    Adam's bias correction, so the first batch is used alone and no host-side flag
    is needed. The returned tensor has Ê_t's value and the batch statistic B_t's
    gradient with weight 1: a loss f(Ê) then gets the gradient ∇f(Ê) · ∂B_t, which is
    how stochastic compositional gradient methods (Wang, Fang & Liu, Math.
    Programming 2017) estimate the gradient of f(E[B]) with a running estimate of
    E[B]. Plain differentiation of the mixture would multiply the gradient by
    (1 − m), shrinking the term's effective weight 100-fold at m = 0.99.

    The gradient is evaluated at a point that lags the current batch by about
    1/(1 − m) batches. For the penalty on dependence between segments this lag
    did no harm on our synthetic check (the gradient pushes against the averaged
    dependence, a restoring force); for marginal entropies that must react at
    once to keep codes from collapsing, it collapsed them (``docs/segmental.md``).

    The average is stored only in training mode; in eval mode the estimate is
    formed but not kept.
    """

    def __init__(self, shape: tuple[int, ...], momentum: float) -> None:
        super().__init__()
        if not 0.0 < momentum < 1.0:
            raise ValueError(f"momentum must be in (0, 1), got {momentum}")
        self.momentum = momentum
        self.register_buffer("average", torch.zeros(shape))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, batch: Tensor) -> Tensor:
        with torch.no_grad():
            average = self.momentum * self.average + (1.0 - self.momentum) * batch.detach()
            steps = self.steps + 1
            estimate = average / (1.0 - self.momentum**steps)
            if self.training:
                self.average.copy_(average)
                self.steps.copy_(steps)
        return batch + (estimate - batch.detach())

    def extra_repr(self) -> str:
        return f"shape={tuple(self.average.shape)}, momentum={self.momentum}"
