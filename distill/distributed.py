"""The one place that knows whether a process group exists.

Under ``torchrun`` (or ``accelerate launch``) every process holds a share of the
global batch; a few computations must see all of it: the contrastive memory banks
(every bank must receive every process's embeddings, or the banks drift apart; the
reference is single-GPU only), the segmental loss's batch statistics (a non-linear
function of global means), and the per-step health flags (every process must reach
the same verdict at the same step). These helpers do the collective operation when
a process group is initialised and return their input unchanged otherwise, so the
callers read the same with one process or many.

Imports only torch: losses and the engine may both use it.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor


def end_process_group() -> None:
    """Destroy the process group, if one exists: a multi-process run that skips this aborts on exit."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    """How many processes share the run (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's index in the group (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_gather_rows(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` (rows along dim 0) from every process, in rank order.

    Processes may hold different numbers of rows (the last batch of an epoch): the
    counts are gathered first and the rows padded to the largest. With one process
    the input is returned.
    """
    if world_size() == 1:
        return tensor
    count = torch.tensor([tensor.shape[0]], device=tensor.device)
    counts = [torch.zeros_like(count) for _ in range(world_size())]
    dist.all_gather(counts, count)
    largest = int(max(c.item() for c in counts))
    padded = tensor.new_zeros((largest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(gathered, padded.contiguous())
    return torch.cat([g[: int(c.item())] for g, c in zip(gathered, counts)], dim=0)


def all_reduce_(tensor: Tensor, op: Literal["sum", "max"] = "sum") -> Tensor:
    """Reduce ``tensor`` in place across processes (element-wise sum or max) and return it.

    With one process (no process group) the tensor is left as it is.
    """
    if world_size() == 1:
        return tensor
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor
