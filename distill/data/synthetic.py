"""A generated dataset for the quickstart demo: no files, deterministic from a seed.

The images are built so that distillation has something to transfer:

* Classes come in **groups** (super-classes). A group fixes a background texture
  (a few coloured gratings) and a palette of blob colours, shared by its classes.
* A class is a **constellation**: blobs of the group's colours at class-specific
  offsets. Siblings in a group differ only in the geometry of their blobs, so
  telling them apart needs relating positions a dozen pixels apart (a deeper
  network's larger receptive field helps), while the group is easy to see.
* Each sample is the class's constellation, randomly moved, mirrored with
  probability 1/2 (so horizontal-flip augmentation is label-preserving), its blobs
  jittered, some samples morphed part-way towards a sibling's geometry (genuine
  ambiguity, which a teacher's soft labels can express), a distractor blob added,
  the contrast and brightness changed, and pixel noise added.

A small student therefore lands clearly below 100 % test accuracy after a few
epochs, a deeper teacher does better, and the teacher's mistakes and soft labels
concentrate on sibling classes, like CIFAR-100's super-classes.

Train and test splits share the class prototypes (same ``seed``) but draw their
samples from independent random streams. Generation is vectorised with a
``torch.Generator``: a few thousand images take well under a second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from distill.data.registry import register_dataset
from distill.data.transforms import CROP_PADDING, tensor_augment
from distill.errors import DataError


@dataclass(frozen=True)
class Difficulty:
    """The knobs of the generator.

    With the defaults (10 classes, 2000 train / 1000 test images) and 15 epochs of
    SGD with random crop and flip, resnet8 reached 62-67 % test accuracy, resnet20
    80-85 %, and resnet8 distilled from that resnet20 (KD, T=4) 71-78 % (seeds 0 and 1).
    """

    blobs_per_class: int = 3
    blob_sigma: float = 2.0
    #: Length of a blob's colour vector (the images' noise has standard deviation ``noise``).
    blob_strength: float = 1.6
    #: Largest distance (pixels) of a blob from the constellation's centre.
    spread: float = 8.0
    jitter: float = 0.8
    #: Probability that a sample is morphed towards a sibling, and the largest weight of the sibling.
    morph_probability: float = 0.5
    morph_max: float = 0.45
    distractor_blobs: int = 1
    texture_gratings: int = 3
    texture_amplitude: float = 0.35
    noise: float = 0.35
    contrast: tuple[float, float] = (0.6, 1.4)
    brightness: float = 0.2


DEFAULT_DIFFICULTY = Difficulty()

#: Divides the raw images, bringing their pixel standard deviation near 1 (about 0.9).
_STANDARD_SCALE = 0.6


def _stream(seed: int, stream: int) -> torch.Generator:
    """An independent generator for (seed, stream): 0 prototypes, 1 train samples, 2 test samples."""
    state = int(np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(state)


def num_groups(num_classes: int) -> int:
    """About √C groups of about √C classes each (10 classes: 3 groups; 100: 10)."""
    return max(1, round(math.sqrt(num_classes)))


def group_of(num_classes: int) -> torch.Tensor:
    """``LongTensor[C]``: the group of each class, classes split into contiguous groups."""
    return torch.arange(num_classes) * num_groups(num_classes) // num_classes


class _Prototypes:
    """What defines the classes: group textures and palettes, class constellations."""

    def __init__(self, num_classes: int, difficulty: Difficulty, generator: torch.Generator) -> None:
        g = generator
        d = difficulty
        groups = num_groups(num_classes)
        self.group = group_of(num_classes)
        # Group texture: gratings with random frequency (1-4 cycles per image), orientation, phase, colour.
        cycles = 1 + 3 * torch.rand(groups, d.texture_gratings, generator=g)
        angle = math.pi * torch.rand(groups, d.texture_gratings, generator=g)
        self.texture_freq = torch.stack([cycles * torch.sin(angle), cycles * torch.cos(angle)], dim=-1)
        self.texture_phase = 2 * math.pi * torch.rand(groups, d.texture_gratings, generator=g)
        self.texture_colour = _unit_colours((groups, d.texture_gratings), g)
        # Group palette: the colour of each blob of the constellation.
        self.palette = _unit_colours((groups, d.blobs_per_class), g) * d.blob_strength
        # Class geometry: blob offsets (pixels) from the constellation centre.
        radius = d.spread * torch.sqrt(torch.rand(num_classes, d.blobs_per_class, generator=g))
        theta = 2 * math.pi * torch.rand(num_classes, d.blobs_per_class, generator=g)
        self.offsets = torch.stack([radius * torch.sin(theta), radius * torch.cos(theta)], dim=-1)
        # Siblings of each class, as rows padded with the class itself (a class alone in its
        # group is its own "sibling", so morphing it changes nothing).
        classes = torch.arange(num_classes)
        same_group = (self.group[:, None] == self.group[None, :]) & (classes[:, None] != classes[None, :])
        self.sibling_count = same_group.sum(1).clamp(min=1)
        order = torch.sort(same_group.int(), dim=1, descending=True, stable=True).indices
        self.sibling_table = torch.where(
            torch.arange(num_classes)[None, :] < same_group.sum(1, keepdim=True), order, classes[:, None]
        )


def _unit_colours(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Random RGB directions of unit length, ``shape + (3,)``."""
    colour = torch.randn(*shape, 3, generator=generator)
    return colour / colour.norm(dim=-1, keepdim=True)


def _separable(colours: torch.Tensor, along_y: torch.Tensor, along_x: torch.Tensor) -> torch.Tensor:
    """``sum_k colour[n, k, c] * along_y[n, k, y] * along_x[n, k, x]``, a contiguous ``[N, 3, S, S]``.

    A batched matrix product, much faster than the equivalent einsum, whose output
    strides make the later element-wise operations slow.
    """
    n, k, size = along_y.shape
    left = (colours[..., None] * along_y[:, :, None, :]).reshape(n, k, 3 * size)
    return torch.bmm(left.transpose(1, 2), along_x).view(n, 3, size, size)


def _gaussian_blobs(centres: torch.Tensor, colours: torch.Tensor, sigma: float, size: int) -> torch.Tensor:
    """Coloured Gaussian blobs: centres ``[N, B, 2]`` (y, x), colours ``[N, B, 3]`` → ``[N, 3, S, S]``."""
    axis = torch.arange(size, dtype=torch.float32)
    gy = torch.exp(-((axis - centres[..., 0, None]) ** 2) / (2 * sigma**2))  # N, B, S
    gx = torch.exp(-((axis - centres[..., 1, None]) ** 2) / (2 * sigma**2))  # N, B, S
    return _separable(colours, gy, gx)


def generate(
    num_classes: int,
    size: int,
    seed: int,
    train: bool,
    image_size: int = 32,
    difficulty: Difficulty = DEFAULT_DIFFICULTY,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images FloatTensor[N, 3, S, S], labels LongTensor[N])`` of one split, roughly standardised."""
    d = difficulty
    proto = _Prototypes(num_classes, d, _stream(seed, 0))
    g = _stream(seed, 1 if train else 2)
    n, s = size, image_size
    scale = s / 32  # geometry is specified for 32-pixel images

    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
    groups = proto.group[labels]

    # Geometry: the class's offsets, morphed part-way towards a random sibling for some samples.
    offsets = proto.offsets[labels]
    pick = (torch.rand(n, generator=g) * proto.sibling_count[labels]).long()
    sibling = proto.sibling_table[labels, pick]
    morphed = torch.rand(n, generator=g) < d.morph_probability
    weight = (morphed * d.morph_max * torch.rand(n, generator=g))[:, None, None]
    offsets = (1 - weight) * offsets + weight * proto.offsets[sibling]
    mirror = torch.rand(n, generator=g) < 0.5
    offsets[..., 1] = torch.where(mirror[:, None], -offsets[..., 1], offsets[..., 1])
    offsets = offsets + d.jitter * torch.randn(offsets.shape, generator=g)
    margin = d.spread + 2 * d.blob_sigma
    centre = margin + (32 - 1 - 2 * margin) * torch.rand(n, 1, 2, generator=g)
    images = _gaussian_blobs((centre + offsets) * scale, proto.palette[groups], d.blob_sigma * scale, s)

    # Distractor blobs: a random colour at a random place.
    if d.distractor_blobs:
        where = 2 + (s - 5) * torch.rand(n, d.distractor_blobs, 2, generator=g)
        colour = _unit_colours((n, d.distractor_blobs), g) * d.blob_strength
        images += _gaussian_blobs(where, colour, d.blob_sigma * scale, s)

    # Group texture, shifted with the sample.
    axis = torch.arange(s, dtype=torch.float32) / s
    freq = proto.texture_freq[groups]  # N, K, 2
    shift = torch.rand(n, 1, 2, generator=g)
    phase = proto.texture_phase[groups] - 2 * math.pi * (freq * shift).sum(-1)  # N, K
    # cos(a + b) = cos a cos b - sin a sin b keeps the gratings separable in y and x.
    along_y = 2 * math.pi * freq[..., 0, None] * axis + phase[..., None]  # N, K, S
    along_x = 2 * math.pi * freq[..., 1, None] * axis  # N, K, S
    colour = d.texture_amplitude * proto.texture_colour[groups]
    images += _separable(colour, torch.cos(along_y), torch.cos(along_x))
    images -= _separable(colour, torch.sin(along_y), torch.sin(along_x))

    # Photometric changes and noise.
    low, high = d.contrast
    contrast = low + (high - low) * torch.rand(n, 1, 1, 1, generator=g)
    brightness = d.brightness * torch.randn(n, 3, 1, 1, generator=g)
    noise = torch.randn(images.shape, generator=g).mul_(d.noise)
    images.mul_(contrast).add_(brightness).add_(noise).div_(_STANDARD_SCALE)
    return images, labels


def crop_padding(image_size: int) -> int:
    """The random crop's padding, scaled like the images' geometry: 4 pixels at 32×32, 2 at 16×16.

    A fixed 4 pixels would shift a 16×16 image by a quarter of its width, pushing the
    constellations partly out of view, a much harsher augmentation than at 32×32.
    """
    return max(1, round(CROP_PADDING * image_size / 32))


class SyntheticDataset(Dataset):
    """One split of the generated dataset, held in memory; items are ``(image, label, index)``."""

    def __init__(
        self,
        num_classes: int,
        size: int,
        seed: int,
        train: bool,
        *,
        image_size: int = 32,
        augment: bool = False,
        difficulty: Difficulty = DEFAULT_DIFFICULTY,
    ) -> None:
        self.images, self._labels = generate(num_classes, size, seed, train, image_size, difficulty)
        groups = group_of(num_classes)
        self.classes = [
            f"group{int(groups[c])}_class{c:0{len(str(num_classes - 1))}d}" for c in range(num_classes)
        ]
        self.transform = tensor_augment(image_size, crop_padding(image_size)) if augment else None
        self._image_size = image_size

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self._labels[index]), index

    @property
    def labels(self) -> torch.Tensor:
        return self._labels

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self._image_size, self._image_size)


def _positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DataError(
            f"data.options.{name} of the synthetic dataset must be an integer ≥ {minimum}; got {value!r}"
        )
    return value


@register_dataset("synthetic")
def build_synthetic(
    root: Path | None,
    train: bool,
    *,
    download: bool,
    verify: bool,
    augment: bool,
    num_classes: int = 10,
    train_size: int = 2000,
    test_size: int = 1000,
    seed: int = 0,
    image_size: int = 32,
) -> SyntheticDataset:
    """The generated quickstart dataset (``root``, ``download`` and ``verify`` are ignored).

    Options: ``num_classes`` (default 10), ``train_size`` (2000), ``test_size``
    (1000), ``seed`` (0; the same seed gives the same classes and images),
    ``image_size`` (32).
    """
    size = train_size if train else test_size
    return SyntheticDataset(
        _positive_int("num_classes", num_classes, 2),
        _positive_int("train_size" if train else "test_size", size),
        _positive_int("seed", seed, 0),
        train,
        image_size=_positive_int("image_size", image_size, 8),
        augment=augment,
    )
