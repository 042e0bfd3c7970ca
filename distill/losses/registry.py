"""The loss registry: ``@register_loss("name")`` on a :class:`DistillLoss` subclass."""

from __future__ import annotations

import inspect
from typing import Any

from distill.errors import DistillError
from distill.losses.base import DistillLoss, LossContext
from distill.registry import Registry
from distill.schema import Parameter, SignatureSchema, signature_schema

LOSSES: Registry[type[DistillLoss]] = Registry("loss")


def register_loss(name: str):
    """Class decorator that registers a loss under ``name`` (the recipe's ``type``)."""

    def decorator(cls: type[DistillLoss]) -> type[DistillLoss]:
        if not (isinstance(cls, type) and issubclass(cls, DistillLoss)):
            raise DistillError(f"@register_loss({name!r}) must decorate a subclass of distill.losses.DistillLoss")
        loss_parameters(cls)  # fail at registration, not at training time, on a bad signature
        return LOSSES.register(name)(cls)

    return decorator


def loss_parameters(cls: type[DistillLoss]) -> dict[str, Parameter]:
    """The recipe parameters a loss accepts: its ``__init__`` keywords after ``self`` and ``context``.

    Read by :func:`distill.schema.signature_schema` (each needs a type annotation);
    a loss may not take ``**kwargs``: every parameter it takes is declared.
    """
    skip = tuple(inspect.signature(cls.__init__).parameters)[:2]  # self, context
    schema = signature_schema(cls.__init__, skip=skip)
    if schema.open or any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(cls.__init__).parameters.values()):
        raise DistillError(f"loss {cls.__name__}: *args/**kwargs are not allowed; declare each parameter")
    return schema.parameters


def loss_schema(cls: type[DistillLoss]) -> SignatureSchema:
    """A recipe's loss term as a schema: ``type``, ``weight`` and the loss's parameters."""
    reserved = {"type": Parameter("type", str, ""), "weight": Parameter("weight", float, inspect.Parameter.empty)}
    return SignatureSchema({**reserved, **loss_parameters(cls)})


def build_loss(loss_type: str, context: LossContext, params: dict[str, Any]) -> DistillLoss:
    """Instantiate a registered loss with already validated parameters."""
    return LOSSES.get(loss_type)(context, **params)
