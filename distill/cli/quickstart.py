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


def run(args: argparse.Namespace) -> int:
    from distill.benchmark.quickstart import (
        FULL,
        REDUCED,
        format_report,
        run_quickstart,
    )

    size = REDUCED if args.reduced else FULL
    seeds = chosen_seeds(args)
    print(DISCLAIMER, flush=True)
    started = time.perf_counter()
    if args.output:
        results = run_quickstart(Path(args.output), size, seeds)
    else:
        with tempfile.TemporaryDirectory(prefix="distill-quickstart-") as folder:
            results = run_quickstart(Path(folder), size, seeds)
    print("\n" + format_report(results, seeds, size))
    print(f"\ntotal {time.perf_counter() - started:.0f} s. {DISCLAIMER}")
    print("Next: 'distill recipes' lists the CIFAR-100 recipes; README.md says how to run one.")
    return 0
