"""The dataset registry and ``build_dataset``, the one entry point the trainer uses.

A dataset is added by writing one file with a builder function decorated by
:func:`register_dataset`. A builder has the signature::

    @register_dataset("name")
    def build(root, train, *, download, verify, augment, opt_a=..., opt_b=...) -> Dataset

Its extra keyword-only parameters are the dataset's options (the recipe's
``data.options``), each with a type annotation: that signature is their schema
(:func:`distill.schema.signature_schema`). A recipe's options are checked against
it when the recipe is loaded, and again by :func:`build_dataset`, so a misspelt
option fails with the list of valid ones instead of being silently ignored.

Every dataset a builder returns yields ``(image, label, index)`` and exposes
``labels``, ``num_classes``, ``input_shape`` and ``classes`` (see
:class:`DistillDataset`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch.utils.data import Dataset

from distill.errors import DataError
from distill.registry import Registry
from distill.schema import (
    KeyPath,
    SignatureSchema,
    ValidationIssue,
    check_options,
    signature_schema,
)

DatasetBuilder = Callable[..., Dataset]

#: The parameters every builder takes; anything else it accepts is an option.
_COMMON_PARAMETERS = ("root", "train", "download", "verify", "augment")


@runtime_checkable
class DistillDataset(Protocol):
    """What every dataset built by :func:`build_dataset` provides.

    ``__getitem__(i)`` returns ``(image: FloatTensor[C, H, W], label: int, index: int)``
    with ``index == i``: the contrastive losses keep a memory bank row per sample.
    """

    @property
    def labels(self) -> torch.Tensor:
        """All labels as a ``LongTensor[N]``, without loading any image."""
        ...

    @property
    def num_classes(self) -> int: ...

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of an image after the transforms."""
        ...

    @property
    def classes(self) -> list[str]: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]: ...


def builder_schema(builder: DatasetBuilder) -> SignatureSchema:
    """A dataset builder's options: its signature less the parameters every builder takes."""
    return signature_schema(builder, skip=_COMMON_PARAMETERS)


DATASETS: Registry[DatasetBuilder] = Registry("dataset", check=builder_schema)


def register_dataset(name: str) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Decorator adding a dataset builder under ``name``."""
    return DATASETS.register(name)


def list_datasets() -> list[str]:
    """Names of the registered datasets, sorted."""
    return DATASETS.names()


def dataset_options(name: str) -> dict[str, object]:
    """The options dataset ``name`` accepts, with their defaults."""
    return {option.name: option.default for option in builder_schema(DATASETS.get(name)).parameters.values()}


def check_dataset_options(name: str, options: dict[str, object], path: KeyPath = ("data", "options")) -> None:
    """Check ``data.options`` against dataset ``name``'s builder (names and types), before anything is read.

    Raises:
        UnknownNameError: ``name`` is not registered.
        ValidationIssue: at ``(*path, option)``: an unknown option (with the valid ones) or a wrong type.
    """
    check_options(options, builder_schema(DATASETS.get(name)), path, f"dataset {name!r}")


def require_root(root: Path | None, dataset: str) -> Path:
    """``root``, or a :class:`DataError` when a dataset stored on disk was given none."""
    if root is None:
        raise DataError(f"dataset {dataset!r} reads files from disk: set data.root to their directory")
    return root


def build_dataset(
    name: str,
    root: str | Path | None,
    train: bool,
    *,
    download: bool = False,
    verify: bool = True,
    augment: bool | None = None,
    **options: object,
) -> Dataset:
    """Build the train or test split of a registered dataset.

    Args:
        name: a registered dataset name (see :func:`list_datasets`).
        root: the directory holding the data; generated datasets ignore it and accept ``None``.
        train: the training split when true, the test split otherwise.
        download: fetch the data when it is missing, for datasets that can.
        verify: check the files' official checksums where the dataset has them;
            ``False`` is for deliberately generated or converted local copies.
        augment: apply the training augmentation; defaults to ``train``.
        options: dataset-specific settings (the recipe's ``data.options``).

    Raises:
        UnknownNameError: ``name`` is not registered (the message suggests close names).
        DataError: an option is unknown to the dataset, or the data is missing or invalid.
    """
    builder = DATASETS.get(name)
    try:
        check_dataset_options(name, options)
    except ValidationIssue as issue:
        raise DataError(f"{'.'.join(issue.path)}: {issue.message}") from None
    return builder(
        None if root is None else Path(root).expanduser(),
        train,
        download=download,
        verify=verify,
        augment=train if augment is None else augment,
        **options,
    )
