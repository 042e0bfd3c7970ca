"""``distill train RECIPE [key.path=value ...]``: distil (or train) a network from a recipe.

``distill train --resume RUN_DIR`` continues a run from its last checkpoint with
the recipe the run recorded; giving ``--run-dir`` of an unfinished run resumes it
as well. Either way the recipe and the teacher file are checked against the run's.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from distill.engine.launch import check_process_count
from distill.errors import DistillError
from distill.files.rundir import RECIPE_FILE
from distill.recipe.compose import ComposedRecipe
from distill.recipe.parse import compose_recipe, parse_composed, recipe_name_from_path
from distill.recipe.schema import Recipe
from distill.recipe.serialize import flatten_recipe, recipe_to_dict


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a student (or a teacher) from a YAML recipe, or resume a run",
        description="Train from a recipe. Overrides are key.path=value with YAML typing, e.g. "
        "teacher.checkpoint=teachers/resnet32x4.pth losses.kd.weight=0.9 schedule.epochs=10. "
        "A run stopped by a signal exits with status 75 after writing a checkpoint; "
        "'distill train --resume RUN_DIR' continues it exactly.",
    )
    parser.add_argument(
        "recipe", nargs="?", help="a recipe file, e.g. recipes/cifar100/kd/resnet32x4-resnet8x4.yaml (optional with --resume)"
    )
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="recipe overrides")
    parser.add_argument(
        "--run-dir",
        help="write the run here (new or empty, or an unfinished run to resume); default: OUTPUT/<recipe>-<time>",
    )
    parser.add_argument(
        "--resume", metavar="RUN_DIR", help="continue the unfinished run in RUN_DIR from its last checkpoint"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="resume even though the recipe, the teacher file or the number of processes differ from the run's",
    )
    parser.add_argument(
        "--no-tensorboard", action="store_true",
        help="log to no tracker at all: no TensorBoard event files, none of the recipe's tracking.log_with",
    )
    parser.add_argument(
        "--tag", action="append", default=[], metavar="KEY=VALUE",
        help="what the run is in a grid, e.g. --tag task=cifar100 --tag method=kd --tag seed=0 (repeatable): "
        "kept in run.json and given to the trackers (config tags/KEY; W&B and MLflow tags)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved recipe (and where each key came from) and the result of every start-up check "
        "(teacher and its sha256, data, losses on the real feature shapes, parameters, memory), then exit: "
        "no training, no run directory",
    )
    parser.set_defaults(run=run)


def _looks_like_override(text: str) -> bool:
    return "=" in text and not Path(text).exists()


def run(args: argparse.Namespace) -> int:
    check_process_count()  # `accelerate launch --cpu --num_processes N` starts one process: say so, do not train alone
    recipe_path, overrides, run_dir = args.recipe, list(args.overrides), args.run_dir
    if args.resume is not None:
        if run_dir is not None and Path(run_dir) != Path(args.resume):
            raise DistillError(f"--resume {args.resume} and --run-dir {run_dir} name different runs; give one of them")
        run_dir = args.resume
        if recipe_path is not None and _looks_like_override(recipe_path):
            overrides.insert(0, recipe_path)  # `--resume DIR key=value`: no recipe, only overrides
            recipe_path = None
        if recipe_path is None:
            recipe_path = Path(run_dir) / RECIPE_FILE
            if not recipe_path.is_file():
                raise DistillError(
                    f"--resume {run_dir}: no {RECIPE_FILE} there, so it is not a run directory (or the run died "
                    f"before writing it); give the recipe as well: distill train RECIPE --run-dir {run_dir}"
                )
    elif recipe_path is None:
        raise DistillError("give a recipe (distill train RECIPE), or --resume RUN_DIR to continue a run")
    composed = compose_recipe(recipe_path, overrides)
    name = recipe_name_from_path(Path(recipe_path))
    parse_composed(composed, name)  # the schema first: a wrong key or type costs no torch import
    from distill.recipe.load import validate_composed  # the registries behind it import torch

    recipe = validate_composed(composed, name)
    from distill.engine.tracking import parse_tags  # after validation: a recipe error costs no Accelerate import

    tags = parse_tags(args.tag)
    if args.dry_run:
        return dry_run(recipe, composed, run_dir, args.force, tags, tensorboard=not args.no_tensorboard)
    from distill.engine.trainer import train

    train(recipe, run_dir=run_dir, force=args.force, tensorboard=not args.no_tensorboard, tags=tags)
    return 0


def key_sources(recipe: Recipe, composed: ComposedRecipe, resolved_teacher: bool) -> dict[str, tuple[Any, str]]:
    """Every leaf of the resolved recipe → (value, where it came from: a file, an override, the manifest, a default)."""
    sources = {}
    for key, value in flatten_recipe(recipe_to_dict(recipe)).items():
        path = tuple(key.split("."))
        source = next((composed.sources[path[:end]] for end in range(len(path), 0, -1) if path[:end] in composed.sources), None)
        if source is None and resolved_teacher and key in ("teacher.arch", "teacher.checkpoint"):
            source = "teacher manifest"
        if source is None and key == "name":
            source = "the recipe file's path"
        sources[key] = (value, source or "default")
    return sources


def dry_run(
    recipe: Recipe, composed: ComposedRecipe, run_dir: str | None, force: bool, tags: dict[str, str], *, tensorboard: bool = True
) -> int:
    """Build everything a start builds, report it, and leave no trace."""
    from distill.engine.trainer import Trainer
    from distill.recipe.resolve import resolve_recipe

    named_teacher = recipe.teacher is not None and recipe.teacher.checkpoint is None
    resolved = resolve_recipe(recipe)
    trainer = Trainer(resolved, run_dir, force=force, dry_run=True, tags=tags, tensorboard=tensorboard)
    print(f"recipe {recipe.name} (resolved; every key with where it came from):")
    for key, (value, source) in key_sources(resolved.recipe, composed, named_teacher).items():
        print(f"  {key} = {value!r}    [{source}]")
    print("start-up checks (all passed):")
    for line in trainer.setup_report():
        print(f"  {line}")
    print("dry run: nothing was trained and no run directory was written")
    return 0
