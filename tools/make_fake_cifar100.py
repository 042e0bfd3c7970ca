"""Write a fake CIFAR-100 (or CIFAR-10) in the official on-disk format, for offline smoke runs.

The same as ``distill fake-cifar``, usable from a source checkout without installing::

    python tools/make_fake_cifar100.py ROOT [--train N] [--test N] [--classes 100|10] [--seed S]

Then point a recipe at it with ``data.root=ROOT data.verify=false`` (the fake files cannot
match the official checksums).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["fake-cifar", *sys.argv[1:]]))
