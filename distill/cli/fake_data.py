"""``distill fake-cifar ROOT``: write a small fake CIFAR-100/10 in the real on-disk format.

A folder that already holds CIFAR files is left alone unless ``--force`` is given, and
files that match the official release are never overwritten, not even with ``--force``
(pointed at ``./data`` by mistake, it would otherwise replace a real CIFAR-100).
"""

from __future__ import annotations

import argparse

from distill.errors import DistillError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fake-cifar",
        help="write a fake CIFAR-100 (or -10) in torchvision's on-disk format, for tests and dry runs",
    )
    parser.add_argument("root", help="data root; the files go to ROOT/cifar-100-python (or cifar-10-batches-py)")
    parser.add_argument("--train", type=int, default=500, help="training images (default 500)")
    parser.add_argument("--test", type=int, default=100, help="test images (default 100)")
    parser.add_argument("--classes", type=int, choices=(10, 100), default=100, help="100 (CIFAR-100) or 10")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--force",
        action="store_true",
        help="overwrite CIFAR files already in the folder (never files that match the official release)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from distill.data import write_fake_cifar
    from distill.data.fake_cifar import ExistingDatasetError

    try:
        root = write_fake_cifar(
            args.root,
            num_classes=args.classes,
            train_size=args.train,
            test_size=args.test,
            seed=args.seed,
            overwrite=args.force,
        )
    except ValueError as error:
        raise DistillError(str(error)) from None
    except ExistingDatasetError as error:
        raise DistillError(error.describe("--force")) from None
    folder = root / ("cifar-100-python" if args.classes == 100 else "cifar-10-batches-py")
    print(f"wrote a FAKE CIFAR-{args.classes} ({args.train} train / {args.test} test images, seed {args.seed}) to {folder}:")
    for path in sorted(folder.iterdir()):
        print(f"  {path.name:<14} {path.stat().st_size:>12,} bytes")
    print(f"its md5 differs from the real files: use it with data.root={root} data.verify=false")
    return 0
