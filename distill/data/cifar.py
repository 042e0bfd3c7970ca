"""CIFAR-10 and CIFAR-100 from torchvision's on-disk format, with actionable errors.

The datasets subclass torchvision's ``CIFAR10``/``CIFAR100``, so the files, the
download and its checksums are exactly torchvision's. What this module adds:

* errors that say which directory was searched, which files were expected there
  and what to do, instead of torchvision's "Dataset not found or corrupted";
* a missing file and a checksum mismatch are told apart;
* ``verify=False`` (the recipe's ``data.verify: false``) skips only the MD5
  comparison, for locally generated or converted copies such as the ones
  :func:`distill.data.write_fake_cifar` writes; the files must still all exist and
  unpickle into well-formed images and labels;
* items are ``(image, label, index)`` and the dataset exposes ``labels``,
  ``num_classes``, ``input_shape`` and ``classes``;
* ``in_memory_images()`` hands the whole split (uint8 images, labels, normalisation,
  augmentation) to :class:`distill.data.device_loader.DeviceLoader`, which makes
  the same items in batches on the training device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import check_md5, download_and_extract_archive

from distill.data.device_loader import InMemoryImages
from distill.data.indexed import IndexedTargetsMixin
from distill.data.registry import register_dataset, require_root
from distill.data.transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    CROP_PADDING,
    Stats,
    cifar_transform,
)
from distill.errors import DataError

#: Where people can fetch the archives by hand.
CIFAR_HOMEPAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"


class _CifarOnDisk(IndexedTargetsMixin):
    """Checks, downloads and indexing shared by both CIFARs; mixed in before torchvision's class.

    The torchvision class supplies ``base_folder``, ``url``, ``filename``,
    ``tgz_md5``, ``train_list``, ``test_list`` and ``meta``.
    """

    display_name: ClassVar[str]
    mean: ClassVar[Stats]
    std: ClassVar[Stats]

    base_folder: str
    url: str
    filename: str
    tgz_md5: str
    train_list: list[list[Any]]
    test_list: list[list[Any]]
    meta: dict[str, Any]
    data: np.ndarray
    targets: list[int]
    classes: list[str]

    def __init__(self, root: str | Path, train: bool, *, download: bool, verify: bool, augment: bool) -> None:
        root = Path(root).expanduser()
        self.augment = augment
        if download:
            self._download(root, verify)
        self._check_files(root, verify)
        # The checksums were compared above (or deliberately skipped): torchvision's
        # own check, which runs again on load, only needs to see that the files exist.
        self.train_list = [[name, None] for name, _ in self.train_list]
        self.test_list = [[name, None] for name, _ in self.test_list]
        self.meta = {**self.meta, "md5": None}
        try:
            super().__init__(  # type: ignore[call-arg]
                str(root), train=train, transform=cifar_transform(self.mean, self.std, augment)
            )
        except Exception as exc:  # unpickling arbitrary bytes can raise almost anything
            raise DataError(
                f"{self.display_name} files in {root / self.base_folder} could not be read "
                f"({type(exc).__name__}: {exc}). They are damaged or not in the CIFAR "
                f"python format; re-download them (data.download: true) or regenerate the "
                f"local copy."
            ) from exc
        self._check_contents(root)

    @property
    def _expected_files(self) -> list[tuple[str, str]]:
        """``(file name, official MD5)`` of every file of the dataset, both splits and meta."""
        entries = [(name, md5) for name, md5 in type(self).train_list + type(self).test_list]
        return entries + [(type(self).meta["filename"], type(self).meta["md5"])]

    def _missing_files(self, directory: Path) -> list[str]:
        return [name for name, _ in self._expected_files if not (directory / name).is_file()]

    def _download(self, root: Path, verify: bool) -> None:
        """torchvision's download and extraction, unless the files are already in place."""
        directory = root / self.base_folder
        if not self._missing_files(directory) and (not verify or not self._bad_checksums(directory)):
            return
        try:
            download_and_extract_archive(self.url, str(root), filename=self.filename, md5=self.tgz_md5)
        except Exception as exc:  # network errors, a truncated archive, a wrong MD5, a full disk
            raise DataError(
                f"could not download {self.display_name} from {self.url} into {root} "
                f"({type(exc).__name__}: {exc}). Without network access, download "
                f"{self.filename} from {CIFAR_HOMEPAGE} on another machine, extract it into "
                f"{root} (it unpacks to {self.base_folder}/) and set data.download: false."
            ) from exc

    def _bad_checksums(self, directory: Path) -> list[str]:
        return [
            name
            for name, md5 in self._expected_files
            if md5 is not None and not check_md5(str(directory / name), md5)
        ]

    def _check_files(self, root: Path, verify: bool) -> None:
        """Raise a :class:`DataError` saying what to do when files are missing or not official."""
        directory = root / self.base_folder
        expected = [name for name, _ in self._expected_files]
        missing = self._missing_files(directory)
        if missing:
            found = "" if not directory.is_dir() else f" ({', '.join(missing)} missing)"
            hint = ""
            if root.name == self.base_folder:
                hint = f" data.root should be the directory containing {self.base_folder}/: {root.parent}."
            raise DataError(
                f"{self.display_name} not found: searched {directory} for the files "
                f"{', '.join(expected)}{found}.{hint} Set data.download: true in the recipe to "
                f"download it, or download {self.filename} from {CIFAR_HOMEPAGE} and extract "
                f"it into {root} (it unpacks to {self.base_folder}/)."
            )
        if verify:
            bad = self._bad_checksums(directory)
            if bad:
                raise DataError(
                    f"{self.display_name} in {directory}: {', '.join(bad)} failed the MD5 checksum "
                    f"of the official release, so the files are corrupted or not the official "
                    f"ones. Re-download them (delete {directory} and set data.download: true), "
                    f"or, for a deliberately generated or converted local copy, set "
                    f"data.verify: false."
                )

    def _check_contents(self, root: Path) -> None:
        """Labels must match the images one to one and name a class of the meta file."""
        directory = root / self.base_folder
        if len(self.targets) != len(self.data):
            raise DataError(
                f"{self.display_name} in {directory} has {len(self.data)} images but "
                f"{len(self.targets)} labels; regenerate or re-download it."
            )
        if self.targets and not 0 <= min(self.targets) <= max(self.targets) < len(self.classes):
            raise DataError(
                f"{self.display_name} in {directory} has labels outside 0..{len(self.classes) - 1} "
                f"(the meta file names {len(self.classes)} classes); regenerate or re-download it."
            )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, 32, 32)

    def raw_image(self, index: int) -> torch.Tensor:
        """Image ``index`` as stored, ``uint8 3×32×32``: what ``data.views`` augment (see ``distill.data.views``)."""
        return torch.from_numpy(self.data[index]).permute(2, 0, 1).contiguous()

    def in_memory_images(self) -> InMemoryImages:
        """The split as the device loader takes it: what ``cifar_transform`` does to each item, batched."""
        return InMemoryImages(
            images=self.data,  # uint8 N×32×32×3
            labels=self.labels,
            mean=self.mean,
            std=self.std,
            augment=self.augment,
            padding=CROP_PADDING,
        )


class CIFAR100Dataset(_CifarOnDisk, CIFAR100):
    """CIFAR-100 (fine labels) in ``ROOT/cifar-100-python/{train,test,meta}``."""

    display_name = "CIFAR-100"
    mean = CIFAR100_MEAN
    std = CIFAR100_STD


class CIFAR10Dataset(_CifarOnDisk, CIFAR10):
    """CIFAR-10 in ``ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``."""

    display_name = "CIFAR-10"
    mean = CIFAR10_MEAN
    std = CIFAR10_STD


@register_dataset("cifar100")
def build_cifar100(
    root: Path | None, train: bool, *, download: bool, verify: bool, augment: bool
) -> CIFAR100Dataset:
    """CIFAR-100; augmentation is a zero-padded random 32×32 crop and a horizontal flip."""
    return CIFAR100Dataset(
        require_root(root, "cifar100"), train, download=download, verify=verify, augment=augment
    )


@register_dataset("cifar10")
def build_cifar10(
    root: Path | None, train: bool, *, download: bool, verify: bool, augment: bool
) -> CIFAR10Dataset:
    """CIFAR-10; augmentation is a zero-padded random 32×32 crop and a horizontal flip."""
    return CIFAR10Dataset(
        require_root(root, "cifar10"), train, download=download, verify=verify, augment=augment
    )
