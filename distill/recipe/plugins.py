"""User plugins: Python files or modules named in a recipe's ``plugins:`` list.

Importing a plugin runs its ``@register_loss`` (or ``@register_model``,
``@register_dataset``) decorators, so its names can be used in the same recipe,
with no change to the package. A file path is resolved against the recipe file
that names it (like ``_base_``); anything without a ``.py`` suffix is imported as
a module from ``sys.path``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import traceback
from pathlib import Path

from distill.errors import DistillError, RecipeError

_LOADED: dict[str, object] = {}


def resolve_plugin(entry: str, declared_in: str) -> str:
    """An absolute path for a ``.py`` entry (relative to the declaring recipe), else the module name."""
    if not entry.endswith(".py"):
        return entry
    path = Path(entry).expanduser()
    if not path.is_absolute():
        base = Path(declared_in).parent if declared_in.endswith((".yaml", ".yml")) else Path.cwd()
        path = base / path
    return str(path.resolve())


def load_plugin(entry: str, key: str) -> None:
    """Import one plugin (once per process); errors say which recipe key named it."""
    if entry in _LOADED:
        return
    try:
        if entry.endswith(".py"):
            path = Path(entry)
            if not path.is_file():
                raise RecipeError(f"{key}: plugin file {path} does not exist")
            name = f"distill_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(entry)
    except DistillError as error:
        raise DistillError(f"{key}: plugin {entry}: {error}") from None
    except Exception:  # the plugin's own code failed: show its traceback, it is theirs to fix
        raise DistillError(f"{key}: plugin {entry} failed to import:\n{traceback.format_exc()}") from None
    _LOADED[entry] = module
