"""CIFAR-10 and CIFAR-100 from torchvision's on-disk format, with actionable errors.

The datasets subclass torchvision's ``CIFAR10``/``CIFAR100``, so the files, the
download and its checksums are exactly torchvision's. What this module adds:

* errors that say which directory was searched, which files were expected there
  and what to do, instead of torchvision's "Dataset not found or corrupted";
* the files are unpickled by :mod:`distill.data.safe_pickle`, which admits only
  the plain data and numpy arrays of the format: a file that would run code (a
  planted ``os.system``) is refused, naming the file and the global, and nothing in
  it runs. This holds with and without ``verify``, for both splits and the meta
  file (torchvision's own ``pickle.load`` is never reached);
* a missing file and a checksum mismatch are told apart; files that are all present
  are never downloaded over, so a checksum mismatch is reported as one, with the
  choice between ``data.verify: false`` (a copy made on purpose) and re-downloading
  (a damaged one);
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
from torchvision.datasets import CIFAR10, CIFAR100, VisionDataset
from torchvision.datasets.utils import check_md5, download_and_extract_archive

from distill.data.advice import DataSettings, WordedDataError
from distill.data.device_loader import InMemoryImages
from distill.data.indexed import IndexedTargetsMixin
from distill.data.registry import register_dataset, require_root
from distill.data.safe_pickle import RefusedGlobalError, load_restricted
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
#: Values per image in a CIFAR batch row: 3 colour planes of 32 × 32.
IMAGE_VALUES = 3 * 32 * 32


def _text(value: Any) -> Any:
    """Python 3 ``bytes`` keys and names as ``str`` (latin-1, as Python 2 strings are read); anything else as is."""
    return value.decode("latin1") if isinstance(value, bytes) else value


def _is_integer(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class _CifarOnDisk(IndexedTargetsMixin):
    """Checks, downloads, safe loading and indexing shared by both CIFARs; mixed in before torchvision's class.

    The torchvision class supplies ``base_folder``, ``url``, ``filename``,
    ``tgz_md5``, ``train_list``, ``test_list``, ``meta`` and ``__getitem__``; its
    ``__init__`` and ``_load_meta``, which read the files with plain ``pickle.load``,
    are replaced here by :meth:`_read_batch` and :meth:`_load_meta`, which read them
    with :func:`distill.data.safe_pickle.load_restricted`.
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
    root: str
    data: np.ndarray
    targets: list[int]
    classes: list[str]
    class_to_idx: dict[str, int]

    def __init__(self, root: str | Path, train: bool, *, download: bool, verify: bool, augment: bool) -> None:
        root = Path(root).expanduser()
        self.augment = augment
        if download:
            self._download(root)
        self._check_files(root, verify)
        # torchvision's CIFAR10.__init__ is skipped on purpose: it unpickles with plain pickle.load.
        VisionDataset.__init__(self, str(root), transform=cifar_transform(self.mean, self.std, augment))  # type: ignore[arg-type]
        self.train = train
        directory = root / self.base_folder
        batches = [self._read_batch(directory / name) for name, _ in (self.train_list if train else self.test_list)]
        self.data = np.vstack([images for images, _ in batches]).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
        self.targets = [label for _, labels in batches for label in labels]
        self._load_meta()
        self._check_contents(root)

    @property
    def _expected_files(self) -> list[tuple[str, str]]:
        """``(file name, official MD5)`` of every file of the dataset, both splits and meta."""
        entries = [(name, md5) for name, md5 in type(self).train_list + type(self).test_list]
        return entries + [(type(self).meta["filename"], type(self).meta["md5"])]

    def _missing_files(self, directory: Path) -> list[str]:
        return [name for name, _ in self._expected_files if not (directory / name).is_file()]

    def _download(self, root: Path) -> None:
        """torchvision's download and extraction, unless every file is already in place.

        Files that are all there are never downloaded over, checksum or not: a mismatch
        is reported by :meth:`_check_files` (a converted copy needs ``data.verify: false``,
        a damaged one deleting), instead of overwriting the user's files or, offline,
        failing as a download.
        """
        if not self._missing_files(root / self.base_folder):
            return
        try:
            download_and_extract_archive(self.url, str(root), filename=self.filename, md5=self.tgz_md5)
        except Exception as exc:  # network errors, a truncated archive, a wrong MD5, a full disk
            detail = f"{type(exc).__name__}: {exc}"  # bound now: `exc` is unset after the except block
            raise WordedDataError(
                lambda s: f"could not download {self.display_name} from {self.url} into {root} "
                f"({detail}). Without network access, download "
                f"{self.filename} from {CIFAR_HOMEPAGE} on another machine, extract it into "
                f"{root} (it unpacks to {self.base_folder}/) and {s.no_download or 'do not download'}."
            ) from exc

    def _bad_checksums(self, directory: Path) -> list[str]:
        return [
            name
            for name, md5 in self._expected_files
            if md5 is not None and not check_md5(str(directory / name), md5)
        ]

    def _get_again(self, root: Path, settings: DataSettings) -> str:
        """How to replace the files with the official ones, in the words of ``settings``."""
        directory = root / self.base_folder
        by_hand = f"download {self.filename} from {CIFAR_HOMEPAGE} and extract it into {root}"
        if settings.download is None:
            return f"delete {directory}, {by_hand}"
        return f"delete {directory} and {settings.download} to download it again (or {by_hand})"

    def _check_files(self, root: Path, verify: bool) -> None:
        """Raise a :class:`WordedDataError` saying what to do when files are missing or not official."""
        directory = root / self.base_folder
        expected = [name for name, _ in self._expected_files]
        missing = self._missing_files(directory)
        if missing:
            found = "" if not directory.is_dir() else f" ({', '.join(missing)} missing)"

            def not_found(s: DataSettings) -> str:
                hint = ""
                if root.name == self.base_folder:
                    hint = f" {s.root} should be the directory containing {self.base_folder}/: {root.parent}."
                get = f"{s.download[0].upper()}{s.download[1:]} to download it, or download" if s.download else "Download"
                return (
                    f"{self.display_name} not found: searched {directory} for the files "
                    f"{', '.join(expected)}{found}.{hint} {get} {self.filename} from {CIFAR_HOMEPAGE} "
                    f"and extract it into {root} (it unpacks to {self.base_folder}/)."
                )

            raise WordedDataError(not_found)
        if verify:
            bad = self._bad_checksums(directory)
            if bad:
                raise WordedDataError(
                    lambda s: f"{self.display_name} in {directory}: checksum mismatch: {', '.join(bad)} failed "
                    f"the MD5 checksum of the official release, so they are not the official files. For a "
                    f"copy you generated or converted yourself (e.g. with `distill fake-cifar`), {s.skip_verify}. "
                    f"If it is meant to be the official release, it is damaged: {self._get_again(root, s)}."
                )

    def _unpickle(self, path: Path) -> dict[str, Any]:
        """The dict pickled in ``path``, read by the restricted unpickler, its keys as ``str``.

        A file that names any global beyond numpy's array constructors is refused before
        that global is imported, so a planted payload never runs.
        """
        try:
            entry = load_restricted(path)
        except RefusedGlobalError as refused:
            name = refused.qualified_name  # bound now: `refused` is unset after the except block
            raise WordedDataError(
                lambda s: f"{self.display_name} file {path} was refused: it is a pickle that asks to call or "
                f"build {name}, which a CIFAR file never holds (only dicts, lists, strings, "
                f"bytes, numbers and numpy arrays), so loading it could run arbitrary code; nothing in it was "
                f"run. Do not use this copy: {self._get_again(Path(self.root), s)}."
            ) from None
        except Exception as exc:  # unpickling arbitrary bytes can raise almost anything
            detail = f"{type(exc).__name__}: {exc}"
            raise WordedDataError(
                lambda s: f"{self.display_name} file {path} could not be read ({detail}): "
                f"it is damaged or not in the CIFAR python format. Regenerate your local copy, or "
                f"{self._get_again(Path(self.root), s)}."
            ) from exc
        if not isinstance(entry, dict):
            raise DataError(
                f"{self.display_name} file {path} holds a {type(entry).__name__}, not the dict of the CIFAR "
                f"python format; regenerate or re-download it."
            )
        return {_text(key): value for key, value in entry.items()}

    def _field(self, entry: dict[str, Any], keys: tuple[str, ...], path: Path) -> Any:
        """The value of the first of ``keys`` that ``entry`` holds; a :class:`DataError` naming them all if none."""
        for key in keys:
            if key in entry:
                return entry[key]
        raise DataError(
            f"{self.display_name} file {path} has no {' or '.join(repr(key) for key in keys)} key "
            f"(it has {', '.join(repr(key) for key in entry) or 'none'}); it is not a CIFAR file of this "
            f"dataset: regenerate or re-download it."
        )

    def _read_batch(self, path: Path) -> tuple[np.ndarray, list[int]]:
        """The ``uint8 N×3072`` images and ``N`` labels of one batch file (``fine_labels`` for CIFAR-100)."""
        entry = self._unpickle(path)
        images = self._field(entry, ("data",), path)
        labels = self._field(entry, ("labels", "fine_labels"), path)
        if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 2
                and images.shape[1] == IMAGE_VALUES):
            shape = f"{images.dtype} array of shape {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
            raise DataError(
                f"{self.display_name} file {path}: 'data' is a {shape}, but CIFAR stores uint8 rows of "
                f"{IMAGE_VALUES} values (N × 3 × 32 × 32); regenerate or re-download it."
            )
        if not (isinstance(labels, (list, tuple, np.ndarray)) and all(_is_integer(label) for label in labels)):
            raise DataError(
                f"{self.display_name} file {path}: the labels are not a list of integers; regenerate or re-download it."
            )
        if len(labels) != len(images):
            raise DataError(
                f"{self.display_name} file {path} has {len(images)} images but {len(labels)} labels; "
                f"regenerate or re-download it."
            )
        return images, [int(label) for label in labels]

    def _load_meta(self) -> None:
        """The class names of the meta file, read safely (replaces torchvision's ``pickle.load``)."""
        path = Path(self.root) / self.base_folder / self.meta["filename"]
        names = self._field(self._unpickle(path), (self.meta["key"],), path)
        if not (isinstance(names, (list, tuple)) and all(isinstance(name, (str, bytes)) for name in names)):
            raise DataError(
                f"{self.display_name} file {path}: {self.meta['key']!r} is not a list of class names; "
                f"regenerate or re-download it."
            )
        self.classes = [_text(name) for name in names]
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}

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
