"""The teacher manifest: which teachers exist, what they should score, and where their weights are.

A manifest (``teachers/cifar100.yaml``) names each teacher's architecture, the top-1
accuracy its paper reports, the published checkpoint file and its sha256, the recipe
that trains it and the folder where such trained runs land. ``file`` and
``trained_runs`` are relative to the manifest's own folder (its ``root``); ``recipe``
is relative to the folder above (the repository root, where ``distill train`` runs
and where the teacher recipes' ``output_dir`` is anchored).

A teacher's checkpoint is looked for, in order, at the published ``file`` and then in
the newest finished run under ``trained_runs``. ``status`` says whether it is missing,
present, verified (its sha256 is the manifest's, or the one a local ``verify`` recorded)
or a mismatch (the published file differs from the manifest's sha256).

Reading a manifest checks each teacher's ``arch`` against the model registry. Records
of local verification and the sha256 writer are in :mod:`distill.teachers.records`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import distill
from distill.errors import DistillError, RecipeError, UnknownNameError
from distill.files.display import display_path
from distill.files.rundir import LAST_CHECKPOINT, SUMMARY_FILE
from distill.models import is_model, list_models
from distill.recipe.compose import compose_file
from distill.recipe.schema import ScheduleSpec
from distill.registry import did_you_mean
from distill.schema import ValidationIssue, build_dataclass

MANIFEST_ENV = "DISTILL_TEACHER_MANIFEST"
MANIFEST_FILE = "cifar100.yaml"
VERIFIED_RECORD = "verified.json"
DOWNLOADS_DIR = ".downloads"
SUPPORTED_VERSION = 1
SOURCE_KINDS = ("file", "tar")

SHA256_PATTERN = re.compile(r"[0-9a-fA-F]{64}")


class ManifestError(DistillError):
    """The teacher manifest is missing or malformed, or a teacher's checkpoint cannot be found."""


@dataclass(frozen=True)
class Source:
    """Where published checkpoints can be downloaded.

    ``kind: file``: ``url`` with ``{file}`` replaced by a teacher's ``file`` is that
    checkpoint. ``kind: tar``: ``url`` is one archive of all teachers; ``member`` with
    ``{file}`` replaced is the checkpoint's path inside it.
    """

    name: str
    kind: str
    url: str
    member: str = ""
    note: str = ""

    def url_for(self, file: str) -> str:
        return self.url.format(file=file)

    def member_for(self, file: str) -> str:
        return self.member.format(file=file)


@dataclass(frozen=True)
class TeacherEntry:
    """One teacher as the manifest states it (paths as written: see :class:`TeacherManifest`)."""

    name: str
    arch: str
    reference_top1: float
    file: str
    sha256: str
    recipe: str
    trained_runs: str


@dataclass
class TeacherManifest:
    """A loaded, validated manifest.

    ``root`` is the manifest's folder: ``file`` and ``trained_runs`` are relative to it,
    ``recipe`` to its parent. The methods below return the resolved paths.
    """

    path: Path
    root: Path
    dataset: str
    sources: list[Source]
    teachers: dict[str, TeacherEntry]
    version: int = SUPPORTED_VERSION

    def names(self) -> list[str]:
        return list(self.teachers)

    def get(self, name: str) -> TeacherEntry:
        """The entry called ``name``; an unknown name fails with the closest names and the full list."""
        try:
            return self.teachers[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown teacher {name!r} in {self.path}.{did_you_mean(name, self.names())} "
                f"Teachers: {', '.join(self.names())}"
            ) from None

    def published_path(self, name: str) -> Path:
        """Where the published checkpoint of ``name`` goes: ``root/file``."""
        return self.root / self.get(name).file

    def trained_runs_dir(self, name: str) -> Path:
        """The folder under which runs that train ``name`` land."""
        return self.root / self.get(name).trained_runs

    def recipe_path(self, name: str) -> Path | None:
        """The recipe that trains ``name`` (relative to the repository root, ``root``'s parent), or None."""
        recipe = self.get(name).recipe
        return self.root.parent / recipe if recipe else None

    def recipe_epochs(self, name: str) -> int | None:
        """The number of epochs ``name``'s recipe trains for (None when the recipe is absent or unreadable).

        Only the recipe's ``schedule`` section is read (after its ``base:`` files are merged):
        the manifest is read while recipes are validated, so it must not validate one itself.
        """
        path = self.recipe_path(name)
        if path is None or not path.is_file():
            return None
        try:
            schedule = compose_file(path).data.get("schedule") or {}
            return build_dataclass(ScheduleSpec, schedule, ("schedule",)).epochs
        except (RecipeError, ValidationIssue):
            return None

    def latest_trained_run(self, name: str) -> Path | None:
        """The newest finished run (by its summary.json's mtime) under ``trained_runs`` that trained the full schedule.

        A run shorter than the teacher recipe's epochs (a trial with ``schedule.epochs=1``)
        is not a teacher; with no readable recipe, any finished run counts.
        """
        return newest_finished_run(self.trained_runs_dir(name), epochs=self.recipe_epochs(name))

    def locate(self, name: str) -> Path | None:
        """The checkpoint to use for ``name``: the published file, else the newest trained run's last.pt."""
        published = self.published_path(name)
        if published.is_file():
            return published
        run = self.latest_trained_run(name)
        return run / LAST_CHECKPOINT if run is not None else None

    def is_published(self, name: str, path: str | Path) -> bool:
        """Whether ``path`` is the published ``file`` of ``name`` (not a trained run)."""
        return _same_path(Path(path), self.published_path(name))

    def require_checkpoint(self, name: str) -> Path:
        """Like :meth:`locate`, but a missing checkpoint is an error that says how to get one."""
        found = self.locate(name)
        if found is not None:
            return found
        raise ManifestError(missing_checkpoint_message(self, name))

    def verified_record_path(self) -> Path:
        """The local, untracked record of successful verifications."""
        return self.root / VERIFIED_RECORD

    def downloads_dir(self) -> Path:
        """Where downloaded archives are cached."""
        return self.root / DOWNLOADS_DIR


def _same_path(a: Path, b: Path) -> bool:
    return os.path.abspath(a) == os.path.abspath(b) or (a.exists() and b.exists() and a.samefile(b))


def missing_checkpoint_message(manifest: TeacherManifest, name: str) -> str:
    """Which teacher has no checkpoint, where it was looked for, and the commands that provide one."""
    published = display_path(manifest.published_path(name))
    runs = display_path(manifest.trained_runs_dir(name))
    recipe = manifest.recipe_path(name)
    lines = [
        f"no checkpoint for teacher {name!r} (manifest {display_path(manifest.path)}). Looked for:",
        f"  1. the published checkpoint {published}: not there;",
        f"  2. a finished run ({SUMMARY_FILE} and {LAST_CHECKPOINT.as_posix()}) under {runs}: none"
        + _short_runs_note(manifest, name) + ".",
        "Get one by either:",
        f"  - downloading it: `distill teachers fetch {name}` (or download {manifest.get(name).file} "
        f"from one of the sources in the manifest and put it at {published});",
    ]
    if recipe is not None:
        in_repository = _same_path(Path.cwd(), manifest.root.parent)
        where = "" if in_repository else f" output_dir={runs}"
        lines.append(f"  - training it: `distill train {display_path(recipe)}{where}` (its runs land in {runs}).")
    else:
        lines.append(f"  - training it and putting the run under {runs}.")
    return "\n".join(lines)


def finished_runs(folder: Path) -> list[Path]:
    """The run folders at or below ``folder`` holding summary.json and checkpoints/last.pt."""
    if not folder.is_dir():
        return []
    return [summary.parent for summary in folder.rglob(SUMMARY_FILE) if (summary.parent / LAST_CHECKPOINT).is_file()]


def trained_epochs(run: Path) -> int | None:
    """The number of epochs a finished run trained, from its summary.json (None if unreadable)."""
    try:
        epochs = json.loads((run / SUMMARY_FILE).read_text(encoding="utf-8")).get("epochs")
    except (OSError, ValueError, AttributeError):
        return None
    return epochs if isinstance(epochs, int) else None


def _short_runs_note(manifest: TeacherManifest, name: str) -> str:
    """A note on finished runs left out for training fewer epochs than the recipe (trial runs)."""
    epochs = manifest.recipe_epochs(name)
    if epochs is None:
        return ""
    short = [run for run in finished_runs(manifest.trained_runs_dir(name)) if trained_epochs(run) != epochs]
    if not short:
        return ""
    return (
        f" of the recipe's {epochs} epochs ({len(short)} shorter run(s) left out, e.g. {display_path(short[0])}: "
        f"a trial run is not a teacher; to use one anyway set teacher.checkpoint={display_path(short[0] / LAST_CHECKPOINT)})"
    )


def newest_finished_run(folder: Path, epochs: int | None = None) -> Path | None:
    """The newest finished run at or below ``folder`` (by summary.json mtime); with ``epochs``, only runs that long."""
    runs = [run for run in finished_runs(folder) if epochs is None or trained_epochs(run) == epochs]
    if not runs:
        return None
    return max(runs, key=lambda run: ((run / SUMMARY_FILE).stat().st_mtime_ns, str(run)))


def default_manifest_path() -> Path:
    """``$DISTILL_TEACHER_MANIFEST``, else ``./teachers/cifar100.yaml`` if present, else the source checkout's."""
    from_env = os.environ.get(MANIFEST_ENV)
    if from_env:
        return Path(from_env).expanduser()
    local = Path("teachers") / MANIFEST_FILE
    if local.is_file():
        return local
    return Path(distill.__file__).resolve().parent.parent / "teachers" / MANIFEST_FILE


# --- loading and validation -------------------------------------------------------------


class _Invalid(Exception):
    """A validation failure at a key path; turned into a ManifestError naming the file."""

    def __init__(self, path: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


_TOP_KEYS = {"version": True, "dataset": True, "sources": True, "teachers": True}
_SOURCE_KEYS = {"name": True, "kind": True, "url": True, "member": False, "note": False}
_TEACHER_KEYS = {
    "arch": True,
    "reference_top1": True,
    "file": True,
    "sha256": True,
    "recipe": False,
    "trained_runs": True,
}


def _check_keys(data: Any, path: tuple[str, ...], keys: dict[str, bool], what: str) -> dict[str, Any]:
    """``data`` is a mapping holding every required key of ``keys`` and no other key."""
    if not isinstance(data, dict):
        raise _Invalid(path, f"expected a mapping ({what}), got {_describe(data)}")
    for key in data:
        if key not in keys:
            raise _Invalid(
                (*path, str(key)),
                f"unknown key.{did_you_mean(str(key), list(keys))} Allowed keys: {', '.join(keys)}",
            )
    for key, required in keys.items():
        if required and key not in data:
            raise _Invalid((*path, key), f"missing required key ({what} needs {', '.join(k for k, r in keys.items() if r)})")
    return data


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if value is not None else "nothing (null)"


def _string(data: dict[str, Any], key: str, path: tuple[str, ...], *, allow_empty: bool = False) -> str:
    value = data.get(key, "")
    if not isinstance(value, str):
        raise _Invalid((*path, key), f"expected a string, got {_describe(value)}")
    if not value and not allow_empty:
        raise _Invalid((*path, key), "expected a non-empty string")
    return value


def _relative_file(value: str, path: tuple[str, ...]) -> str:
    """A teacher's ``file`` must stay inside the manifest's folder: relative, no ``..``."""
    pure = Path(value)
    if pure.is_absolute() or ".." in pure.parts:
        raise _Invalid(path, f"expected a path relative to the manifest's folder without '..', got {value!r}")
    return value


def _pattern(value: str, path: tuple[str, ...]) -> str:
    """A URL or member pattern whose only placeholder is ``{file}``."""
    try:
        value.format(file="x")
    except (KeyError, IndexError, ValueError) as error:
        raise _Invalid(path, f"expected a pattern whose only placeholder is {{file}}, got {value!r} ({error})") from None
    return value


def _parse_source(data: Any, path: tuple[str, ...]) -> Source:
    _check_keys(data, path, _SOURCE_KEYS, "a source")
    kind = _string(data, "kind", path)
    if kind not in SOURCE_KINDS:
        raise _Invalid((*path, "kind"), f"expected one of {', '.join(SOURCE_KINDS)}, got {kind!r}")
    url = _pattern(_string(data, "url", path), (*path, "url"))
    member = _string(data, "member", path, allow_empty=True)
    if kind == "tar" and not member:
        raise _Invalid((*path, "member"), "a tar source needs the checkpoint's path in the archive, e.g. 'cifar_teachers/{file}'")
    if kind == "file" and "{file}" not in url:
        raise _Invalid((*path, "url"), f"a file source's url needs the {{file}} placeholder, got {url!r}")
    return Source(
        name=_string(data, "name", path),
        kind=kind,
        url=url,
        member=_pattern(member, (*path, "member")),
        note=_string(data, "note", path, allow_empty=True),
    )


def _parse_teacher(name: Any, data: Any, path: tuple[str, ...]) -> TeacherEntry:
    if not isinstance(name, str) or not name:
        raise _Invalid(path, f"a teacher's name must be a non-empty string, got {_describe(name)}")
    _check_keys(data, path, _TEACHER_KEYS, "a teacher")
    arch = _string(data, "arch", path)
    if not is_model(arch):
        raise _Invalid(
            (*path, "arch"),
            f"unknown architecture {arch!r}.{did_you_mean(arch, list_models())} "
            f"Expected a zoo model ({', '.join(list_models())}) or 'timm/<name>'",
        )
    top1 = data["reference_top1"]
    if isinstance(top1, bool) or not isinstance(top1, (int, float)) or not 0 <= top1 <= 100:
        raise _Invalid((*path, "reference_top1"), f"expected a top-1 accuracy in percent (0 to 100), got {_describe(top1)}")
    sha256 = data["sha256"]
    if sha256 is None:
        sha256 = ""
    if not isinstance(sha256, str) or (sha256 and not SHA256_PATTERN.fullmatch(sha256)):
        raise _Invalid((*path, "sha256"), f'expected "" (not yet verified) or 64 hexadecimal characters, got {_describe(sha256)}')
    return TeacherEntry(
        name=name,
        arch=arch,
        reference_top1=float(top1),
        file=_relative_file(_string(data, "file", path), (*path, "file")),
        sha256=sha256.lower(),
        recipe=_string(data, "recipe", path, allow_empty=True),
        trained_runs=_string(data, "trained_runs", path),
    )


def _parse_manifest(data: Any, path: Path) -> TeacherManifest:
    _check_keys(data, (), _TOP_KEYS, "the manifest")
    version = data["version"]
    if version != SUPPORTED_VERSION or isinstance(version, bool):
        raise _Invalid(("version",), f"expected {SUPPORTED_VERSION} (the only version this distill reads), got {_describe(version)}")
    dataset = _string(data, "dataset", ())
    if not isinstance(data["sources"], list):
        raise _Invalid(("sources",), f"expected a list of sources, got {_describe(data['sources'])}")
    sources = [_parse_source(item, ("sources", str(i))) for i, item in enumerate(data["sources"])]
    teachers_data = data["teachers"]
    if not isinstance(teachers_data, dict) or not teachers_data:
        raise _Invalid(("teachers",), f"expected a mapping of teacher name to entry, got {_describe(teachers_data)}")
    teachers = {name: _parse_teacher(name, entry, ("teachers", str(name))) for name, entry in teachers_data.items()}
    return TeacherManifest(
        path=path,
        root=path.parent,
        dataset=dataset,
        sources=sources,
        teachers=teachers,
        version=version,
    )


def read_manifest_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(
            f"teacher manifest {path} does not exist. Give one with --manifest PATH or the "
            f"{MANIFEST_ENV} environment variable (the shipped one is teachers/{MANIFEST_FILE} of a distill checkout)"
        ) from None
    except OSError as error:
        raise ManifestError(f"teacher manifest {path} cannot be read: {error}") from None


def parse_manifest_yaml(text: str, path: Path) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ManifestError(f"{where}: invalid YAML: {error.problem or error}") from None
    except yaml.YAMLError as error:
        raise ManifestError(f"{path}: invalid YAML: {error}") from None


def load_manifest(path: str | Path | None = None) -> TeacherManifest:
    """Read and validate a manifest (default: :func:`default_manifest_path`).

    The manifest's ``path`` and ``root`` are made absolute, so the paths it resolves
    stay valid whatever the working directory becomes (they are stored in runs).

    Raises:
        ManifestError: the file is missing, is not YAML, or breaks the schema; the
            message names the file, the key path and what was expected there.
    """
    path = Path(os.path.abspath(Path(path).expanduser() if path is not None else default_manifest_path()))
    data = parse_manifest_yaml(read_manifest_text(path), path)
    try:
        return _parse_manifest(data, path)
    except _Invalid as issue:
        where = ".".join(issue.path) or "(top level)"
        raise ManifestError(f"{path}: {where}: {issue.message}") from None
