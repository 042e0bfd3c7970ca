"""Check a teacher before trusting it: evaluate it and compare with the accuracy its paper reports.

A teacher passes unless its test top-1 falls more than ``tolerance`` points below the
manifest's ``reference_top1`` (a teacher that beats the paper is fine). A pass is
recorded locally in ``root/verified.json``; the first pass of the published file also
records its sha256 in the manifest, so that others can check their copies against it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from distill.engine.eval_checkpoint import evaluate_checkpoint
from distill.files.display import display_path
from distill.files.hashing import sha256_file
from distill.recipe.manifest import TeacherManifest
from distill.teachers.records import VerificationRecord, record_path_string, record_sha256, write_verified


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of :func:`verify`: both accuracies, what was evaluated, and what was recorded."""

    name: str
    arch: str
    path: Path
    sha256: str
    published: bool
    top1: float
    top5: float
    reference_top1: float
    tolerance: float
    test_size: int
    parameters: int
    passed: bool
    message: str
    recorded_sha256: bool = False

    @property
    def difference(self) -> float:
        """Measured minus reference top-1, in points (negative: below the paper)."""
        return self.top1 - self.reference_top1

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        data["difference"] = self.difference
        return data


def _judge(top1: float, reference: float, tolerance: float) -> bool:
    """Pass unless top-1 is more than ``tolerance`` points under the reference."""
    return not top1 < reference - tolerance


def verify(
    manifest: TeacherManifest,
    name: str,
    *,
    data_root: str | Path | None,
    dataset: str | None = None,
    verify_data: bool = True,
    tolerance: float = 1.0,
    batch_size: int | None = None,
) -> VerifyResult:
    """Evaluate teacher ``name``'s checkpoint on the test set and compare with ``reference_top1``.

    The checkpoint is the one :meth:`TeacherManifest.require_checkpoint` finds, loaded
    strictly into the manifest's ``arch``. The published file fails outright when its
    sha256 differs from the manifest's. A failure is returned, not raised.

    Args:
        data_root: the dataset's folder.
        dataset: dataset name (default: the manifest's).
        verify_data: check the dataset files' md5 (off for local or fake copies).
        tolerance: points below the reference still accepted.
        batch_size: test batch size.

    Raises:
        DistillError: no checkpoint, or one that does not load into ``arch``, or no data.
    """
    entry = manifest.get(name)
    path = manifest.require_checkpoint(name)
    published = manifest.is_published(name, path)
    digest = sha256_file(path)
    measured = evaluate_checkpoint(
        path,
        arch=entry.arch,
        dataset=dataset or manifest.dataset,
        data_root=str(data_root) if data_root is not None else None,
        verify=verify_data,
        batch_size=batch_size,
    )
    top1, top5 = float(measured["top1"]), float(measured["top5"])
    mismatch = published and bool(entry.sha256) and digest != entry.sha256
    passed = _judge(top1, entry.reference_top1, tolerance) and not mismatch
    recorded = False
    where = display_path(path)
    summary = (
        f"{name}: top-1 {top1:.2f} vs reference {entry.reference_top1:.2f} "
        f"({top1 - entry.reference_top1:+.2f}, tolerance {tolerance:g}) on {measured['test_size']} test images"
    )
    if mismatch:
        message = (
            f"{summary}; FAILED: {where} has sha256 {digest}, but the manifest says {entry.sha256}. "
            f"It is not the published file: fetch it again (`distill teachers fetch {name} --force`)"
        )
    elif not passed:
        message = (
            f"{summary}; FAILED: more than {tolerance:g} points under the reference. "
            f"Is {where} the right checkpoint, and the data the real test set?"
        )
    else:
        write_verified(
            manifest,
            name,
            VerificationRecord(
                path=record_path_string(manifest, path),
                sha256=digest,
                top1=top1,
                top5=top5,
                reference_top1=entry.reference_top1,
            ),
        )
        message = f"{summary}; passed ({where})"
        if published and not entry.sha256:
            recorded = record_sha256(manifest, name, digest)
        if recorded:
            message += (
                f"\nrecorded sha256 {digest} for {name} in {display_path(manifest.path)}; "
                f"commit it so others can check their copies"
            )
    return VerifyResult(
        name=name,
        arch=entry.arch,
        path=path,
        sha256=digest,
        published=published,
        top1=top1,
        top5=top5,
        reference_top1=entry.reference_top1,
        tolerance=tolerance,
        test_size=int(measured["test_size"]),
        parameters=int(measured["parameters"]),
        passed=passed,
        message=message,
        recorded_sha256=recorded,
    )
