"""Keeping memory banks identical across processes.

Every process scores its own batch, but every bank must receive every process's
embeddings, or the banks drift apart (the reference is single-GPU only). These
helpers all-gather rows (of possibly different counts per process); with one
process they return their input.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_gather_rows(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` (rows along dim 0) from every process, in rank order."""
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

