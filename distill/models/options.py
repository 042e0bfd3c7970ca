"""Model options (``student.options``, ``teacher.options``): the error that names the key, and checks.

A model is built from a spec (``arch`` + ``options``) by code that does not know
whether it builds the student or the teacher; the recipe key a user must edit is
``<role>.<key>``. So a :class:`ModelOptionError` carries the key below the role
(``options.img_size``, ``arch``) and the caller that knows the role adds it with
:meth:`ModelOptionError.under`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from distill.errors import DistillError
from distill.schema import (
    SignatureSchema,
    ValidationIssue,
    check_options,
    signature_schema,
)

AT = "{at}"
"""Written in a message where a recipe key appears: it becomes ``student.`` (the role) or nothing."""


class ModelOptionError(DistillError):
    """A model cannot be built, or cannot run on the data, with its spec.

    Attributes:
        key: the key below the role that must change (``options.img_size``, ``options``, ``arch``).
        message: what is wrong and what to do; ``{at}`` marks where the role prefix goes
            in further keys the message names.
        role: ``student`` or ``teacher`` once known, else ``None``.
    """

    def __init__(self, key: str, message: str, role: str | None = None) -> None:
        super().__init__(key, message, role)  # args rebuild the error when it is pickled to other processes
        self.key, self.message, self.role = key, message, role

    @property
    def prefix(self) -> str:
        return f"{self.role}." if self.role else ""

    @property
    def recipe_key(self) -> str:
        """The full key, e.g. ``student.options.img_size``."""
        return f"{self.prefix}{self.key}"

    def under(self, role: str | None) -> ModelOptionError:
        """The same error, with its keys under ``role`` (``student``, ``teacher``)."""
        return ModelOptionError(self.key, self.message, role)

    def __str__(self) -> str:
        return f"{self.recipe_key}: {self.message.replace(AT, self.prefix)}"


RESERVED_OPTIONS = {
    "name": "the architecture is the spec's 'arch'",
    "num_classes": "the number of classes comes from the dataset",
    "checkpoint": "the weights file is the spec's 'checkpoint', beside 'options'",
}
"""Arguments of ``create_model`` itself, which options cannot set (they would collide in the call)."""


def check_reserved_options(options: dict[str, Any]) -> None:
    """Refuse options that ``create_model`` sets itself, before they collide with its own arguments."""
    for key, reason in RESERVED_OPTIONS.items():
        if key in options:
            raise ModelOptionError(f"options.{key}", f"distill sets {key!r} itself ({reason}); remove it from the options.")


def check_bool_option(options: dict[str, Any], key: str, arch: str) -> bool:
    """Pop ``key`` from ``options`` and return it, refusing anything but true or false (unset: false)."""
    value = options.pop(key, False)
    if not isinstance(value, bool):
        raise ModelOptionError(f"options.{key}", f"{arch} expects true or false, got {value!r} ({type(value).__name__})")
    return value


CIFAR_STEM_HINT = (
    " The zoo's models are CIFAR networks already (3×3 stem, no max-pool); "
    "cifar_stem adapts timm ResNets ('timm/<name>')."
)


def builder_schema(builder: Callable[..., Any]) -> SignatureSchema:
    """A zoo builder's options: its signature less ``num_classes`` (which comes from the dataset)."""
    return signature_schema(builder, skip=("num_classes",))


def check_builder_options(arch: str, builder: Callable[..., Any], options: dict[str, Any]) -> None:
    """Refuse options the builder does not take or of the wrong type, naming the valid ones.

    Runs when a recipe is loaded and again in ``create_model`` (before the builder's
    own TypeError). A builder that takes ``**kwargs`` passes names it does not declare on.
    """
    try:
        check_options(options, builder_schema(builder), ("options",), f"model {arch!r}", hints={"cifar_stem": CIFAR_STEM_HINT})
    except ValidationIssue as issue:
        raise ModelOptionError(".".join(issue.path), issue.message) from None
