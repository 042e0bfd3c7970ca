"""``distill mi-bench``: the ML-CPC paper's MI-estimation experiment (correlated Gaussians, staircase of MI levels)."""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from distill.cli.deferred import defer_options

if TYPE_CHECKING:
    from distill.mi_bench.bench import BenchConfig, BenchResult

DEFAULT_OUTPUT = "mi_bench"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "mi-bench",
        help="MI estimators (CPC, α-CPC, ML-CPC, NWJ, CRD's NCE) on correlated Gaussians: the ML-CPC paper's figure",
        description=(
            "Train one critic per (critic type, estimator) by maximising that estimator's bound while the true "
            "mutual information of x ~ N(0, I_d), y = ρx + sqrt(1-ρ²)ε climbs a staircase (2, 4, 6, 8, 10 nats). "
            "Writes DIR/mi_bench.csv (step, true_mi, estimator, critic, estimate, smoothed), DIR/mi_bench.json "
            "(settings and the estimate at each level) and DIR/mi_bench.png (with matplotlib). "
            "The default is a quick CPU setting; --paper gives the paper's (20,000 steps, both critics)."
        ),
    )
    parser.set_defaults(run=run)
    defer_options(parser, _add_options)


def _add_options(parser: argparse.ArgumentParser) -> None:
    """The options, whose help quotes the bench's defaults: added only when ``mi-bench`` is used (torch)."""
    from distill.mi_bench.bench import PAPER, QUICK
    from distill.mi_bench.critics import CRITICS
    from distill.mi_bench.estimators import DEFAULT_ESTIMATORS, ESTIMATORS

    parser.epilog = (
        f"Estimators: NAME or NAME:ALPHA, NAME one of {', '.join(ESTIMATORS)} (infonce = cpc; only cpc and ml-cpc take α). "
        f"Default: {','.join(DEFAULT_ESTIMATORS)}."
    )
    parser.add_argument("--output", "-o", default=DEFAULT_OUTPUT, metavar="DIR", help=f"output folder (default: {DEFAULT_OUTPUT}/)")
    parser.add_argument(
        "--paper",
        action="store_true",
        help=f"the paper's settings: {PAPER.steps} steps, batch {PAPER.batch_size}, "
        f"critics {','.join(PAPER.critics)}, EMA span {PAPER.smoothing}",
    )
    parser.add_argument(
        "--steps", type=int, metavar="N", help=f"training steps in all, split evenly over the levels (quick: {QUICK.steps})"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        help=f"n, pairs per batch; each positive's negatives are the n - 1 others, so the CPC ceiling is log n "
        f"(default {QUICK.batch_size})",
    )
    parser.add_argument("--levels", metavar="LIST", help="the true MI of each stair, in nats (default 2,4,6,8,10)")
    parser.add_argument(
        "--critics",
        metavar="LIST",
        help=f"critic types among {', '.join(CRITICS)} (quick: {','.join(QUICK.critics)}; the joint critic costs ~30x more per step)",
    )
    parser.add_argument("--estimators", metavar="LIST", help="estimators to compare, e.g. cpc,ml-cpc:0.01,nwj (see below)")
    parser.add_argument("--cubic", action="store_true", help="the cubic variant: y is replaced by y³ (same MI)")
    parser.add_argument("--lr", type=float, help=f"Adam learning rate (default {QUICK.lr:g})")
    parser.add_argument(
        "--smooth", type=int, metavar="SPAN", help="EMA span of the smoothed curves (default: min(200, steps per level / 10))"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the critics' weights and of the samples (default 0)")
    parser.add_argument(
        "--device", default="auto", help="torch device: auto (an accelerator if there is one, else cpu), cpu, cuda, cuda:1, mps ..."
    )
    parser.add_argument("--no-figure", action="store_true", help="write the CSV and JSON only")
    parser.add_argument("--replot", action="store_true", help="no training: redraw DIR/mi_bench.png from DIR's CSV and JSON")


def _split(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _levels(text: str) -> tuple[float, ...]:
    from distill.mi_bench.errors import MIBenchError

    try:
        return tuple(float(part) for part in _split(text))
    except ValueError:
        raise MIBenchError(f"--levels {text!r}: give MI values in nats separated by commas, e.g. 2,4,6,8,10") from None


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The quick (or, with --paper, the paper's) settings, with every option given on the command line applied."""
    from distill.mi_bench.bench import PAPER, QUICK
    from distill.mi_bench.errors import MIBenchError

    config = PAPER if args.paper else QUICK
    changes: dict[str, object] = {"seed": args.seed, "device": args.device, "cubic": args.cubic}
    if args.steps is not None:
        changes["steps"] = args.steps
    if args.batch_size is not None:
        changes["batch_size"] = args.batch_size
    if args.levels is not None:
        changes["levels"] = _levels(args.levels)
    if args.critics is not None:
        changes["critics"] = _split(args.critics)
    if args.estimators is not None:
        changes["estimators"] = _split(args.estimators)
    if args.lr is not None:
        changes["lr"] = args.lr
    if args.smooth is not None:
        if args.smooth < 1:
            raise MIBenchError(f"--smooth must be a span ≥ 1, got {args.smooth}")
        changes["smoothing"] = args.smooth
    config = replace(config, **changes)
    config.validate()
    return config


def _output_dir(text: str) -> Path:
    from distill.mi_bench.errors import MIBenchError

    out = Path(text)
    if out.exists() and not out.is_dir():
        raise MIBenchError(f"--output {out} is a file; give a folder")
    return out


def summary_table(result: BenchResult) -> str:
    """Per critic, the estimate at each MI level (mean over the second half of the level), beside ceilings."""
    from distill.mi_bench.bench import level_estimates

    n = result.config.batch_size
    levels = list(dict.fromkeys(result.true_mi))
    lines = [
        f"estimate at each level (mean over the second half of its steps); n = {n}, log n = {math.log(n):.2f}",
        f"negatives: the other n − 1 = {n - 1} pairs of the batch (as the losses' bank: batch with B_global = n): "
        "the ceiling is log n for CPC/InfoNCE, log(n/α) for α-CPC and α-ML-CPC, log(n − 1) for NCE",
    ]
    for critic in dict.fromkeys(curve.critic for curve in result.curves):
        lines.append(f"\n{critic} critic")
        lines.append(f"  {'estimator':<24}" + "".join(f"{f'I={level:g}':>8}" for level in levels) + f"{'ceiling':>9}")
        for curve in (c for c in result.curves if c.critic == critic):
            estimates = level_estimates(curve.estimates, result.true_mi)
            mark = "" if curve.estimator.is_lower_bound(n, n) else " *"
            ceiling = curve.estimator.ceiling(n)
            lines.append(
                f"  {curve.estimator.label + mark:<24}"
                + "".join(f"{estimates[level]:8.2f}" for level in levels)
                + (f"{ceiling:9.2f}" if math.isfinite(ceiling) else f"{'none':>9}")
                + (f"  ({curve.skipped_steps} non-finite steps skipped)" if curve.skipped_steps else "")
            )
    if any(not c.estimator.is_lower_bound(n, n) for c in result.curves):
        lines.append("\n* not an MI lower bound at this α (α-CPC with α < 1, α-ML-CPC below α* = n/(n(n-1)+1)): it may overshoot")
    return "\n".join(lines)


def _draw(result: BenchResult, out: Path) -> Path | None:
    from distill.mi_bench.figure import FiguresUnavailable, write_figure

    try:
        return write_figure(result, out)
    except FiguresUnavailable:
        print(
            "figure skipped: matplotlib is not installed. Install it with pip install 'distill[plots]', "
            f"then draw the figure from the CSV without training: distill mi-bench --replot --output {out}"
        )
        return None


def run(args: argparse.Namespace) -> int:
    from distill.mi_bench.bench import read_results, resolve_device, run_bench, write_results

    out = _output_dir(args.output)
    if args.replot:
        result = read_results(out)
        written: list[Path] = []
    else:
        config = config_from_args(args)
        specs = config.specs()
        device = resolve_device(config.device)
        print(
            f"mi-bench: {len(specs)} estimator(s) x {len(config.critics)} critic(s) x {config.steps} steps "
            f"(levels {', '.join(f'{level:g}' for level in config.levels)} nats, batch {config.batch_size}, "
            f"d = {config.dim}{', cubic' if config.cubic else ''}, device {device}, seed {config.seed})"
        )
        start = time.perf_counter()
        result = run_bench(config)
        print(f"trained {len(result.curves)} critic(s) in {time.perf_counter() - start:.0f} s")
        written = list(write_results(result, out))
        print(summary_table(result))
    if not args.no_figure:
        figure = _draw(result, out)
        if figure is not None:
            written.append(figure)
    for path in written:
        print(f"wrote {path}")
    return 0
