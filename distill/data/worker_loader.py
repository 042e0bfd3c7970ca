"""The DataLoader path for training: per-image transforms in worker processes, resumable.

For datasets the device loader cannot hold (image folders, generated data), a
``DataLoader`` runs each item's transforms in worker processes. Wrapped here so
that it behaves like :class:`~distill.data.device_loader.DeviceLoader` towards the
trainer: it shards itself across processes, yields batches already on the
training device, and its data is a pure function of ``(seed, epoch, position)``
(see :mod:`distill.data.epoch_order`), so a run can stop anywhere and resume
bit-identically.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from distill.data.epoch_order import EpochBatchSampler, EpochSeededItems
from distill.data.placement import ONE_CPU_PROCESS, Placement
from distill.data.views import SharedViews, TwoViews, ViewSet


class WorkerLoader:
    """Training batches ``(inputs, labels, indices)`` from a ``DataLoader`` with worker processes.

    The batch sampler is an :class:`EpochBatchSampler` (this process's shard of the
    epoch's permutation) and the dataset an :class:`EpochSeededItems` (transforms
    seeded per item), so neither the number of workers nor a resume changes what is
    seen. ``placement`` (:class:`~distill.data.placement.Placement`) gives the shard
    (``process_index`` of ``num_processes``), the ``seed``, the device and the memory
    format. Workers persist across epochs; batches are copied to ``placement.device``
    without blocking (from pinned memory when ``pin_memory``).
    """

    #: Each process iterates its own shard (the trainer does not hand it to Accelerate).
    shards_itself = True

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        num_workers: int,
        placement: Placement = ONE_CPU_PROCESS,
        pin_memory: bool = False,
        views: ViewSet | None = None,
    ) -> None:
        self.placement = placement
        self.device = torch.device(placement.device)
        self.channels_last, self.views = placement.channels_last, views
        self.sampler = EpochBatchSampler(
            len(dataset),  # type: ignore[arg-type]
            batch_size,
            seed=placement.seed,
            process_index=placement.process_index,
            num_processes=placement.num_processes,
        )
        self.loader = DataLoader(
            EpochSeededItems(dataset, placement.seed, views),
            batch_sampler=self.sampler,
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=num_workers > 0,
        )

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order and augmentation the next iteration yields."""
        self.sampler.set_epoch(epoch)

    def skip(self, batches: int) -> None:
        """Leave out the first ``batches`` batches of the next iteration (resuming mid-epoch)."""
        self.sampler.skip(batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor | TwoViews | SharedViews, torch.Tensor, torch.Tensor]]:
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format

        def to_device(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.to(self.device, non_blocking=True, memory_format=memory_format)

        for *images, labels, indices in self.loader:
            inputs = self.views.pack([to_device(x) for x in images]) if self.views is not None else to_device(images[0])
            yield inputs, labels.to(self.device, non_blocking=True), indices.to(self.device, non_blocking=True)

    def __repr__(self) -> str:
        return (
            f"WorkerLoader({self.sampler.dataset_size} items, batch_size={self.sampler.batch_size}, "
            f"{self.loader.num_workers} workers, process {self.sampler.process_index}/{self.sampler.num_processes})"
        )
