"""``distill sweep``: run the benchmark grid (tasks × methods × seeds), here or on a Slurm cluster; ``--status`` shows it."""

from __future__ import annotations

import argparse
from pathlib import Path

from distill.cli.recipes import default_recipe_dir
from distill.errors import DistillError

EXIT_SOME_FAILED = 1
"""Some cells failed, or were not run because their run directories hold runs with other settings."""
EXIT_DRY_RUN_PROBLEMS = 2
"""``--dry-run`` found problems: a real sweep would fail those cells or leave them unrun."""

LAUNCHERS = ("local", "slurm")

def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="run tasks × methods × seeds, each a normal run directory; re-running skips finished runs",
        description="Run a grid of CIFAR-100 benchmark runs. Each run is OUTPUT/<method>/<task>/seed<N>; a run "
        "with summary.json is finished and skipped, an unfinished one resumes from its last checkpoint. A run "
        "directory holding a run with other settings (recipe or overrides that change the result) is reported and "
        "not run; the exit status is then 1, as when a run fails. --launcher slurm submits the cells as Slurm jobs "
        "(one job array, through submitit), --status shows every cell's state, --retry-failed runs only the failed "
        "ones. Example: distill sweep --tasks all --methods kd,crd,ml_cpc --seeds 0,1,2 -o data.root=/data",
    )
    parser.add_argument("--tasks", default="all", help="'all' or comma-separated task names, e.g. resnet32x4-resnet8x4")
    parser.add_argument(
        "--methods",
        help="'all' or comma-separated recipe folders, e.g. kd,crd,ml_cpc; without it the grid is the one recorded in "
        "OUTPUT/sweep.json by the last sweep into OUTPUT (methods, tasks, seeds, recipes and overrides)",
    )
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
    parser.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard event files (no tracker)")
    parser.add_argument(
        "--status", metavar="RUNS_DIR",
        help="print the state of every cell of the sweep in RUNS_DIR (finished, running, queued, failed with its error, "
        "stopped, not started) from the run directories and job records, and exit",
    )
    parser.add_argument(
        "--retry-failed", action="store_true",
        help="run (or submit) only the cells that failed; the others are left as they are",
    )
    cluster = parser.add_argument_group(
        "cluster (--launcher slurm)",
        "Each cell is one Slurm job, submitted through submitit as one job array; a profile file holds the settings, "
        "the flags below override it. Jobs are checkpointed and requeued before a time limit or preemption.",
    )
    cluster.add_argument(
        "--launcher", choices=LAUNCHERS, default="local",
        help="local: on this machine (--jobs, --devices); slurm: submit the cells as Slurm jobs and return "
        "(--wait to follow them)",
    )
    cluster.add_argument("--cluster-profile", metavar="FILE", help="a YAML cluster profile (see recipes/cluster/example-slurm.yaml)")
    cluster.add_argument("--partition", help="Slurm partition")
    cluster.add_argument("--account", help="Slurm account")
    cluster.add_argument("--qos", help="Slurm quality of service")
    cluster.add_argument("--gpus-per-cell", type=int, help="GPUs (= processes) per cell, on one node; 0 for a CPU job")
    cluster.add_argument("--cpus-per-gpu", type=int, help="CPU cores per process")
    cluster.add_argument("--mem-gb", type=float, help="memory per job in GB")
    cluster.add_argument("--time-limit", type=int, metavar="MINUTES", help="time limit per job; longer runs are requeued")
    cluster.add_argument("--max-running", type=int, help="at most this many cells run at once (the job array's throttle)")
    cluster.add_argument(
        "--slurm-option", action="append", default=[], metavar="KEY=VALUE",
        help="any other sbatch option (repeatable), e.g. --slurm-option exclude=node7",
    )
    cluster.add_argument("--wait", action="store_true", help="with --launcher slurm: stay and report each cell as its job ends")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from distill.benchmark.grid_status import CELL_FAILED, format_status, grid_states
    from distill.benchmark.sweep import check_cells, plan, read_grid, write_grid

    if args.status:
        output = Path(args.status)
        grid = read_grid(output)
        cells, _ = plan(Path(grid.recipes), grid.methods, grid.tasks, grid.seeds, output)
        print(format_status(grid_states(cells, output)))
        return 0
    if args.jobs < 1:
        raise DistillError(f"--jobs must be 1 or more, got {args.jobs}")
    output = Path(args.output)
    grid = grid_from_arguments(args, output)
    recipe_root = Path(grid.recipes)
    cells, absent = plan(recipe_root, grid.methods, grid.tasks, grid.seeds, output)
    if args.dry_run:
        return dry_run(check_cells(cells, grid.overrides), absent)
    if not cells:
        raise DistillError("the grid is empty: no recipe exists for these methods and tasks")
    launcher = cluster_executor(args, output) if args.launcher == "slurm" else None  # a bad profile leaves nothing behind
    write_grid(output, grid)
    if args.retry_failed:
        cells = [state.cell for state in grid_states(cells, output) if state.state == CELL_FAILED]
        print(f"--retry-failed: {len(cells)} failed cell(s)" + (": " + ", ".join(c.label for c in cells) if cells else ""))
        if not cells:
            return 0
    if launcher is not None:
        return submit(args, launcher, cells, grid.overrides, output)
    from distill.benchmark.launchers.local import run_sweep

    outcome = run_sweep(
        cells,
        grid.overrides,
        jobs=args.jobs,
        devices=[d.strip() for d in args.devices.split(",") if d.strip()],
        tensorboard=not args.no_tensorboard,
        fail_fast=args.fail_fast,
        log_dir=output / "logs",
        records=output,
    )
    print(
        f"sweep finished: {len(outcome.done)} ran, {len(outcome.skipped)} skipped (already finished), "
        f"{len(outcome.failed)} failed, {len(outcome.other_settings)} not run (other settings). "
        f"Report: distill report {output}"
    )
    return report_problems(outcome)


def grid_from_arguments(args: argparse.Namespace, output: Path):
    """The grid the flags give; without ``--methods``, the one recorded in ``OUTPUT/sweep.json``."""
    from distill.benchmark.sweep import GridSpec, parse_methods, parse_seeds, parse_tasks, read_grid

    if args.methods is None:
        return read_grid(output)
    recipe_root = Path(args.recipes) if args.recipes else default_recipe_dir() / "cifar100"
    if not recipe_root.is_dir():
        raise DistillError(f"recipe folder {recipe_root} does not exist; pass --recipes DIR (holding <method>/<task>.yaml)")
    return GridSpec(
        recipes=str(recipe_root),
        methods=tuple(parse_methods(args.methods, recipe_root)),
        tasks=tuple(parse_tasks(args.tasks)),
        seeds=tuple(parse_seeds(args.seeds)),
        overrides=tuple(args.override),
    )


def dry_run(checks, absent) -> int:
    """Print the grid with every cell's problems; exit status 2 when there is any."""
    from distill.benchmark.sweep import OTHER_SETTINGS_ADVICE, format_plan

    print(format_plan(checks, absent))
    troubled = sum(bool(check.problems) for check in checks)
    if troubled:
        print(f"{troubled} of {len(checks)} runs have problems (listed under each run): a real sweep would "
              f"fail them or leave them unrun.")
        if any("with other settings" in problem for check in checks for problem in check.problems):
            print(OTHER_SETTINGS_ADVICE)
        return EXIT_DRY_RUN_PROBLEMS
    return 0


def report_problems(outcome) -> int:
    """Print the failed cells and those not run for their settings; the exit status says whether there were any."""
    from distill.benchmark.sweep import OTHER_SETTINGS_ADVICE, last_line

    for cell, message in outcome.failed:
        print(f"  failed: {cell.label} ({cell.run_dir}): {last_line(message)}")
    for _, message in outcome.other_settings:
        print(f"  not run: {message}")
    if outcome.other_settings:
        print(OTHER_SETTINGS_ADVICE)
    return EXIT_SOME_FAILED if outcome.failed or outcome.other_settings else 0


def cluster_profile(args: argparse.Namespace):
    """The profile file (if any) with the flags given on top of it."""
    from distill.benchmark.launchers.profile import ClusterProfile, load_profile, parse_slurm_option, with_flags

    profile = load_profile(args.cluster_profile) if args.cluster_profile else ClusterProfile()
    return with_flags(
        profile,
        partition=args.partition,
        account=args.account,
        qos=args.qos,
        gpus_per_cell=args.gpus_per_cell,
        cpus_per_gpu=args.cpus_per_gpu,
        mem_gb=args.mem_gb,
        time_limit_min=args.time_limit,
        max_running=args.max_running,
        slurm_options=dict(parse_slurm_option(text) for text in args.slurm_option) or None,
    )


def cluster_executor(args: argparse.Namespace, output: Path):
    """``--launcher slurm``: the profile (file and flags), checked, and the submitit executor it makes."""
    from distill.benchmark.launchers.profile import describe, make_executor
    from distill.benchmark.launchers.scheduler import submitit_folder

    if args.jobs != 1 or args.devices:
        raise DistillError("--jobs and --devices are for --launcher local; on Slurm each cell is a job (--max-running, --gpus-per-cell)")
    profile = cluster_profile(args)
    executor = make_executor(profile, submitit_folder(output))
    print(f"cluster: {describe(profile)}")
    return profile, executor


def submit(args: argparse.Namespace, launcher, cells, overrides, output: Path) -> int:
    """``--launcher slurm``: submit the cells as one job array, record the job ids, and (``--wait``) follow them."""
    from distill.benchmark.launchers.scheduler import submit_sweep, wait_for_jobs

    profile, executor = launcher
    if profile.executor == "local" and len(cells) > profile.max_running:
        print(f"note: executor local starts every submitted cell at once (max_running throttles Slurm arrays only); "
              f"to run a large grid on this machine use --launcher local --jobs {profile.max_running}")
    submitted = submit_sweep(cells, overrides, executor, profile.executor, output, tensorboard=not args.no_tensorboard)
    outcome = submitted.outcome
    jobs = ", ".join(sorted({job.job_id.split("_")[0] for _, job in submitted.jobs}))
    print(
        f"submitted {len(submitted.jobs)} cell(s)" + (f" (job {jobs})" if jobs else "")
        + f"; {len(outcome.skipped)} already finished, {len(submitted.in_flight)} already queued or running, "
        f"{len(outcome.other_settings)} not run (other settings), {len(outcome.failed)} unreadable. "
        f"Status: distill sweep --status {output} | report: distill report {output}"
    )
    if args.wait and submitted.jobs:
        waited = wait_for_jobs(submitted.jobs, output)
        outcome.done.extend(waited.done)
        outcome.failed.extend(waited.failed)
        print(f"jobs ended: {len(waited.done)} finished, {len(waited.failed)} failed. Report: distill report {output}")
    return report_problems(outcome)
