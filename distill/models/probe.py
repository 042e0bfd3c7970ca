"""The dry forward pass that sizes the losses, with the checks that make its failures actionable.

:func:`~distill.models.features.probe_feature_shapes` is where a network first
meets the dataset's image size. A model that cannot take that size (a ViT built
for 224 px, given 32 px images) fails there with timm's own assertion;
:func:`probe_model` turns that into a :class:`ModelOptionError` naming the
recipe key to set, and warns when the last feature map has collapsed to 1×1
(an ImageNet stem at 32 px), where feature losses see a single position.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from distill.models.features import FeatureShapes, probe_feature_shapes
from distill.models.options import AT, ModelOptionError
from distill.models.timm_adapter import CIFAR_STEM, TimmModel


class CollapsedFeatureMapWarning(UserWarning):
    """A model's last feature map is 1×1 at the dataset's image size."""


def input_error(model: nn.Module, arch: str, input_shape: tuple[int, ...], error: Exception) -> ModelOptionError:
    """What to change when ``model`` cannot run on ``input_shape`` images."""
    if isinstance(model, TimmModel):
        return model.input_error(input_shape, error)
    size = "×".join(str(n) for n in input_shape)
    return ModelOptionError("arch", f"{arch} cannot run on the dataset's {size} images ({error}); choose another architecture.")


def collapsed_map_message(model: nn.Module, arch: str, role: str | None, shapes: FeatureShapes,
                          input_shape: tuple[int, ...]) -> str | None:
    """The warning for a last feature map of 1×1 from a larger image, or ``None`` when the map is larger."""
    if not shapes.maps or len(shapes.maps[-1]) != 3 or shapes.maps[-1][1:] != (1, 1) or input_shape[1:] == (1, 1):
        return None
    prefix = f"{role}." if role else ""
    if isinstance(model, TimmModel) and model.takes_cifar_stem():
        advice = f"set {prefix}options.{CIFAR_STEM}: true (3×3 stride-1 stem, no max-pool: a 4×4 map at 32 px)"
    else:
        advice = "choose an architecture (or options) with less downsampling for this image size"
    return (
        f"{role + ' ' if role else ''}{arch}: its last feature map is 1×1 at the dataset's {input_shape[1]}×{input_shape[2]} "
        f"images, so losses on feature maps see a single position; {advice}"
    )


def probe_model(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    arch: str,
    role: str | None = None,
    warn: bool = True,
) -> FeatureShapes:
    """The model's feature shapes on ``input_shape`` images; a model that cannot take them is a user error.

    Args:
        model: a zoo or timm model (unwrapped).
        input_shape: one image, C×H×W.
        arch: its name in the recipe, for messages.
        role: ``student`` or ``teacher``: the recipe keys in errors and warnings are under it.
        warn: warn (:class:`CollapsedFeatureMapWarning`) when the last map is 1×1.

    Raises:
        ModelOptionError: the forward pass failed on this input size (naming the key to
            change, e.g. ``student.options.img_size``), or the model's pooled features or
            logits are not vectors (an option removed its global pooling).
    """
    try:
        shapes = probe_feature_shapes(model, input_shape)
    except torch.OutOfMemoryError:
        raise
    except (AssertionError, RuntimeError, ValueError) as error:
        raise input_error(model, arch, input_shape, error).under(role) from error
    if len(shapes.pooled) != 1 or len(shapes.logits) != 1:
        raise ModelOptionError(
            "options",
            f"{arch} gives pooled features of shape {shapes.pooled} and logits of shape {shapes.logits}, "
            f"not vectors: keep the model's global pooling and classifier (check {AT}options).",
            role,
        )
    message = collapsed_map_message(model, arch, role, shapes, input_shape) if warn else None
    if message:
        warnings.warn(message, CollapsedFeatureMapWarning, stacklevel=2)
    return shapes
