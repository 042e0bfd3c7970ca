"""Datasets and data loaders for a recipe."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from distill.data import build_dataset
from distill.errors import DataError
from distill.recipe.schema import DataSpec


@dataclass
class DataBundle:
    train_set: Dataset
    test_set: Dataset
    train_loader: DataLoader
    test_loader: DataLoader


def build_datasets(spec: DataSpec) -> tuple[Dataset, Dataset]:
    """The recipe's training (augmented) and test (plain) sets."""
    common = dict(download=spec.download, verify=spec.verify, **spec.options)
    train_set = build_dataset(spec.dataset, spec.root, train=True, **common)
    test_set = build_dataset(spec.dataset, spec.root, train=False, **common)
    return train_set, test_set


def build_loaders(spec: DataSpec, train_set: Dataset, test_set: Dataset) -> DataBundle:
    """Shuffled training loader (last partial batch kept, as the reference) and ordered test loader."""
    if spec.batch_size > len(train_set):
        raise DataError(
            f"data.batch_size {spec.batch_size} is larger than the training set ({len(train_set)} samples); "
            f"lower data.batch_size"
        )
    workers = dict(
        num_workers=spec.num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=spec.num_workers > 0,
    )
    train_loader = DataLoader(train_set, batch_size=spec.batch_size, shuffle=True, drop_last=False, **workers)
    test_loader = DataLoader(test_set, batch_size=spec.test_batch_size, shuffle=False, **workers)
    return DataBundle(train_set, test_set, train_loader, test_loader)
