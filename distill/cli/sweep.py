"""``distill sweep``: run the benchmark grid (tasks × methods × seeds), skipping finished runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from distill.cli.recipes import default_recipe_dir
from distill.errors import DistillError

EXIT_SOME_FAILED = 1
"""Some cells failed, or were not run because their run directories hold runs with other settings."""
EXIT_DRY_RUN_PROBLEMS = 2
"""``--dry-run`` found problems: a real sweep would fail those cells or leave them unrun."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="run tasks × methods × seeds, each a normal run directory; re-running skips finished runs",
        description="Run a grid of CIFAR-100 benchmark runs. Each run is OUTPUT/<method>/<task>/seed<N>; a run "
        "with summary.json is finished and skipped, an unfinished one resumes from its last checkpoint. A run "
        "directory holding a run with other settings (recipe or overrides that change the result) is reported and "
        "not run; the exit status is then 1, as when a run fails. Example: "
        "distill sweep --tasks all --methods kd,crd,ml_cpc --seeds 0,1,2 -o data.root=/data",
    )
    parser.add_argument("--tasks", default="all", help="'all' or comma-separated task names, e.g. resnet32x4-resnet8x4")
    parser.add_argument("--methods", required=True, help="'all' or comma-separated recipe folders, e.g. kd,crd,ml_cpc")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds or a range, e.g. 0,1,2 or 0-4")
    parser.add_argument("--recipes", help="the folder holding <method>/<task>.yaml (default: recipes/cifar100)")
    parser.add_argument("--output", default="runs/sweep", help="where the run directories go (default: runs/sweep)")
    parser.add_argument(
        "-o", "--override", action="append", default=[], metavar="key.path=value",
        help="a recipe override for every run (repeatable), e.g. -o data.root=/data -o schedule.epochs=1",
    )
    parser.add_argument("--jobs", type=int, default=1, help="1: one run after another in this process; N: N independent processes")
    parser.add_argument("--devices", default="", help="with --jobs N: GPUs to hand out round-robin, e.g. 0,1,2,3")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failed run")
    parser.add_argument(
        "--dry-run", action="store_true",
        help="print the grid with each run's status and check every run short of training (recipe and overrides, "
        "teacher checkpoints, dataset, settings of existing run directories); exit 2 if any problem is found",
    )
    parser.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard event files")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from distill.benchmark.sweep import (
        OTHER_SETTINGS_ADVICE,
        check_cells,
        format_plan,
        last_line,
        parse_methods,
        parse_seeds,
        parse_tasks,
        plan,
        run_sweep,
    )

    recipe_root = Path(args.recipes) if args.recipes else default_recipe_dir() / "cifar100"
    if not recipe_root.is_dir():
        raise DistillError(f"recipe folder {recipe_root} does not exist; pass --recipes DIR (holding <method>/<task>.yaml)")
    if args.jobs < 1:
        raise DistillError(f"--jobs must be 1 or more, got {args.jobs}")
    output = Path(args.output)
    cells, absent = plan(
        recipe_root, parse_methods(args.methods, recipe_root), parse_tasks(args.tasks), parse_seeds(args.seeds), output
    )
    if args.dry_run:
        checks = check_cells(cells, args.override)
        print(format_plan(checks, absent))
        troubled = sum(bool(check.problems) for check in checks)
        if troubled:
            print(f"{troubled} of {len(checks)} runs have problems (listed under each run): a real sweep would "
                  f"fail them or leave them unrun.")
            if any("with other settings" in problem for check in checks for problem in check.problems):
                print(OTHER_SETTINGS_ADVICE)
            return EXIT_DRY_RUN_PROBLEMS
        return 0
    if not cells:
        raise DistillError("the grid is empty: no recipe exists for these methods and tasks")
    outcome = run_sweep(
        cells,
        args.override,
        jobs=args.jobs,
        devices=[d.strip() for d in args.devices.split(",") if d.strip()],
        tensorboard=not args.no_tensorboard,
        fail_fast=args.fail_fast,
        log_dir=output / "logs",
    )
    print(
        f"sweep finished: {len(outcome.done)} ran, {len(outcome.skipped)} skipped (already finished), "
        f"{len(outcome.failed)} failed, {len(outcome.other_settings)} not run (other settings). "
        f"Report: distill report {output}"
    )
    for cell, message in outcome.failed:
        print(f"  failed: {cell.label} ({cell.run_dir}): {last_line(message)}")
    for _, message in outcome.other_settings:
        print(f"  not run: {message}")
    if outcome.other_settings:
        print(OTHER_SETTINGS_ADVICE)
    return EXIT_SOME_FAILED if outcome.failed or outcome.other_settings else 0
