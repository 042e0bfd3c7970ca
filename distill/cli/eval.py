"""``distill eval RUN_DIR|CHECKPOINT``: top-1/top-5 of a trained network on the test set."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from distill.errors import CheckpointError, RecipeError
from distill.recipe.schema import DataSpec
from distill.recipe.validate import ValidationIssue, build_dataclass


def resolve_checkpoint(path: str | Path, which: str) -> Path:
    """A run directory means its ``checkpoints/<which>.pt``; a file is taken as is."""
    path = Path(path)
    if path.is_dir():
        candidate = path / "checkpoints" / f"{which}.pt"
        if not candidate.is_file():
            raise CheckpointError(f"{path} has no checkpoints/{which}.pt: is it a distill run directory, and did an epoch finish?")
        return candidate
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: give a run directory or a checkpoint file")
    return path


def evaluate_checkpoint(
    path: str | Path,
    *,
    which: str = "last",
    arch: str | None = None,
    dataset: str | None = None,
    data_root: str | None = None,
    verify: bool | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Evaluate a distill checkpoint (or, with ``arch``, a bare/reference one) on its test set."""
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from distill.data import build_dataset
    from distill.engine.checkpoint import CHECKPOINT_FORMAT
    from distill.engine.evaluate import evaluate
    from distill.engine.trainer import has_accelerator_device
    from distill.models import create_model
    from distill.models.checkpoint import extract_state_dict, load_state_dict_strict, read_checkpoint

    checkpoint_path = resolve_checkpoint(path, which)
    checkpoint = read_checkpoint(checkpoint_path)
    is_run_checkpoint = isinstance(checkpoint, dict) and checkpoint.get("format") == CHECKPOINT_FORMAT
    data = DataSpec()
    if is_run_checkpoint:
        try:
            data = build_dataclass(DataSpec, checkpoint["recipe"]["data"], ("data",))
        except ValidationIssue as issue:
            raise RecipeError(f"{checkpoint_path}: stored recipe is invalid at {'.'.join(issue.path)}: {issue.message}") from None
        arch = arch or checkpoint["arch"]
    elif arch is None:
        raise CheckpointError(
            f"{checkpoint_path} is not a distill run checkpoint, so its architecture is unknown; "
            f"name it with --arch (e.g. --arch resnet32x4)"
        )
    test_set = build_dataset(
        dataset or data.dataset,
        data_root or data.root,
        train=False,
        download=data.download,
        verify=data.verify if verify is None else verify,
        **data.options,
    )
    model = create_model(arch, num_classes=test_set.num_classes)
    source = f"checkpoint {checkpoint_path}"
    load_state_dict_strict(model, extract_state_dict(checkpoint, source), source)
    accelerator = Accelerator(cpu=not has_accelerator_device())
    loader = DataLoader(test_set, batch_size=batch_size or data.test_batch_size, shuffle=False)
    model, loader = accelerator.prepare(model, loader)
    accuracy = evaluate(model, loader, accelerator)
    return {
        "checkpoint": str(checkpoint_path),
        "arch": arch,
        "epoch": checkpoint.get("epoch") if isinstance(checkpoint, dict) else None,
        "top1": accuracy.top1,
        "top5": accuracy.top5,
        "test_size": accuracy.count,
        "parameters": sum(p.numel() for p in accelerator.unwrap_model(model).parameters()),
    }


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a run directory or checkpoint on the test set")
    parser.add_argument("path", help="a run directory (uses checkpoints/last.pt) or a checkpoint file")
    parser.add_argument("--which", choices=("last", "best"), default="last", help="which checkpoint of a run directory")
    parser.add_argument("--arch", help="architecture of a bare or reference checkpoint (e.g. resnet32x4)")
    parser.add_argument("--dataset", help="dataset name (default: the run's, else cifar100)")
    parser.add_argument("--data-root", help="data root (default: the run's, else ./data)")
    parser.add_argument("--no-verify", action="store_true", help="skip the dataset md5 check (local or fake copies)")
    parser.add_argument("--batch-size", type=int, help="test batch size")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    result = evaluate_checkpoint(
        args.path,
        which=args.which,
        arch=args.arch,
        dataset=args.dataset,
        data_root=args.data_root,
        verify=False if args.no_verify else None,
        batch_size=args.batch_size,
    )
    if args.json:
        print(json.dumps(result))
    else:
        epoch = f", epoch {result['epoch']}" if result["epoch"] is not None else ""
        print(f"{result['checkpoint']} ({result['arch']}{epoch}, {result['parameters']:,} parameters)")
        print(f"top-1 {result['top1']:.2f}  top-5 {result['top5']:.2f}  on {result['test_size']} test images")
    return 0
