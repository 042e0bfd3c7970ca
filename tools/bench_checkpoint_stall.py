"""How long a checkpoint stalls training, with ``async_checkpoint`` off and on.

Builds a CRD run (resnet32x4 → resnet8x4 by default, random weights) on a fake
CIFAR-100 of ``--train-size`` images (50000: CIFAR's size, so the two memory banks are
50000 × 128 float32, as in a real CRD checkpoint), takes two training steps, then
times ``Trainer.save_checkpoint`` ``--repeats`` times per mode: the stall is the time the
call takes (the training thread is blocked that long). With the option on it also times
the background write (``wait_for_checkpoint`` right after the call, and after
``--steps`` training steps) and those training steps, taken while a write is in
flight, against steps with none.

    python tools/bench_checkpoint_stall.py [--train-size 50000] [--repeats 5] [-o key=value ...]
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


def timed(device: torch.device, work) -> float:
    """Seconds ``work()`` takes, the device's queue drained before and after."""
    synchronize(device)
    started = time.perf_counter()
    work()
    synchronize(device)
    return time.perf_counter() - started


def measure(root: Path, overrides: list[str], background: bool, repeats: int, steps: int) -> dict[str, list[float]]:
    """The stall of each ``save_checkpoint`` call; with ``background``, the write's remaining time and the steps beside it."""
    recipe = load_recipe(CRD_RECIPE, [*overrides, f"async_checkpoint={str(background).lower()}"])
    trainer = Trainer(resolve_recipe(recipe), root / f"run-{background}", tensorboard=False, echo=lambda line: None)
    device = trainer.accelerator.device
    trainer.train_loader.set_epoch(1)
    batches = iter(trainer.train_loader)
    found: dict[str, list[float]] = {"stall": [], "write": [], "write_alone": [], "step_alone": [], "step_beside_write": []}
    for _ in range(2):
        trainer.train_step(*next(batches))
    try:
        for _ in range(repeats):
            found["stall"].append(timed(device, trainer.save_checkpoint))
            if background:
                found["step_beside_write"] += [timed(device, lambda: trainer.train_step(*next(batches))) for _ in range(steps)]
                found["write"].append(timed(device, trainer.wait_for_checkpoint))
                found["step_alone"] += [timed(device, lambda: trainer.train_step(*next(batches))) for _ in range(steps)]
                trainer.save_checkpoint()
                found["write_alone"].append(timed(device, trainer.wait_for_checkpoint))
    finally:
        trainer._close()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=50000, help="fake training images (the memory banks' rows)")
    parser.add_argument("--repeats", type=int, default=5, help="timed checkpoints per mode")
    parser.add_argument("--steps", type=int, default=2, help="training steps timed beside each background write, and alone")
    parser.add_argument("-o", dest="overrides", action="append", default=[], help="recipe override key=value")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        overrides = [*crd_setup(root, train_size=args.train_size), *args.overrides]
        write_random_teacher(root, load_recipe(CRD_RECIPE, overrides).teacher.arch)
        results = {mode: measure(root, overrides, mode, args.repeats, args.steps) for mode in (False, True)}
        size = (root / "run-True" / "checkpoints" / "last.pt").stat().st_size
    print(f"torch {torch.__version__}; checkpoint {size / 2**20:.1f} MiB; median of {args.repeats} checkpoints per mode")
    for mode, found in results.items():
        line = f"async_checkpoint={str(mode).lower():5}  stall {statistics.median(found['stall']) * 1e3:8.1f} ms"
        if mode:
            line += (
                f"  (the background write: {statistics.median(found['write_alone']) * 1e3:.1f} ms waited for at once, "
                f"{statistics.median(found['write']) * 1e3:.1f} ms left after the steps beside it; "
                f"step {statistics.median(found['step_beside_write']) * 1e3:.1f} ms beside a write, "
                f"{statistics.median(found['step_alone']) * 1e3:.1f} ms alone)"
            )
        print(line)


if __name__ == "__main__":
    main()
