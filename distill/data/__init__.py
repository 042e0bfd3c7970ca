"""Datasets: CIFAR-100, CIFAR-10, users' image folders and a generated quickstart set.

``build_dataset(name, root, train, download=..., verify=..., augment=..., **options)``
builds one split; ``list_datasets()`` lists the names. Every dataset yields
``(image, label, index)`` and exposes ``labels``, ``num_classes``, ``input_shape``
and ``classes``. A new dataset is one file with a builder decorated by
``@register_dataset("name")``, imported below.

``write_fake_cifar`` writes a small CIFAR in the official format for offline tests.
"""

# Importing the dataset files registers their builders; strong_view registers the view ``fixmatch_strong``.
from distill.data import cifar, folder, strong_view, synthetic  # noqa: E402,F401
from distill.data.fake_cifar import write_fake_cifar
from distill.data.registry import (
    DistillDataset,
    build_dataset,
    dataset_options,
    list_datasets,
    register_dataset,
)

__all__ = [
    "DistillDataset",
    "build_dataset",
    "dataset_options",
    "list_datasets",
    "register_dataset",
    "write_fake_cifar",
]
