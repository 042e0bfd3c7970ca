"""Typed validation of plain data against dataclasses and annotated signatures.

One small checker serves the recipe schema and every loss's parameters: a value
is checked against a type annotation, and a mapping against a dataclass. Errors
carry the key path so the caller can name the file and key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union

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
    if origin in (list, tuple):
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
    if origin in (list, tuple):
        if not isinstance(value, list):
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


def _accepts_none(annotation: Any) -> bool:
    return annotation is Any or type(None) in typing.get_args(annotation)


def build_dataclass(cls: type, data: Any, path: KeyPath) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, checking keys and types."""
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
            values[name] = check_value(data[name], hints[name], (*path, name))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ValidationIssue((*path, name), f"required key is missing (expected {type_name(hints[name])})")
    return cls(**values)
