"""MLKD's strong view: FixMatch-style RandAugment and Cutout on ``uint8`` tensors (view ``fixmatch_strong``).

Multi-Level Logit Distillation (Jin, Wang and Lin, CVPR 2023) trains on two views
of each image: the dataset's weak crop-and-flip, and a strong view made by the
FixMatch recipe. This file is that strong view, rewritten with torch ops on
``uint8 C×H×W`` tensors so it fits distill's view contract (see
:mod:`distill.data.views`): every random number comes from torch's global
generator, which ``draw_view`` seeds per image.

Checked against the authors' code: ``mdistiller/dataset/cifar100.py`` in
``sunshangquan/logit-standardization-KD`` (commit 2ba3954; ``augment_list``,
``RandAugment``, ``Cutout``, ``CutoutAbs``, ``get_cifar100_train_transform_strong``)
and the same file in ``peanutshu11/Multi-Level-Logit-Distillation`` (a fork of
``Jin-Ying/Multi-Level-Logit-Distillation``, whose own copy of the file was not
readable here; the two are identical in these functions). What they do, and so
what this view does:

1. ``RandomCrop(image_size, padding=4)`` with zero fill, then a horizontal flip
   with probability 1/2.
2. RandAugment: ``ops`` (2) operations drawn uniformly *with replacement* from the
   14 of :data:`STRONG_OPS`, each applied with a magnitude drawn uniformly in its
   own range; the RandAugment ``m`` of the original (10) is unused there too.
3. Cutout, always: side ``s = U(0, cutout) × width`` (``cutout`` = 0.5); ``s = 0``
   leaves the image as it is. A square of side ``s`` around a random centre is
   painted with ``fill`` (RGB 125, 123, 114), clipped to the image.

Each operation is a small pure function ``op(image, magnitude) -> image`` that
reproduces the PIL call of the original (PIL 13 checked in the tests):

* Integer look-up operations are exact: AutoContrast (``ImageOps.autocontrast``'s
  per-channel ``int(v·255/(hi−lo) − lo·255/(hi−lo))`` table), Equalize
  (``ImageOps.equalize``'s table, step = (pixels − count of the top value) // 255),
  Identity, Posterize (``bits = int(v)``), Solarize (invert pixels ≥ threshold).
* The blends (Brightness, Color, Contrast, Sharpness) follow ``ImageEnhance``:
  ``degenerate + f·(image − degenerate)`` in float32, truncated to ``uint8``; the
  grey of Color and Contrast is PIL's integer luma
  ``(19595 R + 38470 G + 7471 B + 2¹⁵) >> 16``; Contrast's grey level is the mean
  luma *rounded half up* (torchvision's ``adjust_contrast`` keeps a float mean of
  a float luma, so it differs from PIL by a grey level here and there; this file
  follows PIL); Sharpness's blur is PIL's SMOOTH kernel (1 1 1 / 1 5 1 / 1 1 1,
  ÷13, rounded half up) with the one-pixel border left as it is. torchvision's
  ``adjust_sharpness`` rounds half to even and its ``rgb_to_grayscale`` uses float
  weights; this file keeps PIL's integer arithmetic. The tests find every pixel
  equal to PIL's.
* The geometric operations (Rotate, ShearX/Y, TranslateX/Y) map each output
  pixel centre ``(x + ½, y + ½)`` through PIL's inverse affine matrix and take
  the source pixel under it (nearest), black outside: Rotate turns by ``v``
  degrees counter-clockwise about the image centre (PIL's matrix, sines and
  cosines rounded to 15 digits as PIL does), ShearX is PIL's
  ``(1, v, 0, 0, 1, 0)`` (a shear about the top-left corner), TranslateX moves
  the content left by ``v × width`` pixels. Rotate and the shears use PIL's
  16.16 fixed-point coordinates (PIL's nearest affine transform does; float
  coordinates differ from it on about one pixel in 5000 for Rotate), the
  translations PIL's floating-point path; the tests find them equal to PIL's.

Kept from the original although it looks like a slip: Cutout's centre.
``CutoutAbs`` draws it with ``np.random.uniform(w)``, which is numpy's
``uniform(low=w, high=1.0)``: a centre in ``(1, w]``, not ``[0, w)``. This view
draws ``x = W + (1 − W)·u`` with ``u ~ U[0, 1)`` (``y`` alike with ``H``), the same
distribution. The square's corner is ``x0 = int(max(0, x − s/2))``, its far edge
``x1 = min(W, x0 + s)``, and like ``ImageDraw.rectangle`` it paints columns
``x0 .. int(x1)`` *inclusive*, clipped to the image (rows alike): up to one pixel
more than ``s`` on a side.

Where this differs from the original:

* Random numbers: torch's generator, not Python's ``random`` and numpy's, so the
  draws are not the original's numbers, only the same distributions.
* Single-channel images (the original's RGB code would refuse them): Color is
  the identity (a grey image is its own luma), Contrast blends with the channel's
  own mean, and Cutout paints ``fill[0]``. A one-value ``fill`` is used on every
  channel. The colour operations take 1 or 3 channels, Cutout an image with 1 or
  ``len(fill)`` channels (or any with a one-value ``fill``); anything else is a
  ValueError when the image is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from torchvision.transforms import v2

from distill.data.views import ViewTransform, register_view

Op = Callable[[Tensor, float], Tensor]
"""One RandAugment operation: ``op(uint8 C×H×W image, magnitude) -> uint8 C×H×W image``."""

LUMA_WEIGHTS = (19595, 38470, 7471)
"""PIL's RGB → L weights, in 1/65536 (``L = (19595 R + 38470 G + 7471 B + 32768) >> 16``)."""


class StrongOp(NamedTuple):
    """One entry of the RandAugment table: its name, its function and its magnitude range."""

    name: str
    apply: Op
    low: float
    high: float


# ---------------------------------------------------------------- helpers


def _blend(degenerate: Tensor, image: Tensor, factor: float) -> Tensor:
    """PIL's ``Image.blend(degenerate, image, factor)``: ``degenerate + factor·(image − degenerate)``, truncated.

    PIL passes ``factor`` as a C ``float`` and computes in float32; so does this.
    """
    base = degenerate.to(torch.float32)
    step = (image.to(torch.float32) - base) * torch.tensor(factor, dtype=torch.float32, device=image.device)
    return (base + step).clamp_(0, 255).to(torch.uint8)


def luma(image: Tensor) -> Tensor:
    """PIL's ``convert("L")`` of a ``3×H×W`` image (``1×H×W`` out); a 1-channel image is its own luma."""
    if image.shape[0] == 1:
        return image.clone()
    if image.shape[0] != 3:
        raise ValueError(f"colour operations need 1 or 3 channels, got an image of {image.shape[0]}")
    weights = torch.tensor(LUMA_WEIGHTS, dtype=torch.int32, device=image.device).view(3, 1, 1)
    total = (image.to(torch.int32) * weights).sum(dim=0, keepdim=True) + 32768
    return (total >> 16).to(torch.uint8)


def _lookup(image: Tensor, tables: Tensor) -> Tensor:
    """Apply one 256-entry table per channel (``tables``: ``C×256``) to a ``uint8 C×H×W`` image."""
    channels = image.shape[0]
    flat = image.reshape(channels, -1).to(torch.int64)
    return torch.gather(tables.to(torch.uint8), 1, flat).reshape(image.shape)


def _histograms(image: Tensor) -> Tensor:
    """Per-channel 256-bin histograms (``C×256``, int64), in one ``bincount``."""
    channels = image.shape[0]
    offsets = torch.arange(channels, dtype=torch.int64, device=image.device).view(channels, 1) * 256
    flat = image.reshape(channels, -1).to(torch.int64) + offsets
    return torch.bincount(flat.reshape(-1), minlength=256 * channels).view(channels, 256)


def _fixed(value: float) -> int:
    """A real as PIL's 16.16 fixed-point number (``floor(v·65536 + ½)``)."""
    return math.floor(value * 65536.0 + 0.5)


def _affine_nearest(image: Tensor, matrix: Sequence[float]) -> Tensor:
    """PIL's ``transform(size, AFFINE, matrix)`` with nearest sampling and black fill.

    ``matrix = (a, b, c, d, e, f)`` maps an output pixel centre ``(x + ½, y + ½)`` to
    the source point ``(a·x' + b·y' + c, d·x' + e·y' + f)``; the output takes the
    source pixel containing it, or 0 when it lies outside the image. As in PIL, a
    matrix without rotation or shear (``b = d = 0``) is computed in floating point,
    any other in 16.16 fixed point (PIL's ``affine_fixed``), so both agree with PIL
    pixel for pixel.
    """
    a, b, c, d, e, f = (float(value) for value in matrix)
    _, height, width = image.shape
    if b == 0 and d == 0:
        xs = torch.arange(width, dtype=torch.float64, device=image.device).view(1, width)
        ys = torch.arange(height, dtype=torch.float64, device=image.device).view(height, 1)
        source_x = torch.floor((c + a * 0.5) + xs * a).expand(height, width)
        source_y = torch.floor((f + e * 0.5) + ys * e).expand(height, width)
    else:
        xs = torch.arange(width, dtype=torch.int64, device=image.device).view(1, width)
        ys = torch.arange(height, dtype=torch.int64, device=image.device).view(height, 1)
        start_x, start_y = _fixed(c + a * 0.5 + b * 0.5), _fixed(f + d * 0.5 + e * 0.5)
        source_x = torch.div(start_x + xs * _fixed(a) + ys * _fixed(b), 65536, rounding_mode="floor")
        source_y = torch.div(start_y + xs * _fixed(d) + ys * _fixed(e), 65536, rounding_mode="floor")
    inside = (source_x >= 0) & (source_x < width) & (source_y >= 0) & (source_y < height)
    index = (source_y.clamp(0, height - 1) * width + source_x.clamp(0, width - 1)).to(torch.int64)
    picked = image.reshape(image.shape[0], -1)[:, index.reshape(-1)].reshape(image.shape)
    return torch.where(inside, picked, torch.zeros((), dtype=image.dtype, device=image.device))


def rotation_matrix(degrees: float, width: int, height: int) -> tuple[float, ...]:
    """PIL's inverse matrix of ``Image.rotate(degrees)`` about the image centre (no expand)."""
    angle = -math.radians(degrees % 360.0)
    cos, sin = round(math.cos(angle), 15), round(math.sin(angle), 15)
    a, b, d, e = cos, sin, round(-math.sin(angle), 15), cos
    cx, cy = width / 2, height / 2
    return (a, b, a * -cx + b * -cy + cx, d, e, d * -cx + e * -cy + cy)


# ---------------------------------------------------------------- the 14 operations


def autocontrast(image: Tensor, _: float = 0.0) -> Tensor:
    """``ImageOps.autocontrast``: stretch each channel's [min, max] to [0, 255] (a flat channel is kept)."""
    flat = image.reshape(image.shape[0], -1)
    low = flat.amin(dim=1, keepdim=True).to(torch.float64)
    high = flat.amax(dim=1, keepdim=True).to(torch.float64)
    flat_channel = high <= low
    # PIL: scale = 255.0 / (hi - lo), offset = -lo * scale. A true division: ``255.0 / tensor`` would
    # multiply by a reciprocal instead, one grey level off for some ranges.
    scale = torch.div(torch.full_like(low, 255.0), torch.where(flat_channel, 1.0, high - low))
    levels = torch.arange(256, dtype=torch.float64, device=image.device).view(1, 256)
    stretched = torch.floor(levels * scale + (-low) * scale).clamp(0, 255)
    return _lookup(image, torch.where(flat_channel, levels, stretched).to(torch.int64))


def brightness(image: Tensor, factor: float) -> Tensor:
    """``ImageEnhance.Brightness``: blend with black."""
    return _blend(torch.zeros_like(image), image, factor)


def color(image: Tensor, factor: float) -> Tensor:
    """``ImageEnhance.Color``: blend with the image's own luma (saturation)."""
    return _blend(luma(image).expand_as(image), image, factor)


def contrast(image: Tensor, factor: float) -> Tensor:
    """``ImageEnhance.Contrast``: blend with a flat grey at the mean luma, rounded half up."""
    grey = luma(image)
    mean = int(grey.to(torch.float64).mean().item() + 0.5)
    return _blend(torch.full_like(image, mean), image, factor)


def equalize(image: Tensor, _: float = 0.0) -> Tensor:
    """``ImageOps.equalize``: per channel, ``table[i] = (step // 2 + pixels below i) // step``, capped at 255.

    ``step = (pixels − count of the channel's top value) // 255``; a channel with one
    value, or a step of 0, keeps its values.
    """
    histograms = _histograms(image)
    top = image.reshape(image.shape[0], -1).amax(dim=1, keepdim=True).to(torch.int64)
    pixels = image.shape[1] * image.shape[2]
    step = (pixels - histograms.gather(1, top)) // 255  # a one-value channel has step 0
    below = torch.cumsum(histograms, 1) - histograms
    spread = ((step // 2 + below) // step.clamp(min=1)).clamp(max=255)
    return _lookup(image, torch.where(step > 0, spread, torch.arange(256, device=image.device).view(1, 256)))


def identity(image: Tensor, _: float = 0.0) -> Tensor:
    """The image unchanged."""
    return image


def posterize(image: Tensor, bits: float) -> Tensor:
    """``ImageOps.posterize(int(bits))``: keep the top ``int(bits)`` bits (at least 1) of each value."""
    kept = max(1, min(8, int(bits)))
    mask = (0xFF << (8 - kept)) & 0xFF
    return image & mask


def rotate(image: Tensor, degrees: float) -> Tensor:
    """``Image.rotate(degrees)``: counter-clockwise about the centre, nearest, black outside."""
    _, height, width = image.shape
    return _affine_nearest(image, rotation_matrix(degrees, width, height))


def sharpness(image: Tensor, factor: float) -> Tensor:
    """``ImageEnhance.Sharpness``: blend with PIL's SMOOTH blur (border pixels unblurred)."""
    blurred = image.clone()
    if image.shape[1] >= 3 and image.shape[2] >= 3:
        values = image.to(torch.int32)
        window = sum(values[:, 1 + dy : values.shape[1] - 1 + dy, 1 + dx : values.shape[2] - 1 + dx]
                     for dy in (-1, 0, 1) for dx in (-1, 0, 1))
        weighted = window + 4 * values[:, 1:-1, 1:-1]  # the centre's weight is 5
        blurred[:, 1:-1, 1:-1] = ((2 * weighted + 13) // 26).to(torch.uint8)  # weighted / 13, rounded half up
    return _blend(blurred, image, factor)


def shear_x(image: Tensor, shear: float) -> Tensor:
    """PIL ``transform(AFFINE, (1, shear, 0, 0, 1, 0))``: source x = x + shear·y (about the top-left corner)."""
    return _affine_nearest(image, (1.0, shear, 0.0, 0.0, 1.0, 0.0))


def shear_y(image: Tensor, shear: float) -> Tensor:
    """PIL ``transform(AFFINE, (1, 0, 0, shear, 1, 0))``: source y = y + shear·x."""
    return _affine_nearest(image, (1.0, 0.0, 0.0, shear, 1.0, 0.0))


def solarize(image: Tensor, threshold: float) -> Tensor:
    """``ImageOps.solarize(threshold)``: invert every value ≥ ``threshold`` (256 inverts none)."""
    return torch.where(image.to(torch.float64) >= threshold, 255 - image, image)


def translate_x(image: Tensor, fraction: float) -> Tensor:
    """PIL ``transform(AFFINE, (1, 0, fraction·width, 0, 1, 0))``: content moves left by ``fraction·width``."""
    return _affine_nearest(image, (1.0, 0.0, fraction * image.shape[2], 0.0, 1.0, 0.0))


def translate_y(image: Tensor, fraction: float) -> Tensor:
    """PIL ``transform(AFFINE, (1, 0, 0, 0, 1, fraction·height))``: content moves up by ``fraction·height``."""
    return _affine_nearest(image, (1.0, 0.0, 0.0, 0.0, 1.0, fraction * image.shape[1]))


STRONG_OPS: tuple[StrongOp, ...] = (
    StrongOp("AutoContrast", autocontrast, 0.0, 1.0),
    StrongOp("Brightness", brightness, 0.05, 0.95),
    StrongOp("Color", color, 0.05, 0.95),
    StrongOp("Contrast", contrast, 0.05, 0.95),
    StrongOp("Equalize", equalize, 0.0, 1.0),
    StrongOp("Identity", identity, 0.0, 1.0),
    StrongOp("Posterize", posterize, 4.0, 8.0),
    StrongOp("Rotate", rotate, -30.0, 30.0),
    StrongOp("Sharpness", sharpness, 0.05, 0.95),
    StrongOp("ShearX", shear_x, -0.3, 0.3),
    StrongOp("ShearY", shear_y, -0.3, 0.3),
    StrongOp("Solarize", solarize, 0.0, 256.0),
    StrongOp("TranslateX", translate_x, -0.3, 0.3),
    StrongOp("TranslateY", translate_y, -0.3, 0.3),
)
"""The original's ``augment_list``, in its order, with its ranges."""


# ---------------------------------------------------------------- random draws and Cutout


def draw_ops(count: int, table: Sequence[StrongOp] = STRONG_OPS) -> list[tuple[StrongOp, float]]:
    """``count`` operations drawn uniformly with replacement, each with a magnitude uniform in its range.

    The choices come first, then one magnitude per choice, as the original's
    ``random.choices`` then ``random.random()`` per op; all from torch's generator.
    """
    chosen = torch.randint(len(table), (count,), device="cpu").tolist()
    drawn = []
    for index in chosen:
        op = table[index]
        drawn.append((op, op.low + (op.high - op.low) * torch.rand((), dtype=torch.float64, device="cpu").item()))
    return drawn


def channel_fill(fill: Sequence[int], channels: int) -> list[int]:
    """``fill`` for an image of ``channels`` channels (see the module's notes on single-channel images)."""
    if len(fill) == channels:
        return list(fill)
    if channels == 1:
        return [fill[0]]
    if len(fill) == 1:
        return list(fill) * channels
    raise ValueError(f"fill has {len(fill)} values but the image has {channels} channels: give 1 or {channels} values")


def cutout(image: Tensor, side: float, centre_x: float, centre_y: float, fill: Sequence[int]) -> Tensor:
    """Paint a square of side ``side`` near ``(centre_x, centre_y)`` with ``fill``, as the original's ``CutoutAbs``.

    Corner ``x0 = int(max(0, centre_x − side/2))``, far edge ``x1 = min(W, x0 + side)``;
    columns ``x0 .. int(x1)`` are painted, both inclusive (``ImageDraw.rectangle``),
    clipped to the image; rows alike. ``side <= 0`` returns the image unchanged.
    """
    if side <= 0:
        return image
    channels, height, width = image.shape
    x0 = int(max(0.0, centre_x - side / 2.0))
    y0 = int(max(0.0, centre_y - side / 2.0))
    x1 = int(min(width, x0 + side))
    y1 = int(min(height, y0 + side))
    out = image.clone()
    colour = torch.tensor(channel_fill(fill, channels), dtype=image.dtype, device=image.device).view(channels, 1, 1)
    out[:, y0 : min(y1, height - 1) + 1, x0 : min(x1, width - 1) + 1] = colour
    return out


class StrongAugment:
    """RandAugment (``ops`` draws from :data:`STRONG_OPS`) then Cutout, on one ``uint8 C×H×W`` image."""

    def __init__(self, ops: int, cutout: float, fill: Sequence[int], table: Sequence[StrongOp] = STRONG_OPS) -> None:
        self.ops = ops
        self.cutout = cutout
        self.fill = list(fill)
        self.table = tuple(table)

    def __call__(self, image: Tensor) -> Tensor:
        for op, magnitude in draw_ops(self.ops, self.table):
            image = op.apply(image, magnitude)
        _, height, width = image.shape
        side = torch.rand((), dtype=torch.float64, device="cpu").item() * self.cutout * width
        if side <= 0:
            return image
        centre_x = width + (1 - width) * torch.rand((), dtype=torch.float64, device="cpu").item()  # numpy's uniform(low=W, high=1)
        centre_y = height + (1 - height) * torch.rand((), dtype=torch.float64, device="cpu").item()
        return cutout(image, side, centre_x, centre_y, self.fill)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ops={self.ops}, cutout={self.cutout}, fill={self.fill})"


@register_view("fixmatch_strong")
def fixmatch_strong_view(
    image_size: int,
    ops: int = 2,
    padding: int = 4,
    cutout: float = 0.5,
    fill: list[int] = [125, 123, 114],  # noqa: B006 -- the option's default in its schema; never mutated
) -> ViewTransform:
    """MLKD's strong view: crop with ``padding`` → flip → RandAugment (``ops`` ops) → Cutout (side ≤ ``cutout``·W).

    See the module's docstring for the operations and how they match the authors'
    PIL code. ``fill`` is Cutout's colour, one 0..255 value per channel (or one
    value for every channel).
    """
    if ops < 0:
        raise ValueError(f"ops must be an integer >= 0 (operations per image), got {ops}")
    if padding < 0:
        raise ValueError(f"padding must be an integer >= 0 (pixels), got {padding}")
    if not 0 <= cutout <= 1:
        raise ValueError(f"cutout must be in [0, 1] (the largest side as a fraction of the width), got {cutout}")
    if not fill or not all(0 <= value <= 255 for value in fill):
        raise ValueError(f"fill must be one or more values in 0..255 (one per channel), got {fill}")
    return v2.Compose(
        [
            v2.RandomCrop(image_size, padding=padding if padding else None, fill=0),
            v2.RandomHorizontalFlip(),
            StrongAugment(ops, cutout, fill),
        ]
    )
