"""``distill eval RUN_DIR|CHECKPOINT|TEACHER``: top-1/top-5 of a trained network on the test set.

A run's checkpoint is evaluated with the run's own recipe
(see :func:`distill.engine.eval_checkpoint.evaluate_checkpoint`).

A teacher name (``distill eval resnet32x4``) is looked up in the teacher manifest, which
gives the checkpoint, its architecture and the dataset.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.errors import CheckpointError
from distill.registry import did_you_mean

JSON_TO_STDOUT = "-"


@dataclass(frozen=True)
class EvalTarget:
    """What ``distill eval`` evaluates: a path, plus what a teacher name adds (arch, dataset, reference)."""

    path: Path
    teacher: str | None = None
    arch: str | None = None
    dataset: str | None = None
    reference_top1: float | None = None


def resolve_target(target: str, manifest_path: str | None = None) -> EvalTarget:
    """An existing path as is; otherwise a teacher of the manifest, resolved to its checkpoint.

    Raises:
        CheckpointError: ``target`` is neither an existing path nor a teacher name (the
            message lists both possibilities), or the teacher has no checkpoint yet.
    """
    path = Path(target)
    if path.exists():
        return EvalTarget(path)
    from distill.recipe.manifest import ManifestError, load_manifest

    neither = f"{target!r} is neither an existing run directory or checkpoint file (no such path)"
    try:
        manifest = load_manifest(manifest_path)
    except ManifestError as error:
        raise CheckpointError(f"{neither}, nor a teacher name: {error}") from None
    if target not in manifest.teachers:
        names = manifest.names()
        raise CheckpointError(
            f"{neither}, nor a teacher of {manifest.path}.{did_you_mean(target, names)} "
            f"Teachers: {', '.join(names)}"
        )
    entry = manifest.get(target)
    return EvalTarget(
        path=manifest.require_checkpoint(target),
        teacher=target,
        arch=entry.arch,
        dataset=manifest.dataset,
        reference_top1=entry.reference_top1,
    )


def format_summary(result: dict[str, Any]) -> list[str]:
    """The text report: what was evaluated, its size, and its accuracy (and the reference, for a teacher)."""
    from distill.engine.eval_checkpoint import describe_arch  # the module needs torch: only once there is a result

    epoch = f", epoch {result['epoch']}" if result.get("epoch") is not None else ""
    teacher = f"teacher {result['teacher']}: " if result.get("teacher") else ""
    arch = describe_arch(result["arch"], result.get("options") or {})
    lines = [
        f"{teacher}{result['checkpoint']} ({arch}{epoch}, {result['parameters']:,} parameters)",
        f"top-1 {result['top1']:.2f}  top-5 {result['top5']:.2f}  on {result['test_size']} test images",
    ]
    if result.get("reference_top1") is not None:
        difference = result["top1"] - result["reference_top1"]
        lines.append(f"reference top-1 {result['reference_top1']:.2f} ({difference:+.2f})")
    return lines


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="evaluate a run directory, checkpoint or teacher on the test set")
    parser.add_argument(
        "path",
        help="a run directory (uses checkpoints/last.pt), a checkpoint file, or a teacher name of the manifest",
    )
    parser.add_argument("--which", choices=("last", "best"), default="last", help="which checkpoint of a run directory")
    parser.add_argument("--arch", help="architecture of a bare or reference checkpoint (e.g. resnet32x4)")
    parser.add_argument("--dataset", help="dataset name (default: the run's, else cifar100)")
    parser.add_argument("--data-root", help="data root (default: the run's, else ./data)")
    parser.add_argument("--no-verify", action="store_true", help="skip the dataset md5 check (local or fake copies)")
    parser.add_argument("--batch-size", type=int, help="test batch size")
    parser.add_argument(
        "--json",
        nargs="?",
        const=JSON_TO_STDOUT,
        metavar="PATH",
        help="alone: print one JSON object instead of text; with PATH: also write the JSON object there",
    )
    parser.add_argument("--manifest", help="teacher manifest for a teacher name (default: teachers/cifar100.yaml)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from distill.engine.eval_checkpoint import evaluate_checkpoint  # torch and Accelerate: only when evaluating

    target = resolve_target(args.path, args.manifest)
    result = evaluate_checkpoint(
        target.path,
        which=args.which,
        arch=args.arch or target.arch,
        dataset=args.dataset or target.dataset,
        data_root=args.data_root,
        verify=False if args.no_verify else None,
        batch_size=args.batch_size,
    )
    if target.teacher is not None:
        result = {**result, "teacher": target.teacher, "reference_top1": target.reference_top1}
    if args.json == JSON_TO_STDOUT:
        print(json.dumps(result))
        return 0
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for line in format_summary(result):
        print(line)
    return 0
