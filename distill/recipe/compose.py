"""Composing recipe files: ``_base_`` inclusion, deep merging, command-line overrides.

Every leaf value remembers the file (or override) it came from, so a validation
error can name the file the user must edit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill.errors import RecipeError
from distill.recipe.yaml_io import parse_yaml, read_yaml_file

BASE_KEY = "_base_"
OVERRIDE_SOURCE = "command-line override"

KeyPath = tuple[str, ...]


def format_key(path: KeyPath) -> str:
    return ".".join(path) if path else "(top level)"


@dataclass
class ComposedRecipe:
    """A merged recipe mapping and, for every key path, where its value was set."""

    data: dict[str, Any]
    sources: dict[KeyPath, str] = field(default_factory=dict)
    root_file: str = "<recipe>"

    def source_of(self, path: KeyPath) -> str:
        """The file that set ``path`` (or its closest set ancestor), else the top file."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.sources:
                return self.sources[path[:end]]
        return self.root_file


def _record_sources(value: Any, path: KeyPath, source: str, sources: dict[KeyPath, str]) -> None:
    sources[path] = source
    if isinstance(value, dict):
        for key, child in value.items():
            _record_sources(child, (*path, str(key)), source, sources)


def _forget_sources(path: KeyPath, sources: dict[KeyPath, str]) -> None:
    for key in [k for k in sources if k[: len(path)] == path]:
        del sources[key]


def deep_merge(
    base: dict[str, Any],
    update: dict[str, Any],
    source: str,
    sources: dict[KeyPath, str],
    path: KeyPath = (),
) -> dict[str, Any]:
    """Merge ``update`` into ``base`` in place: mappings merge, anything else is replaced."""
    for key, value in update.items():
        key_path = (*path, str(key))
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            sources[key_path] = source
            deep_merge(base[key], value, source, sources, key_path)
        else:
            _forget_sources(key_path, sources)
            base[key] = _copy(value)
            _record_sources(value, key_path, source, sources)
    return base


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def compose_file(path: str | Path, _stack: tuple[Path, ...] = ()) -> ComposedRecipe:
    """Read a recipe file and everything it includes through ``_base_``.

    Bases are merged in order, then the file itself on top (later wins). Relative
    base paths resolve against the including file's directory.
    """
    path = Path(path)
    resolved = path.resolve()
    if resolved in _stack:
        chain = " -> ".join(str(p) for p in (*_stack, resolved))
        raise RecipeError(
            f"{path}: _base_ inclusion cycle: {chain}. A recipe cannot include itself, directly or "
            f"through its bases; remove one of these {BASE_KEY} entries to break the cycle"
        )
    raw = read_yaml_file(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of keys to values, found {type(raw).__name__}")
    bases = raw.pop(BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise RecipeError(f"{path}: {BASE_KEY} must be a file name or a list of file names, found {bases!r}")

    merged: dict[str, Any] = {}
    sources: dict[KeyPath, str] = {}
    for base in bases:
        base_path = Path(os.path.normpath(path.parent / base))
        if not base_path.is_file():
            raise RecipeError(
                f"{path}: {BASE_KEY} entry {base!r} not found (looked for {base_path}). {BASE_KEY} paths "
                f"are relative to the directory of the file that names them ({path.parent}); "
                f"correct the entry or create the file"
            )
        included = compose_file(base_path, (*_stack, resolved))
        deep_merge(merged, included.data, "", sources)
        sources.update(included.sources)
    deep_merge(merged, raw, str(path), sources)
    return ComposedRecipe(data=merged, sources=sources, root_file=str(path))


def parse_override(text: str) -> tuple[KeyPath, Any]:
    """``a.b.c=value`` → (("a", "b", "c"), value), the value typed as YAML."""
    key, sep, raw_value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise RecipeError(
            f"override {text!r} is not of the form key.path=value (e.g. losses.kd.weight=0.9)"
        )
    value = parse_yaml(raw_value, f"override {text!r}") if raw_value.strip() else None
    return tuple(key.split(".")), value


def apply_overrides(recipe: ComposedRecipe, overrides: list[str]) -> ComposedRecipe:
    """Set each ``key.path=value`` in order, creating intermediate mappings as needed."""
    for text in overrides:
        path, value = parse_override(text)
        node = recipe.data
        for depth, key in enumerate(path[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                raise RecipeError(
                    f"override {text!r}: {format_key(path[: depth + 1])} holds a "
                    f"{type(child).__name__}, not a mapping, so it has no key {path[depth + 1]!r}"
                )
            node = child
        deep_merge(node, {path[-1]: value}, OVERRIDE_SOURCE, recipe.sources, path[:-1])
    return recipe
