"""Datasets and data loaders for a recipe.

Two data paths, chosen by the recipe's ``data.loader``:

* ``device``: :class:`~distill.data.device_loader.DeviceLoader` keeps the whole split
  on the training device as uint8 and makes each batch there (crop, flip and
  normalisation as batched tensor operations); it shards itself across processes,
  so the trainer does not hand it to ``accelerator.prepare``. Datasets that provide
  ``in_memory_images()`` support it: CIFAR-10 and CIFAR-100.
* ``workers``: a ``DataLoader`` whose worker processes run the dataset's per-image
  transforms, with persistent workers and pinned memory (when CUDA is available).
  For training it is wrapped in :class:`~distill.data.worker_loader.WorkerLoader`,
  which shards itself and seeds each item's transforms by ``(seed, epoch, index)``;
  the test loader is left to Accelerate to shard.

Either way the training loader's batches are a pure function of the seed, the
epoch and the position in it (``set_epoch``, ``skip``): what exact resume needs.

``auto`` (the default) takes ``device`` when the dataset supports it, else ``workers``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from distill.data import build_dataset
from distill.data.device_loader import (
    DeviceLoader,
    SupportsDeviceLoader,
    device_loader_unsupported,
)
from distill.data.placement import Placement
from distill.data.views import ViewSet
from distill.data.worker_loader import WorkerLoader
from distill.errors import DataError
from distill.recipe.schema import DataSpec


@dataclass
class DataBundle:
    """The two splits and their loaders.

    The training loader always shards itself and yields batches on the device;
    ``on_device``: the test loader does too (else it is a plain ``DataLoader`` for
    ``accelerator.prepare``).
    """

    train_set: Dataset
    test_set: Dataset
    train_loader: Any  # DeviceLoader or WorkerLoader
    test_loader: Any  # DeviceLoader or DataLoader
    on_device: bool = False
    description: str = "DataLoader"


def build_datasets(spec: DataSpec) -> tuple[Dataset, Dataset]:
    """The recipe's training (augmented) and test (plain) sets."""
    common = dict(download=spec.download, verify=spec.verify, **spec.options)
    train_set = build_dataset(spec.dataset, spec.root, train=True, **common)
    test_set = build_dataset(spec.dataset, spec.root, train=False, **common)
    return train_set, test_set


def use_device_loader(spec: DataSpec, train_set: Dataset, test_set: Dataset) -> bool:
    """Whether ``spec.loader`` (``auto``/``device``/``workers``) means the device loader for these sets.

    Raises:
        DataError: ``device`` was asked for a dataset that cannot be held on the device.
    """
    if spec.loader == "workers":
        return False
    reason = device_loader_unsupported(train_set) or device_loader_unsupported(test_set)
    if reason is None:
        return True
    if spec.loader == "device":
        raise DataError(
            f"data.loader=device: dataset {spec.dataset!r} cannot be held on the device: {reason}. "
            f"Use data.loader=workers (or auto, which picks workers for it)."
        )
    return False


def views_note(views: ViewSet | None) -> str:
    """What the data path's log line adds for views: ``; 2 views per step, each for both networks: ...``."""
    return "" if views is None else f"; {views.describe()}"


def build_loaders(
    spec: DataSpec,
    train_set: Dataset,
    test_set: Dataset,
    placement: Placement,
    views: ViewSet | None = None,
) -> DataBundle:
    """Shuffled training loader (last partial batch kept, as the reference) and ordered test loader.

    ``placement`` (device, process index and count, seed, channels-last) serves the
    training loader (and the device test loader), which shards itself.
    ``views``: the training batches carry a teacher view and a student view
    (:class:`~distill.data.views.TwoViews`) or the shared views
    (:class:`~distill.data.views.SharedViews`); the test batches never do.

    Raises:
        DataError: ``views`` on the worker path for a dataset that cannot hand out
            its stored images (no ``raw_image``).
    """
    if spec.batch_size > len(train_set):
        raise DataError(
            f"data.batch_size {spec.batch_size} is larger than the training set ({len(train_set)} samples); "
            f"lower data.batch_size"
        )
    if use_device_loader(spec, train_set, test_set):
        assert isinstance(train_set, SupportsDeviceLoader) and isinstance(test_set, SupportsDeviceLoader)
        train_loader = DeviceLoader(
            train_set.in_memory_images(), spec.batch_size, shuffle=True, placement=placement, views=views
        )
        test_loader = DeviceLoader(test_set.in_memory_images(), spec.test_batch_size, shuffle=False, placement=placement)
        mib = (train_loader.images.nbytes + test_loader.images.nbytes) / 2**20
        description = (
            f"device-resident uint8 {spec.dataset} ({len(train_set)} + {len(test_set)} images, {mib:.0f} MiB) "
            f"on {train_loader.device}, batches made on the device"
        ) + views_note(views)
        return DataBundle(train_set, test_set, train_loader, test_loader, on_device=True, description=description)
    if views is not None and not hasattr(train_set, "raw_image"):
        raise DataError(
            f"data.views: dataset {spec.dataset!r} cannot hand out its stored images (no raw_image method), so "
            f"its training images cannot be given two views; remove data.views or use a dataset that supports "
            f"them (cifar100, cifar10, folder)"
        )
    pin_memory = torch.cuda.is_available()
    train_loader = WorkerLoader(
        train_set, spec.batch_size, num_workers=spec.num_workers, placement=placement, pin_memory=pin_memory,
        views=views,
    )
    test_loader = DataLoader(
        test_set, batch_size=spec.test_batch_size, shuffle=False, num_workers=spec.num_workers,
        pin_memory=pin_memory, persistent_workers=spec.num_workers > 0,
    )
    processes = f"{spec.num_workers} worker(s)" if spec.num_workers > 0 else "no worker processes"
    description = f"DataLoader, {processes}{', pinned memory' if pin_memory else ''}" + views_note(views)
    return DataBundle(train_set, test_set, train_loader, test_loader, on_device=False, description=description)
