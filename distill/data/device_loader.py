"""Batches made on the training device from a uint8 copy of the whole dataset.

The reference pipeline decodes, crops, flips and normalises every image on its own,
in PIL, in loader worker processes. For a dataset small enough to hold in memory
(CIFAR: 50 000 × 32 × 32 × 3 bytes, 150 MiB) the :class:`DeviceLoader` does the same
work with a few batched tensor operations on the device the model trains on:

* the split is kept once, as a ``uint8`` tensor of shape ``N × C × H × W`` (NCHW,
  contiguous) on the device, its labels as ``int64`` beside it;
* each batch is gathered by index, zero-padded, and cropped and flipped by one flat
  gather (:func:`augment_batch`), then scaled to [0, 1] and normalised with the same
  float32 operations as torchvision's ``ToTensor`` and ``Normalize``;
* the data order is a permutation per epoch, a pure function of ``(seed, epoch)``
  drawn on the CPU (identical on every process); the crop offsets and flips are
  drawn on the device from a generator seeded by ``(seed, epoch, process_index)``.

A dataset opts in by having an ``in_memory_images()`` method returning
:class:`InMemoryImages` (see :class:`SupportsDeviceLoader`); CIFAR-10 and CIFAR-100
do. :func:`device_loader_unsupported` says why a dataset cannot.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from distill.data.epoch_order import (
    BATCH_AUGMENT_STREAM,
    IGNORED_LABEL,
    batches_per_epoch,
    epoch_order,
    shard_size,
    stream_seed,
)
from distill.data.placement import ONE_CPU_PROCESS, Placement
from distill.data.transforms import CROP_PADDING, normalize_batch, per_channel
from distill.data.views import SharedViews, TwoViews, ViewSet

__all__ = ["IGNORED_LABEL", "DeviceLoader", "InMemoryImages", "SupportsDeviceLoader", "augment_batch", "normalize_batch"]


@dataclass(frozen=True)
class InMemoryImages:
    """A whole split in memory, and how its items are made from it.

    ``images``: ``uint8`` array or tensor ``N × H × W × C`` (the layout torchvision's
    CIFAR keeps in ``.data``); ``labels``: ``int64[N]``; ``mean``/``std``: the
    per-channel normalisation applied after scaling to [0, 1]; ``augment``: whether
    items are randomly cropped (zero ``padding`` on each side, then an ``H × W`` crop)
    and flipped horizontally with probability 1/2, like torchvision's
    ``RandomCrop(H, padding=padding)`` + ``RandomHorizontalFlip()`` on a PIL image.
    """

    images: np.ndarray | torch.Tensor
    labels: torch.Tensor
    mean: Sequence[float]
    std: Sequence[float]
    augment: bool
    padding: int = CROP_PADDING


@runtime_checkable
class SupportsDeviceLoader(Protocol):
    """A dataset the :class:`DeviceLoader` can serve: it hands over its images as :class:`InMemoryImages`."""

    def in_memory_images(self) -> InMemoryImages: ...


def device_loader_unsupported(dataset: object) -> str | None:
    """Why ``dataset`` cannot be served by the device loader, or ``None`` when it can."""
    if not isinstance(dataset, SupportsDeviceLoader):
        return (
            f"{type(dataset).__name__} does not keep its images in memory as one uint8 array with "
            f"known normalisation and augmentation (it has no in_memory_images() method)"
        )
    source = dataset.in_memory_images()
    images = source.images
    dtype = images.dtype
    if dtype not in (np.uint8, torch.uint8) or images.ndim != 4:
        return f"its in-memory images are {dtype} of shape {tuple(images.shape)}, not uint8 N×H×W×C"
    if len(source.labels) != len(images):
        return f"it has {len(images)} images but {len(source.labels)} labels"
    return None


def augment_batch(
    images: torch.Tensor,
    offsets_y: torch.Tensor,
    offsets_x: torch.Tensor,
    flips: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    *,
    padding: int = CROP_PADDING,
    channels_last: bool = False,
) -> torch.Tensor:
    """Zero-pad, crop, flip and normalise a batch: a pure function of its arguments.

    ``images``: ``uint8 B×C×H×W``; ``offsets_y``/``offsets_x``: ``int64[B]`` in
    ``0..2·padding``, the top-left corner of each ``H × W`` crop in the padded image;
    ``flips``: ``bool[B]``, mirror the crop left-right. Sample ``b`` equals
    torchvision's ``pad(img, padding, fill=0)`` → ``crop(offsets_y[b], offsets_x[b], H, W)``
    → ``hflip`` (if ``flips[b]``) → ``to_tensor`` → ``normalize(mean, std)``.

    The crop and the flip are one gather: a flat index into the padded batch, built
    from the per-sample row and column grids, feeds ``torch.take``. Returns
    ``float32 B×C×H×W`` (channels-last memory when ``channels_last``).
    """
    b, c, h, w = images.shape
    device = images.device
    hp, wp = h + 2 * padding, w + 2 * padding
    padded = F.pad(images, (padding, padding, padding, padding))  # zero padding, as torchvision's fill=0
    columns = torch.arange(w, device=device)
    rows = offsets_y.to(device).view(b, 1) + torch.arange(h, device=device)  # B×H, padded coordinates
    cols = offsets_x.to(device).view(b, 1) + torch.where(flips.to(device).view(b, 1), columns.flip(0), columns)
    rows = rows * wp + (torch.arange(b, device=device) * (c * hp * wp)).view(b, 1)
    channels = torch.arange(c, device=device) * (hp * wp)
    if channels_last:  # gather straight into B×H×W×C, whose NCHW view is channels-last
        index = (rows.view(b, h, 1, 1) + cols.view(b, 1, w, 1)) + channels.view(1, 1, 1, c)
        out = torch.take(padded, index).permute(0, 3, 1, 2)
    else:
        index = (rows.view(b, 1, h, 1) + channels.view(1, c, 1, 1)) + cols.view(b, 1, 1, w)
        out = torch.take(padded, index)
    out = out.to(torch.float32)  # preserves the memory format
    return out.div_(255).sub_(per_channel(mean, device)).div_(per_channel(std, device))


def draw_augmentation(
    batch_size: int, padding: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(offsets_y, offsets_x, flips)`` for one batch, on the generator's device.

    Offsets are uniform on ``0..2·padding`` in each axis, independently, and a flip
    has probability 1/2: torchvision's ``RandomCrop.get_params`` and
    ``RandomHorizontalFlip`` draw the same distributions, one image at a time.
    """
    device = generator.device
    offsets = torch.randint(0, 2 * padding + 1, (2, batch_size), generator=generator, device=device)
    flips = torch.rand(batch_size, generator=generator, device=device) < 0.5
    return offsets[0], offsets[1], flips


class DeviceLoader:
    """Batches ``(inputs, labels, indices)`` of one split, made on ``placement.device``, for one process.

    ``placement`` (:class:`~distill.data.placement.Placement`) gives the device, this
    process's ``process_index`` among ``num_processes``, the ``seed`` and
    ``channels_last``; they are kept as attributes of the same names.

    ``shuffle=True`` (training): each epoch visits a fresh permutation of the
    dataset, a pure function of ``(seed, epoch)``. With ``num_processes > 1`` it
    is padded by wrapping around to a multiple of ``num_processes`` (as torch's
    ``DistributedSampler``) and process ``r`` takes every ``num_processes``-th
    position from ``r``: disjoint shards of equal length, covering the set.

    ``shuffle=False`` (evaluation): dataset order, contiguous shards of equal
    length; the last shards are filled up with items whose label and index are
    :data:`IGNORED_LABEL`, so that a count over labels ``>= 0`` summed over the
    processes sees every image exactly once (see :func:`distill.engine.evaluate.evaluate`).

    Either way every process yields ``len(loader)`` batches of ``batch_size``,
    the last one possibly partial (kept, as the reference's ``drop_last=False``).
    ``indices`` are dataset indices. Augmentation follows the dataset's own
    ``augment``; its draws come from a device generator seeded by
    ``(seed, epoch, process_index)``, so the same seed gives the same batches.
    Inputs are ``float32 B×C×H×W`` (channels-last memory when ``channels_last``),
    labels and indices ``int64``, all on ``device``.
    """

    #: Each process iterates its own shard; evaluation sums counts instead of gathering outputs.
    shards_itself = True

    def __init__(
        self,
        source: InMemoryImages,
        batch_size: int,
        *,
        shuffle: bool,
        placement: Placement = ONE_CPU_PROCESS,
        views: ViewSet | None = None,
    ) -> None:
        process_index, num_processes = placement.process_index, placement.num_processes
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if views is not None and not shuffle:
            raise ValueError("views are for training batches; an evaluation loader takes none")
        if not 0 <= process_index < num_processes:
            raise ValueError(f"process_index {process_index} is not in 0..{num_processes - 1}")
        self.placement = placement
        self.device = torch.device(placement.device)
        images = torch.as_tensor(source.images)
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 N×H×W×C, got {images.dtype} {tuple(images.shape)}")
        # N×H×W×C → N×C×H×W, moved first so that the transpose runs on the device.
        self.images = images.to(self.device).permute(0, 3, 1, 2).contiguous()
        self.labels = torch.as_tensor(source.labels, dtype=torch.long).to(self.device)
        if len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        self.mean = per_channel(source.mean, self.device)
        self.std = per_channel(source.std, self.device)
        self.augment, self.padding = source.augment, source.padding
        self.batch_size, self.shuffle = batch_size, shuffle
        self.process_index, self.num_processes = process_index, num_processes
        self.seed, self.channels_last, self.views = placement.seed, placement.channels_last, views
        self.epoch = 0
        self._skip = 0
        self._augment_generator = torch.Generator(device=self.device)

    @property
    def dataset_size(self) -> int:
        return len(self.images)

    @property
    def nbytes(self) -> int:
        """Device memory the split occupies (uint8 images and int64 labels)."""
        return self.images.numel() * self.images.element_size() + self.labels.numel() * self.labels.element_size()

    @property
    def shard_size(self) -> int:
        """Items this process visits per epoch, wrap-around or filler items included."""
        return shard_size(self.dataset_size, self.num_processes)

    def __len__(self) -> int:
        return batches_per_epoch(self.dataset_size, self.batch_size, self.num_processes)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order and augmentation the next iteration yields."""
        self.epoch = epoch

    def skip(self, batches: int) -> None:
        """Leave out the first ``batches`` batches of the next iteration (resuming mid-epoch).

        Their augmentation is still drawn (cheap: a few random numbers per image, no
        images made), so the batches that follow are exactly those of an
        uninterrupted epoch.
        """
        self._skip = batches

    def order(self, epoch: int | None = None) -> torch.Tensor:
        """This process's dataset indices for ``epoch`` (default: the current one), on the CPU.

        See :func:`~distill.data.epoch_order.epoch_order`; filler items of an
        unshuffled loader are :data:`IGNORED_LABEL`.
        """
        return epoch_order(
            self.dataset_size, seed=self.seed, epoch=self.epoch if epoch is None else epoch, shuffle=self.shuffle,
            process_index=self.process_index, num_processes=self.num_processes,
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor | TwoViews | SharedViews, torch.Tensor, torch.Tensor]]:
        host_order = self.order()  # the views' per-image seeds read it here, not from the device (no sync per batch)
        order = host_order.to(self.device)
        valid = order >= 0
        gather = order.clamp(min=0)
        labels = torch.where(valid, self.labels[gather], IGNORED_LABEL)
        if self.augment:
            self._augment_generator.manual_seed(
                stream_seed(self.seed, BATCH_AUGMENT_STREAM, self.epoch, self.process_index)
            )
        skipped, self._skip = self._skip, 0
        for start in range(0, len(order), self.batch_size):
            stop = min(start + self.batch_size, len(order))
            if skipped > 0:
                skipped -= 1
                if self.augment:
                    draw_augmentation(stop - start, self.padding, self._augment_generator)
                continue
            images = self.images.index_select(0, gather[start:stop])
            if self.augment:
                offsets_y, offsets_x, flips = draw_augmentation(stop - start, self.padding, self._augment_generator)
                inputs = augment_batch(
                    images, offsets_y, offsets_x, flips, self.mean, self.std,
                    padding=self.padding, channels_last=self.channels_last,
                )
            else:
                inputs = normalize_batch(images, self.mean, self.std, channels_last=self.channels_last)
            if self.views is not None:
                inputs = self.views.inputs(
                    inputs, images, self.epoch, host_order[start:stop].tolist(), self.mean, self.std,
                    channels_last=self.channels_last,
                )
            yield inputs, labels[start:stop], order[start:stop]

    def __repr__(self) -> str:
        return (
            f"DeviceLoader({self.dataset_size} images on {self.device}, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, augment={self.augment}, process {self.process_index}/{self.num_processes})"
        )
