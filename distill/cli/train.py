"""``distill train RECIPE [key.path=value ...]``: distil (or train) a network from a recipe."""

from __future__ import annotations

import argparse

from distill.recipe import load_recipe


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a student (or a teacher) from a YAML recipe",
        description="Train from a recipe. Overrides are key.path=value with YAML typing, e.g. "
        "teacher.checkpoint=teachers/resnet32x4.pth losses.kd.weight=0.9 schedule.epochs=10",
    )
    parser.add_argument("recipe", help="a recipe file, e.g. recipes/cifar100/kd/resnet32x4-resnet8x4.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="recipe overrides")
    parser.add_argument("--run-dir", help="write the run here (must be new or empty); default: OUTPUT/<recipe>-<time>")
    parser.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard event files")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from distill.engine import train

    recipe = load_recipe(args.recipe, args.overrides)
    train(recipe, run_dir=args.run_dir, tensorboard=not args.no_tensorboard)
    return 0
