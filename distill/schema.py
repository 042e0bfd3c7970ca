"""Typed validation of plain data against dataclasses and annotated signatures.

The one schema mechanism of distill. A schema is either a dataclass (the recipe,
the teacher manifest, the published results table) or a builder's signature (a
model's, dataset's, view's or loss's options). Values are checked against type
annotations; a dataclass field may carry a range (:func:`positive`,
:func:`at_least`, :func:`between`) or a check of its own (:func:`checked`) in its
metadata, and its ``__post_init__`` may raise :class:`ValidationIssue` for checks
between fields. Errors carry the key path, so every caller reports them the same
way: ``<file>: <dotted key>: <message>``.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Union

from distill.errors import DistillError
from distill.registry import did_you_mean

KeyPath = tuple[str, ...]


class ValidationIssue(Exception):
    """A value does not fit its schema; ``path`` says where."""

    def __init__(self, path: KeyPath, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def type_name(annotation: Any) -> str:
    """A short readable name for an annotation: 'float', 'list of int', 'one of a, b'."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin in (list, tuple, collections.abc.Sequence):
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any value"
    return getattr(annotation, "__name__", str(annotation))


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})" if value is not None else "null"


def check_value(value: Any, annotation: Any, path: KeyPath) -> Any:
    """Return ``value`` converted to ``annotation`` where that is lossless, else raise."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        problems = []
        for option in args:
            if option is type(None):
                continue
            try:
                return check_value(value, option, path)
            except ValidationIssue as issue:
                problems.append(issue)
        raise ValidationIssue(path, f"expected {type_name(annotation)}, got {_describe(value)}")
    if origin is Literal:
        if value in args:
            return value
        raise ValidationIssue(
            path,
            f"expected {type_name(annotation)}, got {_describe(value)}."
            + (did_you_mean(str(value), [str(a) for a in args]) if isinstance(value, str) else ""),
        )
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            raise ValidationIssue(path, f"expected {type_name(annotation)}, got {_describe(value)}")
        item_type = args[0] if args else Any
        return [check_value(item, item_type, (*path, str(i))) for i, item in enumerate(value)]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ValidationIssue(path, f"expected a mapping, got {_describe(value)}")
        value_type = args[1] if len(args) == 2 else Any
        return {str(k): check_value(v, value_type, (*path, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(annotation):
        return build_dataclass(annotation, value, path)
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif annotation is bool or annotation is str:
        if isinstance(value, annotation):
            return value
    elif isinstance(annotation, type) and isinstance(value, annotation):
        return value
    raise ValidationIssue(path, f"expected {type_name(annotation)}, got {_describe(value)}")


# --- field metadata: ranges and checks of one value --------------------------------------

RANGE = "range"
CHECK = "check"


@dataclass(frozen=True)
class Range:
    """The interval a number must lie in, and the words that say so (``must be positive``).

    ``low_open`` excludes ``low`` itself (``positive``: above 0, not 0).
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    words: str = ""

    def contains(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high


def positive() -> dict[str, Range]:
    """Field metadata: the number must be above 0."""
    return {RANGE: Range(low=0, low_open=True, words="must be positive")}


def at_least(low: int) -> dict[str, Range]:
    """Field metadata: the number must be ``low`` or more."""
    return {RANGE: Range(low=low, words=f"must be {low} or more")}


def between(low: float, high: float, words: str) -> dict[str, Range]:
    """Field metadata: the number must lie in ``[low, high]``; ``words`` say so in the error."""
    return {RANGE: Range(low=low, high=high, words=words)}


def checked(check: Callable[[Any], Any]) -> dict[str, Callable[[Any], Any]]:
    """Field metadata: ``check(value)`` returns the value (possibly normalised) or raises ValueError(message)."""
    return {CHECK: check}


def _check_field(field: dataclasses.Field, value: Any, path: KeyPath) -> Any:
    """Apply a field's range and check (after its type check) to a set value."""
    bounds = field.metadata.get(RANGE)
    if bounds is not None and value is not None and not bounds.contains(value):
        raise ValidationIssue(path, f"{bounds.words}, got {value}")
    check = field.metadata.get(CHECK)
    if check is not None and value is not None:
        try:
            return check(value)
        except ValueError as error:
            raise ValidationIssue(path, str(error)) from None
    return value


# --- dataclasses as schemas ----------------------------------------------------------------


def _accepts_none(annotation: Any) -> bool:
    return annotation is Any or type(None) in typing.get_args(annotation)


def build_dataclass(cls: type, data: Any, path: KeyPath) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, checking keys, types, ranges and checks.

    A ``ValidationIssue`` that ``cls.__post_init__`` raises (a check between fields)
    has its path taken relative to ``path``.
    """
    if not isinstance(data, dict):
        raise ValidationIssue(path, f"expected a mapping for {cls.__name__}, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise ValidationIssue(
                (*path, str(key)),
                f"unknown key.{did_you_mean(str(key), list(fields))} Rename it to one of the valid keys "
                f"here or remove it: {', '.join(fields)}",
            )
    values = {}
    for name, field in fields.items():
        if data.get(name) is None and not _accepts_none(hints[name]):
            data = {k: v for k, v in data.items() if k != name}  # null means "not set"
        if name in data:
            value = check_value(data[name], hints[name], (*path, name))
            values[name] = _check_field(field, value, (*path, name))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ValidationIssue((*path, name), f"required key is missing (expected {type_name(hints[name])})")
    try:
        return cls(**values)
    except ValidationIssue as issue:
        raise ValidationIssue((*path, *issue.path), issue.message) from None


# --- signatures as schemas ---------------------------------------------------------------


@dataclass(frozen=True)
class Parameter:
    """One option a builder takes: its type (``Any`` where an open builder leaves it unannotated) and default."""

    name: str
    annotation: Any
    default: Any

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty


@dataclass(frozen=True)
class SignatureSchema:
    """The options a builder takes, read from its signature.

    ``open``: the builder takes ``**kwargs``, so names it does not declare are passed
    on unchecked (it reports unknown ones itself).
    """

    parameters: dict[str, Parameter]
    open: bool = False

    def names(self) -> list[str]:
        return list(self.parameters)


def signature_schema(builder: Callable[..., Any], skip: tuple[str, ...] = ()) -> SignatureSchema:
    """A builder's keyword parameters (less ``skip``) as a schema: a signature is its schema.

    The one rule for every registry: each option needs a type annotation, except in
    a builder that takes ``**kwargs`` (an open one), whose unannotated options are
    passed on unchecked. Positional-only and ``*args`` parameters are not options.

    Raises:
        DistillError: an option of a closed builder has no annotation (a mistake of
            the builder's author, reported when it is registered or first read).
    """
    signature = inspect.signature(builder)
    hints = typing.get_type_hints(builder)
    kinds = [p.kind for p in signature.parameters.values()]
    is_open = inspect.Parameter.VAR_KEYWORD in kinds
    parameters = {}
    for name, parameter in signature.parameters.items():
        if name in skip or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD, parameter.POSITIONAL_ONLY):
            continue
        if name not in hints and not is_open:
            owner = getattr(builder, "__qualname__", repr(builder))
            raise DistillError(f"{owner}: parameter {name!r} needs a type annotation (its type is the schema of the option)")
        parameters[name] = Parameter(name, hints.get(name, Any), parameter.default)
    return SignatureSchema(parameters, is_open)


def unknown_option_message(owner: str, key: str, names: list[str], hint: str = "") -> str:
    """The one message for an option a builder does not take: the closest names, all of them, what to do."""
    listing = f"Its options: {', '.join(names)}." if names else "It takes no options."
    return f"{owner} has no option {key!r}.{did_you_mean(key, names)} {listing}{hint} Remove it."


def check_options(
    options: Mapping[str, Any],
    schema: SignatureSchema,
    path: KeyPath,
    owner: str,
    hints: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Check ``options`` against ``schema``: names known, values of their type, required ones given.

    Returns the options with values converted where lossless (``1`` for a float is
    ``1.0``). ``owner`` names the builder in messages (``model 'resnet8'``); ``hints``
    add a sentence for particular unknown names.

    Raises:
        ValidationIssue: at ``(*path, option)``.
    """
    checked_options: dict[str, Any] = {}
    for key, value in options.items():
        parameter = schema.parameters.get(key)
        if parameter is None:
            if schema.open:
                checked_options[key] = value
                continue
            hint = (hints or {}).get(key, "")
            raise ValidationIssue((*path, key), unknown_option_message(owner, key, schema.names(), hint))
        checked_options[key] = check_value(value, parameter.annotation, (*path, key))
    for key, parameter in schema.parameters.items():
        if parameter.required and key not in options:
            raise ValidationIssue(
                (*path, key), f"required option of {owner} is missing (expected {type_name(parameter.annotation)})"
            )
    return checked_options
