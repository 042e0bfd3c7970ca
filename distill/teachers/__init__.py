"""Teachers you can trust: the manifest, downloading published checkpoints, and verifying them.

``load_manifest()`` reads ``teachers/cifar100.yaml`` (or ``$DISTILL_TEACHER_MANIFEST``);
``manifest.require_checkpoint(name)`` is the checkpoint a recipe's ``teacher: {name: ...}``
uses; ``fetch`` downloads it; ``verify`` evaluates it against the paper's accuracy.
"""

from distill.teachers.fetch import FetchError, fetch, fetch_all
from distill.teachers.manifest import (
    MANIFEST_ENV,
    STATUSES,
    ManifestError,
    Source,
    TeacherEntry,
    TeacherManifest,
    default_manifest_path,
    load_manifest,
    read_verified,
    record_sha256,
    sha256_file,
    status,
)
from distill.teachers.verify import VerifyResult, verify

__all__ = [
    "MANIFEST_ENV",
    "STATUSES",
    "FetchError",
    "ManifestError",
    "Source",
    "TeacherEntry",
    "TeacherManifest",
    "VerifyResult",
    "default_manifest_path",
    "fetch",
    "fetch_all",
    "load_manifest",
    "read_verified",
    "record_sha256",
    "sha256_file",
    "status",
    "verify",
]
