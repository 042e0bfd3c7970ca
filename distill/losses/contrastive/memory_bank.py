"""CRD's momentum memory bank, and a FIFO queue for datasets too large for one.

Both store L2-normalised embeddings in buffers (never parameters: the optimiser does
not touch them, and they are saved in checkpoints). Updates happen under no_grad,
*after* the batch has been scored, so a batch is always scored against the memory
as it stood before it (the reference's order).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def last_occurrence(indices: Tensor, size: int) -> Tensor:
    """For each position of ``indices`` (values in ``[0, size)``), the position of the last one with the same value.

    A batch gathered from several processes can repeat a sample (Accelerate pads the
    last batch); writing one row twice in one ``index_copy`` with different values is
    undefined, so every write of a repeated row takes the last occurrence's value.
    Shapes depend on ``size`` and the batch only, never on the values: no host sync,
    so the update can be captured in a CUDA graph (:mod:`distill.engine.step_graph`).
    """
    positions = torch.arange(indices.numel(), device=indices.device)
    last = torch.full((size,), -1, dtype=torch.long, device=indices.device)
    last.scatter_reduce_(0, indices, positions, reduce="amax")
    return last[indices]


def finite_rows(embeddings: Tensor) -> Tensor:
    """``[B, 1]`` bool: which rows hold only finite values."""
    return torch.isfinite(embeddings).all(dim=1, keepdim=True)


class MomentumMemoryBank(nn.Module):
    """One N×d bank with a row per training sample (CRD, reference ``ContrastMemory``).

    Initialised i.i.d. Uniform(−a, a) with a = 1/√(d/3), so rows have unit norm in
    expectation (they are not normalised until first written). ``update`` sets
    row ← normalise(μ·row + (1−μ)·embedding) at the batch's dataset indices.
    """

    def __init__(self, size: int, dim: int, momentum: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"memory momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        bound = 1.0 / math.sqrt(dim / 3.0)
        self.register_buffer("memory", torch.rand(size, dim).mul_(2 * bound).sub_(bound))

    @property
    def size(self) -> int:
        return self.memory.shape[0]

    @torch.no_grad()
    def update(self, indices: Tensor, embeddings: Tensor) -> None:
        """Momentum update of the rows at ``indices``, written out of place.

        The step's scores may still hold the old memory for their backward pass
        (the bank-product scoring multiplies with all of it), so the update makes
        a new tensor rather than editing the old one: one N×d copy per step,
        instead of the reference's B×(K+1)×d gather.

        A row whose embedding is not finite (a step that went bad) keeps its old
        value, so one bad step cannot poison the bank for the rest of the run.
        """
        embeddings = embeddings[last_occurrence(indices, self.size)].to(self.memory.dtype)
        current = self.memory.index_select(0, indices)
        blended = current.mul(self.momentum).add_(embeddings, alpha=1 - self.momentum)
        rows = torch.where(finite_rows(embeddings), F.normalize(blended, dim=1), current)
        self.memory = self.memory.index_copy(0, indices, rows)


class EmbeddingQueue(nn.Module):
    """A FIFO of the last ``size`` embeddings with their labels (MoCo-style, He et al. 2020).

    For datasets whose N×d bank would not fit: negatives come from the queue, and
    the positive is the other network's current embedding of the same image. Like
    MoCo's, the queue starts full of random unit vectors; they carry label −1 (no
    class), so they serve as negatives for every anchor until overwritten.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("memory", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.memory.shape[0]

    @torch.no_grad()
    def update(self, embeddings: Tensor, labels: Tensor) -> None:
        """Overwrite the oldest slots (out of place, like the memory bank, for the same reason).

        A slot whose new embedding is not finite keeps its old embedding and label.
        """
        count = min(embeddings.shape[0], self.size)
        embeddings, labels = embeddings[-count:].to(self.memory.dtype), labels[-count:]
        slots = (self.pointer + torch.arange(count, device=self.memory.device)) % self.size
        finite = finite_rows(embeddings)
        embeddings = torch.where(finite, embeddings, self.memory.index_select(0, slots))
        labels = torch.where(finite.squeeze(1), labels, self.labels.index_select(0, slots))
        self.memory = self.memory.index_copy(0, slots, embeddings)
        self.labels.index_copy_(0, slots, labels)
        self.pointer.copy_((self.pointer + count) % self.size)
