"""A small name → object registry, shared by models, losses and datasets.

The pattern follows timm's model registry: an object is added by decorating it,
looked up by name, and an unknown name fails with the closest valid names.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from distill.errors import DistillError, UnknownNameError

T = TypeVar("T")


def closest_names(name: str, candidates: list[str], n: int = 3) -> list[str]:
    """The candidates most similar to ``name`` (case-insensitive), best first."""
    lowered = {c.lower(): c for c in candidates}
    matches = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)
    return [lowered[m] for m in matches]


def did_you_mean(name: str, candidates: list[str]) -> str:
    """A ' Did you mean ...?' sentence, or an empty string when nothing is close."""
    close = closest_names(name, candidates)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"


class Registry(Generic[T]):
    """Maps names to objects of one kind (``kind`` appears in error messages)."""

    def __init__(self, kind: str, check: Callable[[T], object] | None = None) -> None:
        """``check(obj)`` runs when an object is registered and raises on a bad one (e.g. its signature)."""
        self.kind = kind
        self._check = check
        self._entries: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        """Decorator: ``@registry.register("name")`` (defaults to the object's ``__name__``)."""

        def decorator(obj: T) -> T:
            key = name or obj.__name__
            if key in self._entries and self._entries[key] is not obj:
                existing = self._entries[key]
                where = getattr(existing, "__module__", "?")
                raise DistillError(
                    f"a {self.kind} named {key!r} is already registered (by {where}); "
                    f"choose another name for the new one"
                )
            if self._check is not None:
                self._check(obj)  # fail at registration, not when a recipe uses the name
            self._entries[key] = obj
            return obj

        return decorator

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a temporary entry: a test's or a notebook's); an unknown name is an error."""
        self.get(name)
        del self._entries[name]

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{did_you_mean(name, self.names())} "
                f"Available: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
