"""The loss registry: ``@register_loss("name")`` on a :class:`DistillLoss` subclass."""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from typing import Any

from distill.errors import DistillError
from distill.losses.base import DistillLoss, LossContext
from distill.registry import Registry

LOSSES: Registry[type[DistillLoss]] = Registry("loss")


def register_loss(name: str):
    """Class decorator that registers a loss under ``name`` (the recipe's ``type``)."""

    def decorator(cls: type[DistillLoss]) -> type[DistillLoss]:
        if not (isinstance(cls, type) and issubclass(cls, DistillLoss)):
            raise DistillError(f"@register_loss({name!r}) must decorate a subclass of distill.losses.DistillLoss")
        loss_parameters(cls)  # fail at registration, not at training time, on a bad signature
        return LOSSES.register(name)(cls)

    return decorator


@dataclass(frozen=True)
class LossParameter:
    name: str
    annotation: Any
    default: Any

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty


def loss_parameters(cls: type[DistillLoss]) -> dict[str, LossParameter]:
    """The recipe parameters a loss accepts: its ``__init__`` keywords after ``context``."""
    signature = inspect.signature(cls.__init__)
    hints = typing.get_type_hints(cls.__init__)
    parameters = {}
    for index, (name, parameter) in enumerate(signature.parameters.items()):
        if index < 2:  # self, context
            continue
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise DistillError(f"loss {cls.__name__}: *args/**kwargs are not allowed; declare each parameter")
        if name not in hints:
            raise DistillError(f"loss {cls.__name__}: parameter {name!r} needs a type annotation")
        parameters[name] = LossParameter(name, hints[name], parameter.default)
    return parameters


def build_loss(loss_type: str, context: LossContext, params: dict[str, Any]) -> DistillLoss:
    """Instantiate a registered loss with already validated parameters."""
    return LOSSES.get(loss_type)(context, **params)
