"""What a local checkout learns about its teachers: verified sha256s, the verification record, each teacher's status.

``record_sha256`` writes a verified digest into the manifest file itself (only that
value changes, comments and layout survive); ``verified.json`` beside the manifest
keeps each successful ``distill teachers verify``; ``status`` combines both with the
checkpoint the manifest locates.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from distill.files.atomic import atomic_write_text
from distill.files.hashing import sha256_file
from distill.recipe.manifest import (
    SHA256_PATTERN,
    ManifestError,
    TeacherManifest,
    parse_manifest_yaml,
    read_manifest_text,
)

STATUSES = ("missing", "present", "verified", "mismatch")


# --- checksums --------------------------------------------------------------------------


def _sha256_value_span(text: str, name: str, path: Path) -> tuple[int, int, str]:
    """Start and end offsets in ``text`` of the ``teachers.<name>.sha256`` value, and the value.

    An empty plain value (``sha256:`` with nothing after it) has no extent of its own;
    its span is then the empty one right after the key's colon. ``null``/``~`` count as empty.
    """
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    found = _mapping_item(_mapping_item(_mapping_item(root, "teachers"), name), "sha256", pair=True)
    if found is None:
        raise ManifestError(f"{path}: cannot find teachers.{name}.sha256 in the file; add it by hand")
    key, value = found
    if not isinstance(value, yaml.ScalarNode):
        raise ManifestError(f"{path}: teachers.{name}.sha256 is not a plain value; set it by hand")
    if value.start_mark.index == value.end_mark.index:
        colon = text.index(":", key.end_mark.index) + 1
        return colon, colon, ""
    current = "" if value.tag == "tag:yaml.org,2002:null" else value.value
    return value.start_mark.index, value.end_mark.index, current


def _mapping_item(node: Any, key: str, *, pair: bool = False) -> Any:
    """The value node under ``key`` of a mapping node (or the (key, value) pair); None when absent."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
                return (key_node, value_node) if pair else value_node
    return None


def record_sha256(manifest: TeacherManifest, name: str, digest: str) -> bool:
    """Write ``digest`` as ``teachers.<name>.sha256`` in the manifest file, changing nothing else.

    Only the value of that one key is replaced, so comments and layout survive; the
    file is rewritten atomically. The in-memory ``manifest`` is updated too.

    Returns:
        True when the file was changed, False when it already held ``digest``.

    Raises:
        ManifestError: the manifest already holds a different digest for ``name``
            (which is never overwritten), or the value cannot be found in the file.
    """
    entry = manifest.get(name)
    digest = digest.lower()
    if not SHA256_PATTERN.fullmatch(digest):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    text = read_manifest_text(manifest.path)
    parse_manifest_yaml(text, manifest.path)
    start, end, current = _sha256_value_span(text, name, manifest.path)
    if current.lower() == digest:
        manifest.teachers[name] = replace(entry, sha256=digest)
        return False
    if current:
        raise ManifestError(
            f"{manifest.path}: teachers.{name}.sha256 is already {current}; refusing to replace it with {digest}. "
            f"If the published checkpoint really changed, edit the manifest by hand"
        )
    separator = " " if start == end else ""
    atomic_write_text(manifest.path, f'{text[:start]}{separator}"{digest}"{text[end:]}')
    manifest.teachers[name] = replace(entry, sha256=digest)
    return True


# --- the local verification record and status -------------------------------------------


def read_verified(manifest: TeacherManifest) -> dict[str, dict[str, Any]]:
    """The local record of verifications (``root/verified.json``); empty when absent or unreadable."""
    path = manifest.verified_record_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


@dataclass(frozen=True)
class VerificationRecord:
    """One successful verification, as kept in ``verified.json``."""

    path: str
    sha256: str
    top1: float
    top5: float
    reference_top1: float
    verified_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))


def write_verified(manifest: TeacherManifest, name: str, record: VerificationRecord) -> Path:
    """Add or replace ``name``'s entry in the local verification record; returns the record's path."""
    manifest.get(name)
    records = read_verified(manifest)
    records[name] = {
        "path": record.path,
        "sha256": record.sha256,
        "top1": record.top1,
        "top5": record.top5,
        "reference_top1": record.reference_top1,
        "verified_at": record.verified_at,
    }
    path = manifest.verified_record_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(records, indent=2) + "\n")
    return path


def record_path_string(manifest: TeacherManifest, path: Path) -> str:
    """``path`` relative to the manifest's folder when inside it (so the record survives moving the checkout)."""
    try:
        return Path(os.path.abspath(path)).relative_to(Path(os.path.abspath(manifest.root))).as_posix()
    except ValueError:
        return str(Path(os.path.abspath(path)))


def status(manifest: TeacherManifest, name: str) -> str:
    """``missing``, ``present``, ``verified`` or ``mismatch`` for the checkpoint :meth:`locate` finds.

    verified: its sha256 is the manifest's, or the one recorded by a successful local
    ``verify``; mismatch: it is the published file, the manifest has a sha256 and the
    file's differs. The file is only hashed when there is a digest to compare with.
    """
    entry = manifest.get(name)
    located = manifest.locate(name)
    if located is None:
        return "missing"
    recorded = read_verified(manifest).get(name, {}).get("sha256", "")
    if not entry.sha256 and not recorded:
        return "present"
    digest = sha256_file(located)
    if digest in (entry.sha256, str(recorded).lower()):
        return "verified"
    if entry.sha256 and manifest.is_published(name, located):
        return "mismatch"
    return "present"
