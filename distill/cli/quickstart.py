"""``distill quickstart``: a complete, self-contained demonstration, no download needed.

On a dataset generated on the fly it trains a small teacher, then the same small
student twice: alone (cross-entropy) and distilled from the teacher (CE + KD),
and prints the three test accuracies side by side. It exercises the real recipe
validation, trainer, checkpoints and evaluation, so it doubles as a smoke test of
an installation. Its numbers say nothing about CIFAR-100.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.engine.rundir import LAST_CHECKPOINT

TEACHER_ARCH = "resnet20"
STUDENT_ARCH = "resnet8"


@dataclass(frozen=True)
class QuickstartSize:
    """How much work the demonstration does."""

    train_size: int
    test_size: int
    teacher_epochs: int
    student_epochs: int
    batch_size: int


FULL = QuickstartSize(train_size=2000, test_size=1000, teacher_epochs=12, student_epochs=10, batch_size=64)
REDUCED = QuickstartSize(train_size=256, test_size=128, teacher_epochs=1, student_epochs=1, batch_size=64)


def late_milestone(epochs: int) -> list[int]:
    """One ×0.1 learning-rate step three quarters into training."""
    return [max(1, int(epochs * 0.75))]


def base_recipe(size: QuickstartSize, seed: int) -> dict[str, Any]:
    return {
        "data": {
            "dataset": "synthetic",
            "root": ".",
            "batch_size": size.batch_size,
            "test_batch_size": 256,
            "num_workers": 0,
            "options": {"train_size": size.train_size, "test_size": size.test_size, "seed": seed},
        },
        "optimizer": {"lr": 0.05},
        "schedule": {"epochs": size.student_epochs, "milestones": late_milestone(size.student_epochs)},
        "seed": seed,
        "log_every": 10,
    }


def quickstart_recipes(size: QuickstartSize, seed: int, teacher_checkpoint: str) -> dict[str, dict[str, Any]]:
    """The three recipes of the demonstration, as plain mappings."""
    base = base_recipe(size, seed)
    teacher = {
        **base,
        "name": "quickstart/teacher",
        "student": {"arch": TEACHER_ARCH},
        "losses": {"ce": {"weight": 1.0}},
        "schedule": {"epochs": size.teacher_epochs, "milestones": late_milestone(size.teacher_epochs)},
    }
    alone = {**base, "name": "quickstart/student-alone", "student": {"arch": STUDENT_ARCH}, "losses": {"ce": {"weight": 1.0}}}
    distilled = {
        **base,
        "name": "quickstart/student-kd",
        "student": {"arch": STUDENT_ARCH},
        "teacher": {"arch": TEACHER_ARCH, "checkpoint": teacher_checkpoint},
        "losses": {"ce": {"weight": 0.5}, "kd": {"weight": 0.5, "temperature": 4.0}},
    }
    return {"teacher": teacher, "alone": alone, "distilled": distilled}


def run_quickstart(output_dir: Path, size: QuickstartSize = FULL, seed: int = 0, tensorboard: bool = True) -> list[dict[str, Any]]:
    """Train the three models; returns one row per model (label, top-1, seconds, run dir)."""
    from distill.engine import train
    from distill.recipe import recipe_from_dict

    output_dir.mkdir(parents=True, exist_ok=True)
    teacher_dir = output_dir / "teacher"
    recipes = quickstart_recipes(size, seed, str(teacher_dir / LAST_CHECKPOINT))
    labels = {
        "teacher": f"teacher  {TEACHER_ARCH} (CE)",
        "alone": f"student  {STUDENT_ARCH} alone (CE)",
        "distilled": f"student  {STUDENT_ARCH} + KD from the teacher (0.5·CE + 0.5·KD, T=4)",
    }
    rows = []
    for key, data in recipes.items():
        print(f"\n== {labels[key]} ==", flush=True)
        recipe = recipe_from_dict(data, source=f"quickstart:{key}")
        started = time.perf_counter()
        result = train(recipe, run_dir=output_dir / key, tensorboard=tensorboard)
        rows.append(
            {"model": labels[key], "top1": result.final_top1, "seconds": time.perf_counter() - started, "run_dir": str(result.run_dir)}
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    width = max(len(r["model"]) for r in rows)
    lines = [f"{'model':<{width}}  {'test top-1':>10}  {'time':>7}"]
    lines += [f"{r['model']:<{width}}  {r['top1']:>9.2f}%  {r['seconds']:>6.0f}s" for r in rows]
    return "\n".join(lines)


DISCLAIMER = (
    "This is a DEMONSTRATION on a small generated dataset (10 classes in 3 groups of look-alike classes, 32×32 images). "
    "Its numbers show the toolkit working end to end; they say nothing about CIFAR-100."
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quickstart", help="a self-contained demo: teacher, student alone, student + KD, on generated data"
    )
    parser.add_argument("--output", help="where to keep the three runs (default: a temporary folder)")
    parser.add_argument("--reduced", action="store_true", help="a tiny version (seconds, for smoke tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    size = REDUCED if args.reduced else FULL
    print(DISCLAIMER, flush=True)
    started = time.perf_counter()
    if args.output:
        rows = run_quickstart(Path(args.output), size, args.seed)
    else:
        with tempfile.TemporaryDirectory(prefix="distill-quickstart-") as folder:
            rows = run_quickstart(Path(folder), size, args.seed)
    print("\n" + format_table(rows))
    print(f"\ntotal {time.perf_counter() - started:.0f} s. {DISCLAIMER}")
    print("Next: 'distill recipes' lists the CIFAR-100 recipes; README.md says how to run one.")
    return 0
