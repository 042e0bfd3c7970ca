"""``distill recipes [DIR]``: list the shipped recipes, one line each."""

from __future__ import annotations

import argparse
from pathlib import Path

import distill
from distill.errors import DistillError
from distill.recipe.yaml_io import read_yaml_file


def default_recipe_dir() -> Path:
    """``./recipes`` when it exists, else the ``recipes/`` folder beside the package (source checkouts)."""
    local = Path("recipes")
    if local.is_dir():
        return local
    return Path(distill.__file__).resolve().parent.parent / "recipes"


def describe(path: Path) -> str:
    """The recipe's own ``description`` (from the file itself, not its bases)."""
    data = read_yaml_file(path)
    if isinstance(data, dict) and isinstance(data.get("description"), str):
        return data["description"].strip().splitlines()[0]
    return ""


# Folders of YAML files that are not recipes: shared recipe fragments, and cluster profiles (distill sweep).
NOT_RECIPE_FOLDERS = frozenset({"_base_", "cluster"})


def list_recipes(root: Path) -> list[tuple[Path, str]]:
    """Every recipe under ``root`` except the files in :data:`NOT_RECIPE_FOLDERS`, as paths ``distill train`` takes.

    A path is relative to the working directory when the recipe lies below it
    (``recipes/cifar100/kd/…``), else absolute: either way it can be pasted as is.
    """
    found = []
    here = Path.cwd().resolve()
    for path in sorted(root.resolve().rglob("*.yaml")):
        if NOT_RECIPE_FOLDERS.intersection(path.relative_to(root.resolve()).parts):
            continue
        found.append((path.relative_to(here) if path.is_relative_to(here) else path, describe(path)))
    return found


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("recipes", help="list the available recipes")
    parser.add_argument("directory", nargs="?", help="recipe folder (default: ./recipes or the package's)")
    parser.add_argument("--filter", default="", help="only recipes whose path contains this text")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    root = Path(args.directory) if args.directory else default_recipe_dir()
    if not root.is_dir():
        raise DistillError(f"recipe folder {root} does not exist; give the folder as an argument")
    entries = [(p, d) for p, d in list_recipes(root) if args.filter in str(p)]
    width = max((len(str(p)) for p, _ in entries), default=0)
    for path, description in entries:
        print(f"{str(path):<{width}}  {description}")
    print(f"{len(entries)} recipe(s) in {root}")
    return 0
