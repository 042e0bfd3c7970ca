"""``distill teachers list|fetch|verify``: the teacher checkpoints of the manifest.

``list`` shows each teacher's status and path, ``fetch`` downloads published
checkpoints, ``verify`` evaluates them and compares with the paper's top-1 (exit 1
when one falls short).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from distill.errors import DataError, DistillError
from distill.files.display import display_path

if TYPE_CHECKING:
    from distill.data.advice import DataSettings
    from distill.recipe.manifest import TeacherManifest

ALL = "all"
EXIT_FAILED = 1


def _add_manifest_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--manifest",
        help="teacher manifest (default: $DISTILL_TEACHER_MANIFEST, else ./teachers/cifar100.yaml, else the package's)",
    )


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "teachers",
        help="list, download and verify the teacher checkpoints",
        description="The teachers of the manifest (teachers/cifar100.yaml): their status, download and verification.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="each teacher's architecture, reference top-1, status and path")
    _add_manifest_option(listing)
    listing.set_defaults(run=run_list)

    fetching = actions.add_parser("fetch", help="download published checkpoints from the manifest's sources")
    fetching.add_argument("name", help="a teacher name, or 'all'")
    fetching.add_argument("--archive", help="extract from this local cifar_teachers.tar instead of downloading")
    fetching.add_argument("--force", action="store_true", help="download again even if the file is there")
    fetching.add_argument("--timeout", type=float, default=30, help="seconds to wait on a source (default 30)")
    _add_manifest_option(fetching)
    fetching.set_defaults(run=run_fetch)

    verifying = actions.add_parser(
        "verify",
        help="evaluate teachers on the test set and compare with the reference top-1 (exit 1 on failure)",
    )
    verifying.add_argument("name", help="a teacher name, or 'all' (every teacher that has a checkpoint)")
    verifying.add_argument("--data-root", required=True, help="the dataset's folder (holding cifar-100-python/)")
    verifying.add_argument("--no-verify-data", action="store_true", help="skip the dataset md5 check (local or fake copies)")
    verifying.add_argument("--tolerance", type=float, default=1.0, help="points under the reference still accepted (default 1.0)")
    verifying.add_argument("--batch-size", type=int, help="test batch size")
    verifying.add_argument("--json", metavar="PATH", help="also write the results here (one object; for 'all', one per teacher by name)")
    _add_manifest_option(verifying)
    verifying.set_defaults(run=run_verify)


def _names(manifest: TeacherManifest, name: str) -> list[str]:
    """``all`` means every teacher; any other name must be one of the manifest's."""
    if name == ALL:
        return manifest.names()
    manifest.get(name)
    return [name]


def format_table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> list[str]:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]


def _where(manifest: TeacherManifest, name: str, state: str) -> str:
    """The checkpoint's path, or for a missing one where it is expected."""
    if state != "missing":
        located = manifest.locate(name)
        return display_path(located) if located is not None else ""
    published = display_path(manifest.published_path(name))
    runs = display_path(manifest.trained_runs_dir(name))
    return f"(expected: {published} or a run under {runs})"


def run_list(args: argparse.Namespace) -> int:
    from distill.recipe.manifest import load_manifest
    from distill.teachers.records import STATUSES, status

    manifest = load_manifest(args.manifest)
    rows = []
    for name, entry in manifest.teachers.items():
        state = status(manifest, name)
        rows.append((name, entry.arch, f"{entry.reference_top1:.2f}", state, _where(manifest, name, state)))
    for line in format_table(rows, ("name", "arch", "ref top-1", "status", "path")):
        print(line)
    counts = {state: sum(row[3] == state for row in rows) for state in STATUSES}
    print(f"{len(rows)} teacher(s) in {display_path(manifest.path)}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    if counts["missing"]:
        print("get them with `distill teachers fetch NAME|all`; check them with `distill teachers verify NAME --data-root DIR`")
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from distill.recipe.manifest import load_manifest
    from distill.teachers.fetch import fetch, fetch_all

    manifest = load_manifest(args.manifest)
    options = {"timeout": args.timeout, "archive": args.archive, "force": args.force}
    if args.name == ALL:
        fetch_all(manifest, **options)
    else:
        fetch(manifest, _names(manifest, args.name)[0], **options)
    return 0


def _verify_data_settings() -> DataSettings:
    """The data settings of ``distill teachers verify`` as data errors should name them: its flags, no download."""
    from distill.data.advice import (
        DataSettings,  # late: distill.data imports torchvision
    )

    return DataSettings(root="--data-root", skip_verify="pass --no-verify-data", download=None, no_download=None)


def run_verify(args: argparse.Namespace) -> int:
    from distill.data.advice import WordedDataError
    from distill.recipe.manifest import load_manifest
    from distill.teachers.verify import verify

    manifest = load_manifest(args.manifest)
    names = _names(manifest, args.name)
    if args.name == ALL:
        missing = [name for name in names if manifest.locate(name) is None]
        names = [name for name in names if name not in missing]
        if not names:
            raise DistillError(
                f"no teacher of {display_path(manifest.path)} has a checkpoint yet; "
                f"get them with `distill teachers fetch all` (or train them), then verify"
            )
        if missing:
            print(f"not verified, no checkpoint: {', '.join(missing)} (`distill teachers list` says where they go)")
    results = []
    for name in names:
        try:
            result = verify(
                manifest,
                name,
                data_root=args.data_root,
                verify_data=not args.no_verify_data,
                tolerance=args.tolerance,
                batch_size=args.batch_size,
            )
        except WordedDataError as error:  # its advice names recipe keys this command does not have
            raise DataError(error.worded(_verify_data_settings())) from None
        print(result.message)
        results.append(result)
    if args.json:
        data = results[0].to_json() if args.name != ALL else {r.name: r.to_json() for r in results}
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    failed = [r.name for r in results if not r.passed]
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return EXIT_FAILED
    return 0
