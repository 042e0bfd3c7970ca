"""Write a fake CIFAR-100 (or CIFAR-10) in the official on-disk format, for offline smoke runs.

Usage::

    python tools/make_fake_cifar100.py ROOT [--train N] [--test N] [--classes 100|10] [--seed S]

Then point a recipe at it with ``data.root: ROOT`` and ``data.verify: false`` (the
fake files cannot match the official checksums).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill.data.fake_cifar import write_fake_cifar  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "root", type=Path, help="directory to write cifar-100-python/ (or cifar-10-batches-py/) into"
    )
    parser.add_argument("--train", type=int, default=500, help="training images (default 500)")
    parser.add_argument("--test", type=int, default=100, help="test images (default 100)")
    parser.add_argument(
        "--classes", type=int, choices=(100, 10), default=100, help="100 for CIFAR-100, 10 for CIFAR-10"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        root = write_fake_cifar(
            args.root, num_classes=args.classes, train_size=args.train, test_size=args.test, seed=args.seed
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    folder = root / ("cifar-100-python" if args.classes == 100 else "cifar-10-batches-py")
    name = "CIFAR-100" if args.classes == 100 else "CIFAR-10"
    print(f"wrote a fake {name} ({args.train} train, {args.test} test images, seed {args.seed}) to {folder}:")
    for path in sorted(folder.iterdir()):
        print(f"  {path.name:<14} {path.stat().st_size:>12,} bytes")
    print(f"use it with data.root: {root} and data.verify: false")
    return 0


if __name__ == "__main__":
    sys.exit(main())
