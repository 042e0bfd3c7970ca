"""YAML reading and writing for recipes: safe loading with readable errors.

PyYAML follows YAML 1.1, where ``5e-4`` is a string (a float needs a dot). Recipes
are full of such numbers, so the loader here also reads exponent-only floats.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from distill.errors import RecipeError


class RecipeLoader(yaml.SafeLoader):
    """A safe loader that also reads ``1e-4``-style numbers as floats."""


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


YAML_FIX_HINT = (
    "Fix the YAML syntax there: an unclosed bracket, brace or quote, a missing space after ':', "
    "a tab in the indentation or a wrongly indented line are the usual causes."
)


def _yaml_context(error: yaml.MarkedYAMLError) -> str:
    """`` (while parsing a flow mapping started at line 1, column 10)``, where PyYAML knows it; else empty.

    The context points at the construct that was left open, which is often the line to
    fix rather than the one where the parser gave up.
    """
    if not error.context:
        return ""
    mark = error.context_mark
    started = f" started at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f" ({error.context}{started})"


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text; a syntax error names the source, line and column, and says what to fix."""
    try:
        return yaml.load(text, Loader=RecipeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = error.problem or str(error)
        raise RecipeError(f"{where}: invalid YAML: {problem}{_yaml_context(error)}. {YAML_FIX_HINT}") from None
    except yaml.YAMLError as error:
        raise RecipeError(f"{source}: invalid YAML: {error}. {YAML_FIX_HINT}") from None


def read_yaml_file(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"recipe file {path} does not exist") from None
    except OSError as error:
        raise RecipeError(f"recipe file {path} cannot be read: {error}") from None
    return parse_yaml(text, str(path))


def dump_yaml(data: Any) -> str:
    """Block-style YAML that keeps the key order of ``data``."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
