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
from dataclasses import dataclass, field
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
from distill.schema import ValidationIssue, between, build_dataclass, checked

MANIFEST_ENV = "DISTILL_TEACHER_MANIFEST"
MANIFEST_FILE = "cifar100.yaml"
VERIFIED_RECORD = "verified.json"
DOWNLOADS_DIR = ".downloads"
SUPPORTED_VERSION = 1
SOURCE_KINDS = ("file", "tar")

SHA256_PATTERN = re.compile(r"[0-9a-fA-F]{64}")


class ManifestError(DistillError):
    """The teacher manifest is missing or malformed, or a teacher's checkpoint cannot be found."""


def non_empty(value: str) -> str:
    """A string that says something."""
    if not value:
        raise ValueError("expected a non-empty string")
    return value


def source_kind(value: str) -> str:
    if value not in SOURCE_KINDS:
        raise ValueError(f"expected one of {', '.join(SOURCE_KINDS)}, got {value!r}")
    return value


def file_pattern(value: str) -> str:
    """A URL or member pattern whose only placeholder is ``{file}``."""
    try:
        value.format(file="x")
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(f"expected a pattern whose only placeholder is {{file}}, got {value!r} ({error})") from None
    return value


def relative_file(value: str) -> str:
    """A teacher's ``file`` must stay inside the manifest's folder: relative, no ``..``."""
    pure = Path(non_empty(value))
    if pure.is_absolute() or ".." in pure.parts:
        raise ValueError(f"expected a path relative to the manifest's folder without '..', got {value!r}")
    return value


def sha256_hex(value: str) -> str:
    if value and not SHA256_PATTERN.fullmatch(value):
        raise ValueError(f'expected "" (not yet verified) or 64 hexadecimal characters, got {value!r}')
    return value.lower()


def known_arch(value: str) -> str:
    if not is_model(value):
        raise ValueError(
            f"unknown architecture {value!r}.{did_you_mean(value, list_models())} "
            f"Expected a zoo model ({', '.join(list_models())}) or 'timm/<name>'"
        )
    return value


def supported_version(value: int) -> int:
    if value != SUPPORTED_VERSION:
        raise ValueError(f"expected {SUPPORTED_VERSION} (the only version this distill reads), got {value!r}")
    return value


def some_teachers(value: dict[str, Any]) -> dict[str, Any]:
    if not value or not all(value):
        raise ValueError(f"expected a mapping of teacher name (a non-empty string) to entry, got {value!r}")
    return value


@dataclass(frozen=True)
class Source:
    """Where published checkpoints can be downloaded.

    ``kind: file``: ``url`` with ``{file}`` replaced by a teacher's ``file`` is that
    checkpoint. ``kind: tar``: ``url`` is one archive of all teachers; ``member`` with
    ``{file}`` replaced is the checkpoint's path inside it.
    """

    name: str = field(metadata=checked(non_empty))
    kind: str = field(metadata=checked(source_kind))
    url: str = field(metadata=checked(lambda value: file_pattern(non_empty(value))))
    member: str = field(default="", metadata=checked(file_pattern))
    note: str = ""

    def __post_init__(self) -> None:
        """Checks between fields (a ValidationIssue names the key under the source)."""
        if self.kind == "tar" and not self.member:
            raise ValidationIssue(("member",), "a tar source needs the checkpoint's path in the archive, e.g. 'cifar_teachers/{file}'")
        if self.kind == "file" and "{file}" not in self.url:
            raise ValidationIssue(("url",), f"a file source's url needs the {{file}} placeholder, got {self.url!r}")

    def url_for(self, file: str) -> str:
        return self.url.format(file=file)

    def member_for(self, file: str) -> str:
        return self.member.format(file=file)


@dataclass(frozen=True)
class TeacherFields:
    """A teacher's entry as the manifest file writes it (its name is the key above it)."""

    arch: str = field(metadata=checked(known_arch))
    reference_top1: float = field(metadata=between(0, 100, "expected a top-1 accuracy in percent (0 to 100)"))
    file: str = field(metadata=checked(relative_file))
    sha256: str | None = field(metadata=checked(sha256_hex))
    trained_runs: str = field(metadata=checked(non_empty))
    recipe: str = ""


@dataclass(frozen=True)
class ManifestFile:
    """The manifest file's top level."""

    version: int = field(metadata=checked(supported_version))
    dataset: str = field(metadata=checked(non_empty))
    sources: list[Source]
    teachers: dict[str, TeacherFields] = field(metadata=checked(some_teachers))


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


def _manifest(data: Any, path: Path) -> TeacherManifest:
    """The manifest file's content, checked against :class:`ManifestFile`, as a :class:`TeacherManifest`."""
    parsed = build_dataclass(ManifestFile, data, ())
    teachers = {
        name: TeacherEntry(
            name=name,
            arch=entry.arch,
            reference_top1=entry.reference_top1,
            file=entry.file,
            sha256=entry.sha256 or "",
            recipe=entry.recipe,
            trained_runs=entry.trained_runs,
        )
        for name, entry in parsed.teachers.items()
    }
    return TeacherManifest(
        path=path, root=path.parent, dataset=parsed.dataset, sources=parsed.sources, teachers=teachers, version=parsed.version
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
        return _manifest(data, path)
    except ValidationIssue as issue:
        where = ".".join(issue.path) or "(top level)"
        raise ManifestError(f"{path}: {where}: {issue.message}") from None
