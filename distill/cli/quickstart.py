"""``distill quickstart``: a complete, self-contained demonstration, no download needed.

On a dataset generated on the fly, for each of (by default) two seeds, it trains a small
teacher, then the same small student three ways: alone (CE), with KD, and with CRD + KD,
and prints the last-epoch test accuracies as mean ± std over the seeds, the gain of each
method over the student alone, and whether that gain exceeds the seed-to-seed spread,
in words. The design and why each setting is what it is: ``distill.benchmark.quickstart``.
It exercises the real recipe validation, trainer, checkpoints and evaluation, so it
doubles as a smoke test of an installation. Its numbers say nothing about CIFAR-100.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

DISCLAIMER = (
    "This is a DEMONSTRATION on a small generated dataset (10 classes in 3 groups of look-alike classes, "
    "16×16 images). Its numbers show the toolkit working end to end; they say nothing about CIFAR-100."
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quickstart",
        help="a self-contained demo on generated data: teacher, student alone, + KD, + CRD + KD, over two seeds",
    )
    parser.add_argument("--output", help="where to keep the runs (default: a temporary folder)")
    parser.add_argument("--reduced", action="store_true", help="a tiny version (seconds, for smoke tests)")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, nargs="+", metavar="S", help="the seeds to run (default: 0 1)")
    seeds.add_argument("--seed", type=int, metavar="S", help="shorthand for --seeds S S+1")
    parser.set_defaults(run=run)


def chosen_seeds(args: argparse.Namespace) -> list[int]:
    """The seeds to run: ``--seeds`` as given, ``--seed S`` as S and S+1, else the default."""
    from distill.benchmark.quickstart import DEFAULT_SEEDS
    from distill.errors import DistillError

    if args.seeds:
        seeds = list(dict.fromkeys(args.seeds))
    elif args.seed is not None:
        seeds = [args.seed, args.seed + 1]
    else:
        seeds = list(DEFAULT_SEEDS)
    if min(seeds) < 0:
        raise DistillError(f"quickstart: seeds must be integers ≥ 0; got {min(seeds)}")
    return seeds


def _run(output: Path, size, seeds: list[int], workers: int) -> dict[str, list[float]]:
    from distill.benchmark.quickstart import run_quickstart

    print(
        f"Training, for each of {len(seeds)} seed(s), a teacher then three students, up to {workers} runs at a time "
        f"in worker processes, one thread each (one line per finished model; each run's log: {output}/seed<S>/<model>/log.txt)",
        flush=True,
    )
    return run_quickstart(output, size, seeds, workers=workers, say=lambda line: print(line, flush=True))


def _cpu_seconds() -> float:
    """CPU seconds of this process and of its finished child processes (the workers)."""
    try:
        import resource
    except ImportError:  # Windows: this process only
        return time.process_time()
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run(args: argparse.Namespace) -> int:
    from distill.benchmark.quickstart import (
        FULL,
        REDUCED,
        format_report,
    )

    size = REDUCED if args.reduced else FULL
    seeds = chosen_seeds(args)
    workers = os.cpu_count() or 1
    print(DISCLAIMER, flush=True)
    started, cpu = time.perf_counter(), _cpu_seconds()
    if args.output:
        results = _run(Path(args.output), size, seeds, workers)
    else:
        with tempfile.TemporaryDirectory(prefix="distill-quickstart-") as folder:
            results = _run(Path(folder), size, seeds, workers)
    print("\n" + format_report(results, seeds, size))
    print(f"\ntotal {time.perf_counter() - started:.0f} s ({_cpu_seconds() - cpu:.0f} s of CPU in all processes). {DISCLAIMER}")
    print("Next: 'distill recipes' lists the CIFAR-100 recipes; README.md says how to run one.")
    return 0
