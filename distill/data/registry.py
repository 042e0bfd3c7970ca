"""The dataset registry and ``build_dataset``, the one entry point the trainer uses.

A dataset is added by writing one file with a builder function decorated by
:func:`register_dataset`. A builder has the signature::

    @register_dataset("name")
    def build(root, train, *, download, verify, augment, opt_a=..., opt_b=...) -> Dataset

Its extra keyword-only parameters are the dataset's options (the recipe's
``data.options``); :func:`build_dataset` checks option names against that
signature, so a misspelt option fails with the list of valid ones instead of
being silently ignored.

Every dataset a builder returns yields ``(image, label, index)`` and exposes
``labels``, ``num_classes``, ``input_shape`` and ``classes`` (see
:class:`DistillDataset`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch.utils.data import Dataset

from distill.errors import DataError
from distill.registry import Registry, did_you_mean

DatasetBuilder = Callable[..., Dataset]

DATASETS: Registry[DatasetBuilder] = Registry("dataset")

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


def register_dataset(name: str) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Decorator adding a dataset builder under ``name``."""
    return DATASETS.register(name)


def list_datasets() -> list[str]:
    """Names of the registered datasets, sorted."""
    return DATASETS.names()


def dataset_options(name: str) -> dict[str, object]:
    """The options dataset ``name`` accepts, with their defaults."""
    signature = inspect.signature(DATASETS.get(name))
    return {
        p.name: p.default
        for p in signature.parameters.values()
        if p.name not in _COMMON_PARAMETERS
        and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    }


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
    valid = dataset_options(name)
    accepts_any = any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(builder).parameters.values()
    )
    if not accepts_any:
        for option in options:
            if option not in valid:
                listing = ", ".join(sorted(valid)) if valid else "none"
                raise DataError(
                    f"unknown option {option!r} for dataset {name!r} (data.options)."
                    f"{did_you_mean(option, list(valid))} Valid options: {listing}"
                )
    return builder(
        None if root is None else Path(root).expanduser(),
        train,
        download=download,
        verify=verify,
        augment=train if augment is None else augment,
        **options,
    )
