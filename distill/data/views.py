"""Different views of one image for the teacher and the student (InfoMin-style, Tian et al., NeurIPS 2020).

InfoMin's lesson: what two views of an image share decides what a contrastive
objective between them learns. A recipe can therefore give the teacher and the
student different augmentations of the same training image::

    data:
      views:
        teacher: {name: standard}                 # the dataset's own crop and flip
        student: {name: infomin, options: {magnitude: 9}}

* ``standard`` is the dataset's usual training augmentation, the single view a run
  without ``views`` sees: a role given ``standard`` gets exactly that tensor (so two
  ``standard`` roles coincide).
* Any other name is a registered view: a builder (``@register_view``) that returns a
  transform of one ``uint8 C×H×W`` image tensor, in torchvision's ``transforms.v2``.

Each non-standard view of image ``index`` in ``epoch`` is drawn with torch's
generator seeded by ``(seed, role, epoch, index)`` (see :func:`view_seed`), inside
a fork of the generator state. So the view is a pure function of the image and
that key: the same on the device data path and the worker path, whatever the
number of workers, and after a resume. The memory-bank index of both views is the
image's index.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor
from torchvision.transforms import v2

from distill.data.epoch_order import stream_seed
from distill.data.transforms import normalize_batch
from distill.errors import RecipeError
from distill.registry import Registry
from distill.schema import (
    SignatureSchema,
    ValidationIssue,
    check_options,
    signature_schema,
)

STANDARD = "standard"
"""The dataset's own training augmentation: the view of a run without ``data.views``."""

VIEW_STREAM = 3
ROLES = ("teacher", "student")

ViewTransform = Callable[[Tensor], Tensor]
"""One ``uint8 C×H×W`` image in, one ``uint8 C×H×W`` image out (random draws from torch's generator)."""


def builder_schema(builder: Callable[..., ViewTransform]) -> SignatureSchema:
    """A view builder's options: its signature after ``image_size`` (see :func:`register_view`)."""
    first = next(iter(inspect.signature(builder).parameters), "")
    return signature_schema(builder, skip=(first,))


VIEWS: Registry[Callable[..., ViewTransform]] = Registry("view", check=builder_schema)


class ViewSpec(Protocol):
    """One role's view as a recipe names it (``data.views.<role>``: see ``distill.recipe.schema``)."""

    name: str
    options: dict[str, Any]


class ViewsSpec(Protocol):
    """The recipe's ``data.views``: the teacher's and the student's view."""

    teacher: ViewSpec
    student: ViewSpec


def register_view(name: str) -> Callable:
    """Decorator: register a view builder ``f(image_size: int, **options) -> ViewTransform``."""
    return VIEWS.register(name)


@register_view("plain")
def plain_view(image_size: int) -> ViewTransform:
    """No augmentation: the image as it is stored."""
    return v2.Identity()


@register_view("infomin")
def infomin_view(
    image_size: int,
    crop_scale: list[float] = [0.2, 1.0],  # noqa: B006 -- the option's default in its schema; never mutated
    jitter: float = 0.4,
    hue: float = 0.1,
    jitter_p: float = 0.8,
    ops: int = 2,
    magnitude: int = 9,
    grayscale_p: float = 0.2,
) -> ViewTransform:
    """InfoMin's augmentation 'D' adapted to small images (objectives §4.2–4.3, our adaptation).

    RandomResizedCrop(image_size, scale=crop_scale) → horizontal flip → with
    probability ``jitter_p`` ColorJitter(jitter, jitter, jitter, hue) → RandAugment
    (``ops`` operations at ``magnitude`` of 30) → grayscale with probability
    ``grayscale_p``. InfoMin's Gaussian blur is left out: at 32 pixels it erases the
    image. The defaults follow §4.3's CIFAR proposal (scale 0.2–1, jitter 0.4,
    RandAugment n=2, m=9, grayscale 0.2).
    """
    if not (len(crop_scale) == 2 and 0 < crop_scale[0] <= crop_scale[1] <= 1):
        raise ValueError(f"crop_scale must be [low, high] with 0 < low <= high <= 1, got {crop_scale}")
    for name, value in (("jitter_p", jitter_p), ("grayscale_p", grayscale_p)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
    if jitter < 0 or not 0 <= hue <= 0.5:
        raise ValueError(f"jitter must be >= 0 and hue in [0, 0.5], got jitter={jitter}, hue={hue}")
    if ops < 0 or not 0 <= magnitude <= 30:
        raise ValueError(f"ops must be >= 0 and magnitude in 0..30, got ops={ops}, magnitude={magnitude}")
    return v2.Compose(
        [
            v2.RandomResizedCrop(image_size, scale=tuple(crop_scale), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(jitter, jitter, jitter, hue)], p=jitter_p),
            v2.RandAugment(num_ops=ops, magnitude=magnitude),
            v2.RandomGrayscale(p=grayscale_p),
        ]
    )


def view_options(name: str) -> dict[str, tuple[Any, Any]]:
    """The options a view accepts: ``{option: (annotation, default)}`` from its builder's signature."""
    return {p.name: (p.annotation, p.default) for p in builder_schema(VIEWS.get(name)).parameters.values()}


def check_views(views: ViewsSpec) -> None:
    """Check every view name and option of a recipe's ``data.views``; errors name the key.

    Raises:
        RecipeError: an unknown view or option, or an option of the wrong type.
    """
    for role in ROLES:
        spec: ViewSpec = getattr(views, role)
        key = f"data.views.{role}"
        if spec.name == STANDARD:
            if spec.options:
                raise RecipeError(f"{key}.options: the standard view takes no options (it is the dataset's own)")
            continue
        if spec.name not in VIEWS:
            names = ", ".join([STANDARD, *VIEWS.names()])
            raise RecipeError(f"{key}.name: unknown view {spec.name!r}. Available: {names}")
        try:
            check_options(spec.options, builder_schema(VIEWS.get(spec.name)), ("data", "views", role, "options"), f"view {spec.name!r}")
        except ValidationIssue as issue:
            raise RecipeError(f"{'.'.join(issue.path)}: {issue.message}") from None


def build_view(spec: ViewSpec, image_size: int, role: str) -> ViewTransform | None:
    """The transform of a non-standard view (``None`` for ``standard``); bad option values name the key."""
    if spec.name == STANDARD:
        return None
    try:
        return VIEWS.get(spec.name)(image_size, **spec.options)
    except ValueError as error:
        raise RecipeError(f"data.views.{role}.options: {error}") from None


def view_seed(seed: int, role: str, epoch: int, index: int) -> int:
    """The seed of one image's view: a pure function of (recipe seed, role, epoch, image index)."""
    return stream_seed(seed, VIEW_STREAM, ROLES.index(role), epoch, index)


def draw_view(transform: ViewTransform, image: Tensor, seed: int) -> Tensor:
    """``transform(image)`` with torch's generator seeded by ``seed``; the caller's generator state is kept."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(image)


@dataclass(frozen=True)
class ViewPair:
    """The built views of a run: a transform per role, ``None`` where the role sees the standard view."""

    teacher: ViewTransform | None
    student: ViewTransform | None
    seed: int

    def draw(self, role: str, image: Tensor, epoch: int, index: int) -> Tensor:
        """Role ``role``'s view of one ``uint8 C×H×W`` image (a non-standard role only)."""
        transform = getattr(self, role)
        return draw_view(transform, image, view_seed(self.seed, role, epoch, index))

    def draw_batch(self, role: str, images: Tensor, epoch: int, indices: Sequence[int]) -> Tensor:
        """The view of each image of a ``uint8 B×C×H×W`` batch, one seeded draw per image."""
        return torch.stack([self.draw(role, image, epoch, int(index)) for image, index in zip(images, indices)])

    def inputs(
        self,
        standard: Tensor,
        images: Tensor,
        epoch: int,
        indices: Sequence[int],
        mean: Sequence[float] | Tensor,
        std: Sequence[float] | Tensor,
        *,
        channels_last: bool = False,
    ) -> TwoViews:
        """Both roles' inputs for a batch, as both data paths make them.

        ``standard``: the batch with the dataset's own augmentation (what a role with the
        standard view gets); ``images``: the same images as stored, ``uint8 B×C×H×W``,
        from which a role with its own view draws it, normalised with ``mean``/``std``.
        """
        made = {}
        for role in ROLES:
            if getattr(self, role) is None:
                made[role] = standard
            else:
                drawn = self.draw_batch(role, images, epoch, indices)
                made[role] = normalize_batch(drawn, mean, std, channels_last=channels_last)
        return TwoViews(**made)


def build_views(views: ViewsSpec | None, image_size: int, seed: int) -> ViewPair | None:
    """The run's :class:`ViewPair`, or ``None`` when both roles see the standard view (or no views are set)."""
    if views is None:
        return None
    check_views(views)
    pair = ViewPair(
        teacher=build_view(views.teacher, image_size, "teacher"),
        student=build_view(views.student, image_size, "student"),
        seed=seed,
    )
    return None if pair.teacher is None and pair.student is None else pair


@dataclass(frozen=True)
class TwoViews:
    """A training batch's inputs when teacher and student see different views of the same images."""

    teacher: Tensor
    student: Tensor

    @property
    def device(self) -> torch.device:
        return self.student.device


def split_views(inputs: Tensor | TwoViews) -> tuple[Tensor, Tensor]:
    """``(student inputs, teacher inputs)`` of a batch: the same tensor twice without views."""
    if isinstance(inputs, TwoViews):
        return inputs.student, inputs.teacher
    return inputs, inputs
