"""Write a small, fake CIFAR-10 or CIFAR-100 in the exact on-disk format of the real one.

CIFAR can never be downloaded in an offline sandbox or CI, yet the CIFAR code path
(torchvision's loader, the file layout, the transforms) is the one that matters. A
fake copy lets tests and smoke runs exercise it end to end. It is loaded with
``data.verify: false``, since its files cannot match the official MD5 checksums.

The format matches the Python-2 pickles of the official archives: protocol 2,
dictionary keys and names stored as Python-2 byte strings (so ``pickle.load(f,
encoding="bytes")`` gives ``b"data"`` keys as the CIFAR page describes, and
torchvision's ``encoding="latin1"`` gives ``"data"``), ``data`` a ``uint8`` array of
shape ``N × 3072`` holding each image's red, then green, then blue plane, row-major.

Images are a class-specific colour and stripe pattern, randomly shifted, plus noise,
so a tiny training run can learn something from them.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import check_md5

from distill.errors import DataError

#: CIFAR-10's training images are split over this many batch files.
CIFAR10_TRAIN_BATCHES = 5
IMAGE_SIDE = 32
_CHUNK = 4096  # images generated at once, to bound memory for full-size copies
#: numpy's array reconstructor, whatever module the installed numpy keeps it in.
_NUMPY_RECONSTRUCT = np.empty(0, dtype=np.uint8).__reduce__()[0]


def _official(dataset: type[CIFAR10]) -> tuple[str, list[tuple[str, str]]]:
    """The folder and the ``(file name, official MD5)`` of every file of a torchvision CIFAR."""
    entries = [(name, md5) for name, md5 in dataset.train_list + dataset.test_list]
    return dataset.base_folder, entries + [(dataset.meta["filename"], dataset.meta["md5"])]


#: Per number of classes: the folder the real dataset unpacks to, and its files with their official MD5s.
OFFICIAL_FILES: dict[int, tuple[str, list[tuple[str, str]]]] = {100: _official(CIFAR100), 10: _official(CIFAR10)}


class ExistingDatasetError(DataError):
    """The folder :func:`write_fake_cifar` would write already holds CIFAR files.

    ``official`` names the files that match the real release's MD5: those are never
    overwritten. Otherwise the files go only with ``overwrite=True``;
    :meth:`describe` words that for the caller (``--force`` on the command line).
    """

    def __init__(self, directory: Path, present: list[str], official: list[str]) -> None:
        self.directory = directory
        self.present = present
        self.official = official
        super().__init__(self.describe("overwrite=True"))

    def describe(self, overwrite: str) -> str:
        """The message, naming ``overwrite`` as the way to replace a copy that is not the official one."""
        if self.official:
            verb = "matches" if len(self.official) == 1 else "match"
            return (
                f"{self.directory} holds the real CIFAR: {', '.join(self.official)} {verb} the official MD5. "
                f"A fake copy is never written over it, not even with {overwrite}: choose another folder "
                f"for the fake copy"
            )
        return (
            f"{self.directory} already holds CIFAR files ({', '.join(self.present)}); writing a fake copy "
            f"there would replace them. Choose another folder, or, if they are a fake or unwanted copy, "
            f"pass {overwrite} to overwrite them"
        )


def check_target(directory: Path, num_classes: int, *, overwrite: bool) -> None:
    """Refuse to write a fake CIFAR over existing CIFAR files; over the official ones, even with ``overwrite``.

    Raises:
        ExistingDatasetError: ``directory`` holds CIFAR files, and either ``overwrite``
            is off or one of them is an official file.
    """
    _, expected = OFFICIAL_FILES[num_classes]
    present = [name for name, _ in expected if (directory / name).is_file()]
    if not present:
        return
    official = [name for name, md5 in expected if name in present and check_md5(str(directory / name), md5)]
    if official or not overwrite:
        raise ExistingDatasetError(directory, present, official)


class _Python2Pickler(pickle._Pickler):
    """Protocol-2 pickler that writes ``bytes`` as Python 2 ``str`` and names numpy 1's reconstructor.

    Python 3 pickles ``bytes`` at protocol 2 as a call to ``_codecs.encode``, which
    ``encoding="latin1"`` would not turn into ``str``; the official files use the
    Python 2 string opcodes. numpy 2 names its array reconstructor
    ``numpy._core.multiarray._reconstruct``, which numpy 1 cannot import; the official
    files, like this writer, use ``numpy.core.multiarray._reconstruct``, which both read.
    The pure-Python pickler is used because the C one does not let ``bytes`` be overridden.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_python2_str(self, obj: bytes) -> None:
        size = len(obj)
        if size < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([size]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", size) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_python2_str

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if obj is _NUMPY_RECONSTRUCT:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def _dump(obj: dict[bytes, Any], path: Path) -> None:
    with path.open("wb") as file:
        _Python2Pickler(file, protocol=2).dump(obj)


def _spread_labels(size: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` labels in random order, every class appearing (almost) equally often."""
    return rng.permutation(np.arange(size) % num_classes)


class _ClassPatterns:
    """Per class: a base colour and an oriented stripe pattern; images are shifted, noisy copies."""

    def __init__(self, num_classes: int, rng: np.random.Generator) -> None:
        self.colour = rng.uniform(60, 195, size=(num_classes, 3, 1, 1))
        self.stripe_colour = rng.uniform(-1, 1, size=(num_classes, 3, 1, 1))
        angle = rng.uniform(0, np.pi, size=num_classes)
        cycles = rng.uniform(1.0, 4.0, size=num_classes)
        self.frequency = np.stack([np.cos(angle), np.sin(angle)], axis=1) * cycles[:, None]

    def render(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``uint8[N, 3072]`` images of the given labels, channel-planar and row-major."""
        out = np.empty((len(labels), 3 * IMAGE_SIDE * IMAGE_SIDE), dtype=np.uint8)
        grid = np.arange(IMAGE_SIDE) / IMAGE_SIDE
        for start in range(0, len(labels), _CHUNK):
            chunk = labels[start : start + _CHUNK]
            phase = rng.uniform(0, 2 * np.pi, size=(len(chunk), 1, 1))
            fy = self.frequency[chunk, 0, None, None]
            fx = self.frequency[chunk, 1, None, None]
            wave = np.sin(2 * np.pi * (fy * grid[:, None] + fx * grid[None, :]) + phase, dtype=np.float32)
            image = (self.colour[chunk] + 50.0 * self.stripe_colour[chunk] * wave[:, None]).astype(np.float32)
            image += 20.0 * rng.standard_normal(size=image.shape, dtype=np.float32)
            out[start : start + len(chunk)] = np.clip(image, 0, 255).round().reshape(len(chunk), -1)
        return out


def _batch(
    labels: np.ndarray, images: np.ndarray, label_key: bytes, batch_label: bytes, first_index: int
) -> dict[bytes, Any]:
    return {
        b"batch_label": batch_label,
        label_key: [int(label) for label in labels],
        b"data": images,
        b"filenames": [f"fake_{first_index + i:06d}.png".encode() for i in range(len(labels))],
    }


def write_fake_cifar(
    root: str | Path,
    *,
    num_classes: int = 100,
    train_size: int = 500,
    test_size: int = 100,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a fake CIFAR-100 (``num_classes=100``) or CIFAR-10 (``num_classes=10``) under ``root``.

    Writes ``root/cifar-100-python/{train,test,meta}`` or
    ``root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``. Files of
    a CIFAR already there are replaced only with ``overwrite=True``, and files that
    match the official release are never replaced (see :func:`check_target`). The
    same ``seed`` gives the same bytes.

    Returns:
        ``root``, the directory to give as the recipe's ``data.root`` (with
        ``data.verify: false``).

    Raises:
        ValueError: ``num_classes`` is not 10 or 100, or a split is too small to hold
            every class.
        ExistingDatasetError: the target folder already holds CIFAR files (nothing is written).
    """
    if num_classes not in (10, 100):
        raise ValueError(f"num_classes must be 10 (CIFAR-10) or 100 (CIFAR-100), got {num_classes}")
    for split, size in (("train_size", train_size), ("test_size", test_size)):
        if size < num_classes:
            raise ValueError(
                f"{split} must be at least num_classes ({num_classes}) so every class appears, got {size}"
            )
    root = Path(root).expanduser()
    folder, _ = OFFICIAL_FILES[num_classes]
    check_target(root / folder, num_classes, overwrite=overwrite)
    rng = np.random.default_rng(seed)
    patterns = _ClassPatterns(num_classes, rng)
    train_labels = _spread_labels(train_size, num_classes, rng)
    test_labels = _spread_labels(test_size, num_classes, rng)
    train_images = patterns.render(train_labels, rng)
    test_images = patterns.render(test_labels, rng)

    write = _write_cifar100 if num_classes == 100 else _write_cifar10
    write(root / folder, train_labels, train_images, test_labels, test_images)
    return root


def _write_cifar100(
    directory: Path,
    train_labels: np.ndarray,
    train_images: np.ndarray,
    test_labels: np.ndarray,
    test_images: np.ndarray,
) -> None:
    """CIFAR-100's layout: one train and one test pickle with fine and coarse labels, and ``meta``."""
    directory.mkdir(parents=True, exist_ok=True)
    classes_per_superclass = 5
    for name, labels, images, batch_label, first in (
        ("train", train_labels, train_images, b"training batch 1 of 1", 0),
        ("test", test_labels, test_images, b"testing batch 1 of 1", len(train_labels)),
    ):
        batch = _batch(labels, images, b"fine_labels", batch_label, first)
        batch[b"coarse_labels"] = [int(label) // classes_per_superclass for label in labels]
        _dump(batch, directory / name)
    _dump(
        {
            b"fine_label_names": [f"fake_class_{i:02d}".encode() for i in range(100)],
            b"coarse_label_names": [f"fake_superclass_{i:02d}".encode() for i in range(20)],
        },
        directory / "meta",
    )


def _write_cifar10(
    directory: Path,
    train_labels: np.ndarray,
    train_images: np.ndarray,
    test_labels: np.ndarray,
    test_images: np.ndarray,
) -> None:
    """CIFAR-10's layout: five training batches, ``test_batch`` and ``batches.meta``."""
    directory.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(train_labels), CIFAR10_TRAIN_BATCHES + 1).round().astype(int)
    for number, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:], strict=True), start=1):
        batch_label = f"training batch {number} of {CIFAR10_TRAIN_BATCHES}".encode()
        batch = _batch(train_labels[start:stop], train_images[start:stop], b"labels", batch_label, int(start))
        _dump(batch, directory / f"data_batch_{number}")
    _dump(
        _batch(test_labels, test_images, b"labels", b"testing batch 1 of 1", len(train_labels)),
        directory / "test_batch",
    )
    _dump(
        {
            b"num_cases_per_batch": int(bounds[1] - bounds[0]),
            b"label_names": [f"fake_class_{i}".encode() for i in range(10)],
            b"num_vis": 3 * IMAGE_SIDE * IMAGE_SIDE,
        },
        directory / "batches.meta",
    )
