"""What the per-step health check costs: ``StepGuard.flags`` against a whole training step.

Every step computes ``[loss bad, gradient bad, stop]`` on the device (the gradient
test is one total norm over every trainable tensor) and reads it one step later.
This times a real CRD step (resnet32x4 → resnet8x4 by default, random weights, a
fake CIFAR-100 written to a temporary folder) and the flags alone, and prints both.

    python tools/bench_step_guard.py [--steps 24] [-o key=value ...]   # on the GPU when there is one
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from crd_bench_setup import CRD_RECIPE, crd_setup, synchronize, write_random_teacher  # noqa: E402

from distill.engine.trainer import Trainer  # noqa: E402
from distill.recipe.load import load_recipe  # noqa: E402
from distill.recipe.resolve import resolve_recipe  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24, help="timed training steps (after 2 warm-up steps)")
    parser.add_argument("-o", dest="overrides", action="append", default=[], help="recipe override key=value")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        recipe = load_recipe(CRD_RECIPE, [*crd_setup(root, train_size=64 * (args.steps + 2)), *args.overrides])
        write_random_teacher(root, recipe.teacher.arch)
        trainer = Trainer(resolve_recipe(recipe), root / "run", tensorboard=False, echo=lambda line: None)
        device = trainer.accelerator.device
        trainer.train_loader.set_epoch(1)
        batches = list(trainer.train_loader)
        step_times = []
        for index, batch in enumerate(batches):
            synchronize(device)
            started = time.perf_counter()
            trainer.train_step(*batch)
            synchronize(device)
            if index >= 2:
                step_times.append(time.perf_counter() - started)
        total = torch.ones((), device=device)
        flag_times = []
        for _ in range(200):
            synchronize(device)
            started = time.perf_counter()
            trainer.guard.flags(total, trainer.trained_parameters)
            synchronize(device)
            flag_times.append(time.perf_counter() - started)
    step, flags = statistics.median(step_times), statistics.median(flag_times)
    parameters = sum(p.numel() for p in trainer.trained_parameters)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'})")
    print(f"median training step {step * 1e3:.2f} ms over {len(step_times)} steps (batch {trainer.recipe.data.batch_size})")
    print(
        f"median StepGuard.flags {flags * 1e3:.3f} ms = {100 * flags / step:.2f}% of a step "
        f"({len(trainer.trained_parameters)} tensors, {parameters:,} parameters)"
    )


if __name__ == "__main__":
    main()
