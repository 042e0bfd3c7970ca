"""The training data order and augmentation seeds as pure functions of (seed, epoch, …).

Exact resume needs the future of a run to be computable from a few numbers. Both
data paths therefore derive everything random about the data from the recipe's
seed, the epoch and a position, never from a stream that has run for a while:

* :func:`epoch_order`: which dataset indices a process visits in an epoch, in what
  order (a permutation per epoch, sharded across processes);
* :func:`stream_seed`: independent 64-bit seeds for the order, the device loader's
  augmentation draws and the per-item augmentation of the DataLoader path.

The DataLoader path uses :class:`EpochBatchSampler` (the order, in batches of keys
``(epoch, index)``, with :meth:`~EpochBatchSampler.skip` to resume mid-epoch) and
:class:`EpochSeededItems` (each item's random transforms seeded by
``(seed, epoch, index)``), so an item looks the same whichever worker process
loads it, however many workers there are, and whether or not the run was resumed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

#: Stream tags: the permutation, the device loader's per-batch draws, the per-item transforms.
ORDER_STREAM, BATCH_AUGMENT_STREAM, ITEM_AUGMENT_STREAM = 0, 1, 2

#: Label (and index) of the filler items that even out the test shards of several processes.
IGNORED_LABEL = -1


def stream_seed(*words: int) -> int:
    """A 64-bit seed that is a pure function of ``words`` (independent streams for different words)."""
    entropy = [int(word) % 2**64 for word in words]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0])


def shard_size(dataset_size: int, num_processes: int) -> int:
    """Items each process visits per epoch, wrap-around or filler items included."""
    return math.ceil(dataset_size / num_processes)


def batches_per_epoch(dataset_size: int, batch_size: int, num_processes: int) -> int:
    """Batches each process yields per epoch, the last one possibly partial."""
    return math.ceil(shard_size(dataset_size, num_processes) / batch_size)


def epoch_order(
    dataset_size: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool,
    process_index: int = 0,
    num_processes: int = 1,
) -> torch.Tensor:
    """The dataset indices process ``process_index`` visits in ``epoch``, on the CPU.

    ``shuffle=True``: a permutation that is a pure function of ``(seed, epoch)``,
    padded by wrapping around to a multiple of ``num_processes`` (as torch's
    ``DistributedSampler``); process ``r`` takes every ``num_processes``-th position
    from ``r``: disjoint shards of equal length that cover the set.

    ``shuffle=False``: dataset order in contiguous shards of equal length; the last
    shards are filled up with :data:`IGNORED_LABEL`.
    """
    if not 0 <= process_index < num_processes:
        raise ValueError(f"process_index {process_index} is not in 0..{num_processes - 1}")
    n, p, r = dataset_size, num_processes, process_index
    shard = shard_size(n, p)
    total = shard * p
    if not shuffle:
        order = torch.arange(total)
        order[n:] = IGNORED_LABEL
        return order[r * shard : (r + 1) * shard]
    generator = torch.Generator().manual_seed(stream_seed(seed, ORDER_STREAM, epoch))
    permutation = torch.randperm(n, generator=generator)
    if total > n:
        permutation = permutation.repeat(math.ceil(total / n))[:total]
    return permutation[r::p]


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of keys ``(epoch, index)`` in the shuffled :func:`epoch_order` of one process.

    A ``DataLoader(EpochSeededItems(...), batch_sampler=...)`` built on it shards
    itself across processes (Accelerate need not re-shard it). :meth:`set_epoch`
    chooses the epoch; :meth:`skip` drops the first batches of the next iteration
    only, which is how a run resumed mid-epoch continues where it stopped without
    loading the images it had already trained on. The last batch may be partial.
    """

    def __init__(self, dataset_size: int, batch_size: int, *, seed: int, process_index: int = 0, num_processes: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.dataset_size, self.batch_size, self.seed = dataset_size, batch_size, seed
        self.process_index, self.num_processes = process_index, num_processes
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, batches: int) -> None:
        """Leave out the first ``batches`` batches of the next iteration (resuming mid-epoch)."""
        self._skip = batches

    def __len__(self) -> int:
        return batches_per_epoch(self.dataset_size, self.batch_size, self.num_processes)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = epoch_order(
            self.dataset_size, seed=self.seed, epoch=self.epoch, shuffle=True,
            process_index=self.process_index, num_processes=self.num_processes,
        ).tolist()
        start, self._skip = self._skip * self.batch_size, 0
        for begin in range(start, len(order), self.batch_size):
            yield [(self.epoch, index) for index in order[begin : begin + self.batch_size]]


class EpochSeededItems(Dataset):
    """A dataset read by ``(epoch, index)`` keys, each item's random transforms seeded by the key.

    Before ``dataset[index]`` runs, torch's and Python's global generators are
    seeded with ``stream_seed(seed, ITEM_AUGMENT_STREAM, epoch, index)`` inside a
    fork of their state, so the transforms' draws (torchvision's crops and flips
    use torch's generator) depend on nothing but the key, and the caller's
    generators are left as they were. The cost is a few microseconds per item.

    With ``views`` (a :class:`~distill.data.views.ViewSet`), an item is
    ``(input of each view slot..., label, index)``: a slot with its own view gets
    it drawn from the dataset's ``raw_image(index)`` and normalised with the
    dataset's ``mean``/``std``; a slot with the standard view gets the usual item.
    """

    def __init__(self, dataset: Dataset, seed: int, views: Any = None) -> None:
        self.dataset, self.seed, self.views = dataset, seed, views

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        item_seed = stream_seed(self.seed, ITEM_AUGMENT_STREAM, epoch, index)
        python_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed)
            random.seed(item_seed)
            try:
                item = self.dataset[index]
            finally:
                random.setstate(python_state)
        if self.views is None:
            return item
        stored = self.dataset.raw_image(index).unsqueeze(0)  # type: ignore[attr-defined]
        views = self.views.inputs(item[0].unsqueeze(0), stored, epoch, [index], self.dataset.mean, self.dataset.std)  # type: ignore[attr-defined]
        return (*(tensor[0] for tensor in views.tensors()), *item[1:])
