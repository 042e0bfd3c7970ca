"""Users' own images, one sub-folder per class: ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*``.

The layout is torchvision's ``ImageFolder`` (``ROOT/val`` is accepted instead of
``ROOT/test``). A class's label is its position in the sorted list of the training
split's class folders, so the test split must hold exactly the same class folders;
otherwise a model would be scored against shuffled labels. Hidden folders such as
``.ipynb_checkpoints`` are not classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms.functional import pil_to_tensor

from distill.data.indexed import IndexedTargetsMixin
from distill.data.registry import register_dataset, require_root
from distill.data.transforms import IMAGENET_MEAN, IMAGENET_STD, fixed_size, folder_transform
from distill.errors import DataError

TRAIN_SPLIT = "train"
#: Names accepted for the evaluation split, in order of preference.
TEST_SPLITS = ("test", "val")


def class_folders(directory: Path) -> list[str]:
    """Sorted names of the visible sub-folders of ``directory``: the classes of a split."""
    return sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def split_directory(root: Path, train: bool) -> Path:
    """``ROOT/train``, or ``ROOT/test`` (``ROOT/val`` when there is no ``test``), checked to exist."""
    if not root.is_dir():
        raise DataError(
            f"image folder dataset: {root} does not exist or is not a directory. Set data.root "
            f"to a directory laid out as train/<class>/<image> and test/<class>/<image>."
        )
    names = (TRAIN_SPLIT,) if train else TEST_SPLITS
    for name in names:
        if (root / name).is_dir():
            return root / name
    wanted = " or ".join(f"{root / name}" for name in names)
    raise DataError(
        f"image folder dataset: no {'training' if train else 'test'} split in {root}: expected "
        f"{wanted}, holding one sub-folder of images per class (e.g. {root / names[0]}/cat/0001.png)."
    )


class FolderDataset(IndexedTargetsMixin, ImageFolder):
    """An ``ImageFolder`` split yielding ``(image, label, index)``, with the dataset attributes."""

    def __init__(
        self,
        root: Path,
        train: bool,
        *,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: bool,
    ) -> None:
        directory = split_directory(root, train)
        self._image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)
        classes = class_folders(directory)
        if not classes:
            raise DataError(
                f"image folder dataset: {directory} has no class sub-folders; put each class's "
                f"images in {directory}/<class name>/."
            )
        if not train and (root / TRAIN_SPLIT).is_dir():
            self._check_same_classes(root / TRAIN_SPLIT, directory, classes)
        try:
            super().__init__(str(directory), transform=folder_transform(image_size, mean, std, augment))
        except FileNotFoundError as exc:
            raise DataError(
                f"image folder dataset: {directory}: {exc} Every class folder needs at least "
                f"one image ({', '.join(IMG_EXTENSIONS)})."
            ) from exc

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        """Visible sub-folders only, so stray hidden folders do not become classes."""
        classes = class_folders(Path(directory))
        return classes, {name: index for index, name in enumerate(classes)}

    @staticmethod
    def _check_same_classes(train_dir: Path, test_dir: Path, test_classes: list[str]) -> None:
        train_classes = class_folders(train_dir)
        if train_classes == test_classes:
            return
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        details = []
        if only_train:
            details.append(f"only in {train_dir.name}: {', '.join(only_train)}")
        if only_test:
            details.append(f"only in {test_dir.name}: {', '.join(only_test)}")
        raise DataError(
            f"image folder dataset: the class folders of {test_dir} differ from those of "
            f"{train_dir} ({'; '.join(details)}). Both splits need the same class folders, "
            f"since a label is the class's position in the sorted list."
        )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self._image_size, self._image_size)

    def raw_image(self, index: int) -> torch.Tensor:
        """Image ``index`` at the training size, ``uint8 3×S×S``, before any random augmentation.

        The evaluation resize and centre crop, without normalisation: what ``data.views``
        augment (see ``distill.data.views``).
        """
        image = self.loader(self.samples[index][0]).convert("RGB")
        return pil_to_tensor(fixed_size(self._image_size)(image))


def _check_stats(name: str, values: Sequence[float]) -> tuple[float, float, float]:
    try:
        stats = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        stats = ()
    if len(stats) != 3 or (name == "std" and min(stats) <= 0):
        raise DataError(
            f"data.options.{name} of the folder dataset must be three numbers (red, green, blue)"
            f"{', all positive' if name == 'std' else ''}; got {values!r}"
        )
    return stats  # type: ignore[return-value]


@register_dataset("folder")
def build_folder(
    root: Path | None,
    train: bool,
    *,
    download: bool,
    verify: bool,
    augment: bool,
    image_size: int = 32,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> FolderDataset:
    """Images from ``ROOT/train/<class>/`` or ``ROOT/test/<class>/`` (``val`` also accepted).

    Options: ``image_size`` (side of the square input, default 32), ``mean`` and
    ``std`` (per-channel normalisation, default ImageNet's). There is nothing to
    download or verify; those switches are ignored.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DataError(
            f"data.options.image_size of the folder dataset must be a positive integer; got {image_size!r}"
        )
    return FolderDataset(
        require_root(root, "folder"),
        train,
        image_size=image_size,
        mean=_check_stats("mean", mean),
        std=_check_stats("std", std),
        augment=augment,
    )
