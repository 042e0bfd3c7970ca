"""Any timm architecture as a zoo model (``timm/<name>``), with the same feature record.

Built without pretrained weights (nothing is fetched from a hub); load a local
checkpoint through ``create_model(..., checkpoint=PATH)`` instead. Features come
from timm's ``forward_intermediates`` (stage maps) and ``forward_head``
(``pre_logits=True`` gives the pooled vector the classifier sees).

Options are timm's own constructor arguments (``img_size``, ``patch_size``,
``drop_path_rate`` ...), plus distill's ``cifar_stem`` (see :func:`apply_cifar_stem`).
Whatever timm refuses at build time becomes a :class:`ModelOptionError` that
names the option; :meth:`TimmModel.input_error` says what to set when the model
cannot run on the dataset's image size.
"""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor, nn

from distill.errors import UnknownNameError
from distill.models.base import ZooModel
from distill.models.features import FeatureRecord
from distill.models.options import AT, ModelOptionError, check_bool_option
from distill.registry import did_you_mean

CIFAR_STEM = "cifar_stem"
"""distill's own timm option: replace an ImageNet ResNet stem by the CIFAR one (3×3 stride-1 conv, no max-pool)."""

_UNKNOWN_ARGUMENT = re.compile(r"unexpected keyword argument '(\w+)'")
_DUPLICATE_ARGUMENT = re.compile(r"multiple values for keyword argument '(\w+)'")


def timm_model_exists(name: str) -> bool:
    import timm

    return timm.is_model(name)


class TimmModel(ZooModel):
    """Wraps a timm model so that it answers ``features=True`` with a FeatureRecord.

    timm's intermediate maps are the stage outputs; timm exposes no pre-activation
    versions, so ``preact_maps`` holds the same tensors as ``maps``.
    """

    def __init__(self, model: nn.Module, name: str = "", options: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.model = model
        self.name = name or type(model).__name__
        self.options = dict(options or {})  # as given (cifar_stem included): named in error messages

    def feature_record(self, x: Tensor) -> FeatureRecord:
        final, maps = self.model.forward_intermediates(x)
        pooled = self.model.forward_head(final, pre_logits=True)
        logits = self.model.forward_head(final)
        return FeatureRecord(maps=list(maps), preact_maps=list(maps), pooled=pooled, logits=logits)

    def feature_modules(self) -> list[nn.Module]:
        classifier = self.model.get_classifier()
        return [m for m in self.model.children() if m is not classifier]

    def forward(self, x: Tensor, features: bool = False) -> Tensor | FeatureRecord:
        if features:
            return self.feature_record(x)
        return self.model(x)

    def state_dict(self, *args, **kwargs):
        """The wrapped timm model's own keys, so checkpoints interchange with plain timm."""
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.model.load_state_dict(state_dict, strict=strict, assign=assign)

    def takes_cifar_stem(self) -> bool:
        """Whether the ``cifar_stem`` option applies to this architecture (a timm ResNet)."""
        from timm.models.resnet import ResNet

        return isinstance(self.model, ResNet)

    def built_image_size(self) -> tuple[int, int] | None:
        """The image size the model is built for, when it has a fixed one (a ViT's patch embedding)."""
        size = getattr(getattr(self.model, "patch_embed", None), "img_size", None)
        return tuple(size) if size is not None else None

    def input_error(self, input_shape: tuple[int, ...], error: Exception) -> ModelOptionError:
        """Why the model failed on ``input_shape`` images, and which key to change.

        A model built for another fixed image size (a ViT's patch embedding) needs
        ``options.img_size``; otherwise the options it was built with are the suspects,
        or, without options, the architecture.
        """
        channels, height, width = input_shape
        given = ", ".join(f"{key}: {value!r}" for key, value in self.options.items())
        model = f"timm/{self.name}" + (f" with options {{{given}}}" if given else "")
        what = f"{model} cannot run on the dataset's {channels}×{height}×{width} images ({type(error).__name__}: {error})"
        built = self.built_image_size()
        if built is not None and built != (height, width):
            patch = getattr(self.model.patch_embed, "patch_size", None)
            patch_note = f" (it uses {patch[0]}×{patch[1]})" if patch is not None else ""
            return ModelOptionError(
                "options.img_size",
                f"{what}: it is built for {built[0]}×{built[1]} images. Set {AT}options.img_size: {height}, "
                f"with a patch size that divides {height}{patch_note}: {AT}options.patch_size: 4 or 8.",
            )
        if given:
            return ModelOptionError(
                "options",
                f"{what}. Check the options' values, choose options that fit {height}×{width} images "
                f"(see the timm model's arguments), or another {AT}arch.",
            )
        return ModelOptionError("arch", f"{what}. Choose another architecture, or options that fit {height}×{width} images.")


def apply_cifar_stem(model: nn.Module, name: str) -> None:
    """Replace a timm ResNet's ImageNet stem by the CIFAR one, in place.

    ImageNet ResNets shrink the image 4× before the first stage (7×7 stride-2 conv,
    then a stride-2 max-pool): at 32 px their last map is 1×1. The CIFAR
    adaptation keeps the full resolution in the stem: ``conv1`` becomes a 3×3
    stride-1 padding-1 conv (a deep stem is replaced by that single conv too) and
    the max-pool an ``Identity``, so resnet18's last map is 4×4 at 32 px. The new
    conv has the stem's channels and timm's initialisation (Kaiming normal, fan out).

    Raises:
        ModelOptionError: the model is not a timm ResNet (nothing to replace is known).
    """
    from timm.models.resnet import ResNet

    if not isinstance(model, ResNet):
        raise ModelOptionError(
            f"options.{CIFAR_STEM}",
            f"timm/{name} is a {type(model).__name__}, not a timm ResNet: distill only knows how to give "
            f"ResNet-family models (resnet*, resnext*, seresnet*, wide_resnet* ...) the CIFAR stem. "
            f"Remove the option, or choose a timm ResNet.",
        )
    stem_convs = [m for m in model.conv1.modules() if isinstance(m, nn.Conv2d)]
    in_channels, out_channels = stem_convs[0].in_channels, model.bn1.num_features
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    model.conv1 = conv.to(device=stem_convs[0].weight.device, dtype=stem_convs[0].weight.dtype)
    model.maxpool = nn.Identity()


def build_error(name: str, options: dict[str, Any], error: Exception) -> ModelOptionError:
    """The option timm refused (an unknown or duplicate argument), or all of them for a bad value."""
    text = str(error)
    unknown, duplicate = _UNKNOWN_ARGUMENT.search(text), _DUPLICATE_ARGUMENT.search(text)
    if unknown and unknown.group(1) in options:
        key = unknown.group(1)
        return ModelOptionError(
            f"options.{key}",
            f"timm/{name} has no argument {key!r} ({text}). Remove it, or rename it to an argument of "
            f"the timm model's constructor (or '{CIFAR_STEM}', distill's own).",
        )
    if duplicate and duplicate.group(1) in options:
        key = duplicate.group(1)
        return ModelOptionError(f"options.{key}", f"distill sets {key!r} of timm/{name} itself; remove it.")
    given = ", ".join(f"{key}: {value!r}" for key, value in options.items())
    return ModelOptionError(
        "options",
        f"timm/{name} cannot be built with {{{given}}}: {type(error).__name__}: {text}. "
        f"Fix the value (see the timm model's constructor arguments).",
    )


def check_timm_options(name: str, options: dict[str, Any]) -> None:
    """What can be checked of a timm model's options without building it: no hub weights, ``cifar_stem`` a bool.

    Everything else (unknown arguments, bad values, ``cifar_stem`` on a non-ResNet)
    only timm's constructor knows: those are checked when the model is built.
    """
    if options.get("pretrained", False):
        raise ModelOptionError(
            "options.pretrained",
            f"timm/{name}: pretrained hub weights are not fetched by distill; "
            f"download them yourself and give the file as {AT}checkpoint",
        )
    check_bool_option(dict(options), CIFAR_STEM, f"timm/{name}")


def create_timm_model(name: str, num_classes: int, **kwargs) -> TimmModel:
    """Build ``timm.create_model(name, pretrained=False, num_classes=..., **options)`` wrapped for features.

    ``cifar_stem: true`` (timm ResNets only) swaps in the CIFAR stem, see :func:`apply_cifar_stem`.

    Raises:
        UnknownNameError: timm has no model ``name``.
        ModelOptionError: an option is unknown to the model, has a value it refuses, or
            (``cifar_stem``) does not apply to it.
            Also: pretrained weights were asked for, or the model cannot report features.
    """
    import timm

    if not timm.is_model(name):
        candidates = timm.list_models()
        raise UnknownNameError(f"unknown timm model {name!r}.{did_you_mean(name, candidates)}")
    check_timm_options(name, kwargs)
    kwargs.pop("pretrained", None)
    options = dict(kwargs)
    cifar_stem = check_bool_option(kwargs, CIFAR_STEM, f"timm/{name}")
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError, AssertionError, KeyError) as error:
        if not kwargs:
            raise  # not the user's options: a bug to report with its traceback
        raise build_error(name, kwargs, error) from error
    if not hasattr(model, "forward_intermediates"):
        raise ModelOptionError(
            "arch",
            f"timm/{name} has no forward_intermediates(), so its features cannot be read; "
            f"choose a timm architecture that supports it (most CNNs and ViTs do)",
        )
    if cifar_stem:
        apply_cifar_stem(model, name)
    return TimmModel(model, name, options)
