"""The model registry and ``create_model``.

Zoo models register a builder function with :func:`register_model`; any timm
architecture is available as ``timm/<name>``. Builders take ``num_classes`` and
return an ``nn.Module`` whose ``forward(x, features=True)`` returns a
:class:`~distill.models.features.FeatureRecord`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from distill.errors import UnknownNameError
from distill.models.checkpoint import load_weights
from distill.models.options import (
    builder_schema,
    check_builder_options,
    check_reserved_options,
)
from distill.models.timm_adapter import (
    check_timm_options,
    create_timm_model,
    timm_model_exists,
)
from distill.registry import Registry, did_you_mean

MODELS: Registry[Callable[..., nn.Module]] = Registry("model", check=builder_schema)
TIMM_PREFIX = "timm/"

register_model = MODELS.register


def list_models() -> list[str]:
    """Names of the zoo's own architectures (timm's are reachable as ``timm/<name>``)."""
    return MODELS.names()


def is_model(name: str) -> bool:
    """Whether ``create_model(name)`` would find an architecture."""
    if name.startswith(TIMM_PREFIX):
        return timm_model_exists(name[len(TIMM_PREFIX):])
    return name in MODELS


def check_model_options(name: str, options: dict[str, Any]) -> None:
    """Check a model spec's options without building it (what a recipe load can know).

    Zoo models: against the builder's signature (names and types). ``timm/<name>``:
    only :func:`~distill.models.timm_adapter.check_timm_options`; timm's own
    arguments are checked when the model is built.

    Raises:
        ModelOptionError: its ``key`` (``options.<name>``) is relative to the model spec.
    """
    check_reserved_options(options)
    if name.startswith(TIMM_PREFIX):
        check_timm_options(name[len(TIMM_PREFIX):], options)
    elif name in MODELS:
        check_builder_options(name, MODELS.get(name), options)


def create_model(
    name: str,
    num_classes: int = 100,
    checkpoint: str | Path | None = None,
    **kwargs,
) -> nn.Module:
    """Build a model by name, optionally loading weights strictly from a local checkpoint.

    Args:
        name: a zoo name (see :func:`list_models`) or ``timm/<timm model name>``.
        num_classes: size of the classifier.
        checkpoint: a local file holding a state_dict, or a dict with the
            state_dict under ``model`` (the RepDistiller/mdistiller format).
        kwargs: the model's options (a recipe's ``options``), passed to the builder.

    Raises:
        UnknownNameError: no such architecture.
        ModelOptionError: an option the architecture does not take, or a value it refuses;
            its ``key`` (``options.<name>``) is relative to the model spec.
    """
    if name.startswith(TIMM_PREFIX):
        model = create_timm_model(name[len(TIMM_PREFIX):], num_classes=num_classes, **kwargs)
    else:
        if name not in MODELS:
            raise UnknownNameError(
                f"unknown model {name!r}.{did_you_mean(name, list_models())} "
                f"Zoo models: {', '.join(list_models())}; any timm model as 'timm/<name>'."
            )
        builder = MODELS.get(name)
        check_builder_options(name, builder, kwargs)
        model = builder(num_classes=num_classes, **kwargs)
    if checkpoint is not None:
        load_weights(model, checkpoint, arch=name)
    return model
