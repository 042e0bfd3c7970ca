"""Where a training process's batches land, and which shard and random streams they come from.

The device loader, the worker loader and ``build_loaders`` all need the same five
facts about the process they serve; they travel together as one :class:`Placement`
instead of five loose arguments passed three times over.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Placement:
    """Where a loader's batches land and which shard and stream they come from.

    * ``device``: the device the batches are yielded on. The device loader also keeps
      the whole split there and draws its crops and flips from a generator on it, so
      an exact resume of that path needs the same kind of device (a CPU and a CUDA
      generator draw different numbers from the same seed); the order does not
      depend on it.
    * ``process_index``, ``num_processes``: this process's shard of each epoch
      (``0 <= process_index < num_processes``). A run resumes exactly only with the
      same values, since they decide which items each process visits.
    * ``seed``: the recipe's seed, from which each epoch's order and every
      augmentation draw are derived (with the epoch and the position in it); the same
      seed gives the same batches, before and after a resume.
    * ``channels_last``: the inputs' memory format (channels-last when true); the
      values are the same either way.

    The defaults are one CPU process with seed 0 and plain NCHW inputs.
    """

    device: torch.device | str = "cpu"
    process_index: int = 0
    num_processes: int = 1
    seed: int = 0
    channels_last: bool = False


#: The default placement: one process on the CPU, seed 0, NCHW inputs (``Placement()``,
#: named once so that it can be a default argument).
ONE_CPU_PROCESS = Placement()
