"""Views: augmentations of one training image that the networks see instead of, or besides, the standard one.

Two layouts, both under the recipe's ``data.views``:

* **Per network** (InfoMin-style, Tian et al., NeurIPS 2020): what two views of an image
  share decides what a contrastive objective between them learns, so the teacher and
  the student can see different augmentations of the same image::

      data:
        views:
          teacher: {name: standard}                 # the dataset's own crop and flip
          student: {name: infomin, options: {magnitude: 9}}

* **Shared** (MLKD's weak and strong views, Jin et al., CVPR 2023): every network sees
  every listed view, so a step runs the student and the teacher once per view::

      data:
        views:
          shared: [{name: standard}, {name: fixmatch_strong}]

  A loss that takes one view at a time is applied to each view and its terms are
  summed; a :class:`~distill.losses.base.MultiViewLoss` (``mlkd``) gets all views at
  once. The first view is the one the training accuracy is measured on.

* ``standard`` is the dataset's usual training augmentation, the single view a run
  without ``views`` sees: a view given ``standard`` gets exactly that tensor (so two
  ``standard`` roles coincide; a shared list may name it once).
* Any other name is a registered view: a builder (``@register_view``) that returns a
  transform of one ``uint8 C×H×W`` image tensor, in torchvision's ``transforms.v2``.

Each non-standard view of image ``index`` in ``epoch`` is drawn with torch's
generator seeded by ``(seed, slot, epoch, index)`` (see :func:`view_seed`; the slot
is the role, or the view's place in the shared list), inside a fork of the
generator state. So the view is a pure function of the image and that key: the same
on the device data path and the worker path, whatever the number of workers, and
after a resume. The memory-bank index of every view is the image's index.
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
    """The recipe's ``data.views``: the teacher's and the student's view, or views both networks see."""

    teacher: ViewSpec
    student: ViewSpec
    shared: Sequence[ViewSpec] | None


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
        RecipeError: an unknown view or option, an option of the wrong type, or both
            layouts (per network and shared) at once.
    """
    if views.shared is not None:
        roles_set = [role for role in ROLES if getattr(views, role).name != STANDARD or getattr(views, role).options]
        if roles_set:
            raise RecipeError(
                f"data.views: 'shared' (every network sees every view) and '{roles_set[0]}' (a view per network) "
                f"cannot be combined; keep one of them"
            )
        if not views.shared:
            raise RecipeError("data.views.shared: the list is empty; list at least one view, or remove 'shared'")
        if sum(spec.name == STANDARD for spec in views.shared) > 1:
            raise RecipeError(
                "data.views.shared: 'standard' is listed twice; both entries would be the very same tensor. "
                "List it once"
            )
        for position, spec in enumerate(views.shared):
            _check_view(spec, ("data", "views", "shared", str(position)))
        return
    for role in ROLES:
        _check_view(getattr(views, role), ("data", "views", role))


def _check_view(spec: ViewSpec, path: tuple[str, ...]) -> None:
    key = ".".join(path)
    if spec.name == STANDARD:
        if spec.options:
            raise RecipeError(f"{key}.options: the standard view takes no options (it is the dataset's own)")
        return
    if spec.name not in VIEWS:
        names = ", ".join([STANDARD, *VIEWS.names()])
        raise RecipeError(f"{key}.name: unknown view {spec.name!r}. Available: {names}")
    try:
        check_options(spec.options, builder_schema(VIEWS.get(spec.name)), (*path, "options"), f"view {spec.name!r}")
    except ValidationIssue as issue:
        raise RecipeError(f"{'.'.join(issue.path)}: {issue.message}") from None


def build_view(spec: ViewSpec, image_size: int, key: str) -> ViewTransform | None:
    """The transform of a non-standard view (``None`` for ``standard``); bad option values name ``key``."""
    if spec.name == STANDARD:
        return None
    try:
        return VIEWS.get(spec.name)(image_size, **spec.options)
    except ValueError as error:
        raise RecipeError(f"{key}.options: {error}") from None


def view_seed(seed: int, slot: int, epoch: int, index: int) -> int:
    """The seed of one image's view: a pure function of (recipe seed, slot, epoch, image index).

    Slots 0 and 1 are the teacher's and the student's view; shared view ``i`` is slot ``2 + i``.
    """
    return stream_seed(seed, VIEW_STREAM, slot, epoch, index)


def draw_view(transform: ViewTransform, image: Tensor, seed: int) -> Tensor:
    """``transform(image)`` with torch's CPU generator seeded by ``seed``; the caller's generator state is kept.

    Views draw their random numbers on the CPU generator, whatever the image's device, so a
    view is the same on every device; only that generator is seeded (``torch.manual_seed``
    would also reseed every CUDA generator, which ``fork_rng(devices=[])`` does not restore).
    """
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        return transform(image)


@dataclass(frozen=True)
class TwoViews:
    """A training batch's inputs when teacher and student see different views of the same images."""

    teacher: Tensor
    student: Tensor

    @property
    def device(self) -> torch.device:
        return self.student.device

    def tensors(self) -> tuple[Tensor, ...]:
        """The inputs in slot order (teacher, student), as a worker item carries them."""
        return (self.teacher, self.student)


@dataclass(frozen=True)
class SharedViews:
    """A training batch's inputs when every network sees every view: one tensor per shared view."""

    views: tuple[Tensor, ...]

    @property
    def device(self) -> torch.device:
        return self.views[0].device

    def tensors(self) -> tuple[Tensor, ...]:
        return self.views


@dataclass(frozen=True)
class ViewSet:
    """A run's built views: a transform per slot, ``None`` where the slot sees the standard view.

    ``shared=False``: the slots are the teacher's and the student's view (:class:`TwoViews`);
    ``shared=True``: every network sees every slot (:class:`SharedViews`).
    """

    transforms: tuple[ViewTransform | None, ...]
    seed: int
    shared: bool = False
    names: tuple[str, ...] = ()
    """The views' names as the recipe gives them, in slot order (for the log)."""

    def describe(self) -> str:
        """``2 views per step, each for both networks: standard, fixmatch_strong`` or the per-network views."""
        if self.shared:
            return f"{len(self.transforms)} views per step, each for both networks: {', '.join(self.names)}"
        return ", ".join(f"{role} view {name}" for role, name in zip(ROLES, self.names))

    def slot(self, position: int) -> int:
        """The seed slot of ``transforms[position]`` (see :func:`view_seed`)."""
        return position + len(ROLES) if self.shared else position

    def draw(self, position: int, image: Tensor, epoch: int, index: int) -> Tensor:
        """View ``position``'s draw of one ``uint8 C×H×W`` image (a non-standard view only)."""
        return draw_view(self.transforms[position], image, view_seed(self.seed, self.slot(position), epoch, index))

    def draw_batch(self, position: int, images: Tensor, epoch: int, indices: Sequence[int]) -> Tensor:
        """View ``position`` of each image of a ``uint8 B×C×H×W`` batch, one seeded draw per image."""
        return torch.stack([self.draw(position, image, epoch, int(index)) for image, index in zip(images, indices)])

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
    ) -> TwoViews | SharedViews:
        """Every view's inputs for a batch, as both data paths make them.

        ``standard``: the batch with the dataset's own augmentation (what a standard
        view gets); ``images``: the same images as stored, ``uint8 B×C×H×W``, from
        which a non-standard view is drawn and normalised with ``mean``/``std``.
        """
        made = [
            standard if transform is None else normalize_batch(
                self.draw_batch(position, images, epoch, indices), mean, std, channels_last=channels_last
            )
            for position, transform in enumerate(self.transforms)
        ]
        return self.pack(made)

    def pack(self, tensors: Sequence[Tensor]) -> TwoViews | SharedViews:
        """The batch object for the slots' tensors in order (the worker path reassembles items with it)."""
        return SharedViews(tuple(tensors)) if self.shared else TwoViews(*tensors)


def build_views(views: ViewsSpec | None, image_size: int, seed: int) -> ViewSet | None:
    """The run's :class:`ViewSet`, or ``None`` when every network sees just the standard view."""
    if views is None:
        return None
    check_views(views)
    if views.shared is not None:
        transforms = tuple(
            build_view(spec, image_size, f"data.views.shared.{position}") for position, spec in enumerate(views.shared)
        )
        names = tuple(spec.name for spec in views.shared)
        return None if transforms == (None,) else ViewSet(transforms, seed, shared=True, names=names)
    built = tuple(build_view(getattr(views, role), image_size, f"data.views.{role}") for role in ROLES)
    names = tuple(getattr(views, role).name for role in ROLES)
    return None if built == (None, None) else ViewSet(built, seed, names=names)


def views_per_step(views: ViewsSpec | None) -> int:
    """How many views of each image both networks see per step: the shared list's length, else 1."""
    return len(views.shared) if views is not None and views.shared is not None else 1


def view_pairs(inputs: Tensor | TwoViews | SharedViews) -> list[tuple[Tensor, Tensor]]:
    """``(student inputs, teacher inputs)`` for each view a step runs the networks on.

    One batch: the same tensor for both, once; per-network views: the student's and
    the teacher's, once; shared views: each view for both networks.
    """
    if isinstance(inputs, SharedViews):
        return [(view, view) for view in inputs.views]
    if isinstance(inputs, TwoViews):
        return [(inputs.student, inputs.teacher)]
    return [(inputs, inputs)]
