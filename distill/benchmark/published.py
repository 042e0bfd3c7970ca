"""The published CIFAR-100 numbers of the 13 CRD tasks, read from the package data file ``published.yaml``.

The numbers live in a data file, not in code, so that each one sits next to the
source it was copied from and can be checked or corrected without touching logic.
This module loads that file, checks it against its schema (:class:`PublishedFile`:
every task a known task, every number a float or null, every row naming a listed
source) and answers look-ups.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

from distill.benchmark.tasks import TASKS
from distill.errors import DistillError
from distill.recipe.yaml_io import parse_yaml
from distill.schema import ValidationIssue, build_dataclass, checked

DATA_FILE = "published.yaml"
ORIGIN = "distill/benchmark/published.yaml"
BASELINES = ("teacher", "vanilla")
"""The two rows that are not distillation methods: the teacher and the student trained alone."""


@dataclass(frozen=True)
class Source:
    """Where a row's numbers were copied from."""

    key: str
    title: str
    url: str
    commit: str | None
    note: str
    copied_from: tuple[str, ...] = ()
    """For second-hand numbers: the repositories whose READMEs repeat them."""

    def citation(self) -> str:
        """A one-line reference: the URL, plus the commit when one is recorded."""
        return f"{self.url} @ {self.commit[:12]}" if self.commit else self.url


@dataclass(frozen=True)
class PublishedRow:
    """One row of published numbers (a method, or a baseline), keyed by task name."""

    key: str
    label: str
    source: str
    note: str
    results: Mapping[str, float | None]


@dataclass(frozen=True)
class PublishedResults:
    """The whole data file: its protocol note, its rows (baselines first) and its sources."""

    protocol: str
    rows: Mapping[str, PublishedRow]
    sources: Mapping[str, Source]

    @property
    def methods(self) -> tuple[str, ...]:
        """The distillation methods with a row, in file order (the baselines excluded)."""
        return tuple(key for key in self.rows if key not in BASELINES)

    def top1(self, method: str, task: str) -> float | None:
        """The published top-1 of ``method`` on ``task``; None when the source has no number or no row."""
        row = self.rows.get(method)
        return None if row is None else row.results.get(task)

    def teacher_top1(self, task: str) -> float | None:
        return self.top1("teacher", task)

    def vanilla_top1(self, task: str) -> float | None:
        return self.top1("vanilla", task)

    def label(self, method: str) -> str:
        """The method's display name (``hint`` → ``FitNet``); unknown methods keep their key."""
        row = self.rows.get(method)
        return row.label if row is not None else method

    def source(self, method: str) -> Source | None:
        """The source of ``method``'s numbers, or None for a method without a published row."""
        row = self.rows.get(method)
        return None if row is None else self.sources[row.source]


# --- the data file's schema ----------------------------------------------------------------


def text(value: str) -> str:
    """A non-empty text, stripped."""
    if not value.strip():
        raise ValueError(f"expected a non-empty text, got {value!r}")
    return value.strip()


def all_tasks(results: dict[str, float | None]) -> dict[str, float | None]:
    """A row's ``results``: all 13 tasks, in task order (a missing task is an error, not a null)."""
    known = [task.name for task in TASKS]
    unknown = [name for name in results if name not in known]
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(map(repr, unknown))}; tasks are {', '.join(known)}")
    missing = [name for name in known if name not in results]
    if missing:
        raise ValueError(f"task(s) missing: {', '.join(missing)} (write null where there is no number)")
    return {name: results[name] for name in known}


def exactly_the_baselines(rows: dict[str, Any]) -> dict[str, Any]:
    if set(rows) != set(BASELINES):
        raise ValueError(f"expected exactly the rows {', '.join(BASELINES)}, got {', '.join(rows)}")
    return {key: rows[key] for key in BASELINES}


def no_baselines(rows: dict[str, Any]) -> dict[str, Any]:
    clash = [key for key in rows if key in BASELINES]
    if clash:
        raise ValueError(f"{', '.join(clash)} belong under 'baselines'")
    return rows


@dataclass(frozen=True)
class CopiedFromFields:
    """A repository that repeats second-hand numbers (``file``, ``commit``, ``covers`` are for readers)."""

    repo: str = field(metadata=checked(text))
    file: str = ""
    commit: str | None = None
    covers: str = ""


@dataclass(frozen=True)
class SourceFields:
    """A source as the data file writes it (its key is the name above it)."""

    title: str = field(metadata=checked(text))
    url: str = field(metadata=checked(text))
    commit: str | None = None
    note: str = field(default="", metadata=checked(text))
    file: str = ""
    copied_from: list[CopiedFromFields] = field(default_factory=list)


@dataclass(frozen=True)
class RowFields:
    """A row as the data file writes it."""

    label: str = field(metadata=checked(text))
    source: str = field(metadata=checked(text))
    results: dict[str, float | None] = field(metadata=checked(all_tasks))
    note: str = field(default="", metadata=checked(text))


@dataclass(frozen=True)
class PublishedFile:
    """The data file's top level; every row names a listed source."""

    protocol: str = field(metadata=checked(text))
    baselines: dict[str, RowFields] = field(metadata=checked(exactly_the_baselines))
    methods: dict[str, RowFields] = field(metadata=checked(no_baselines))
    sources: dict[str, SourceFields]

    def __post_init__(self) -> None:
        for section in ("baselines", "methods"):
            for key, row in getattr(self, section).items():
                if row.source not in self.sources:
                    raise ValidationIssue((section, key, "source"), f"{row.source!r} is not listed under 'sources'")


def parse_published(data: Any) -> PublishedResults:
    """Check the loaded data file against :class:`PublishedFile` and build the typed object.

    Raises:
        DistillError: ``FILE: key.path: message``, and that the packaged file is damaged.
    """
    try:
        parsed = build_dataclass(PublishedFile, data, ())
    except ValidationIssue as issue:
        raise DistillError(
            f"{ORIGIN}: {'.'.join(issue.path) or '(top level)'}: {issue.message}. The packaged data file is damaged: "
            "reinstall distill or fix the file (see its header)."
        ) from None
    sources = {
        key: Source(key, raw.title, raw.url, raw.commit, raw.note, tuple(entry.repo for entry in raw.copied_from))
        for key, raw in parsed.sources.items()
    }
    rows = {
        key: PublishedRow(key, raw.label, raw.source, raw.note, raw.results)
        for key, raw in {**parsed.baselines, **parsed.methods}.items()
    }
    return PublishedResults(protocol=parsed.protocol, rows=rows, sources=sources)


@lru_cache(maxsize=1)
def load_published() -> PublishedResults:
    """The packaged published numbers (read once per process)."""
    text = resources.files("distill.benchmark").joinpath(DATA_FILE).read_text(encoding="utf-8")
    return parse_published(parse_yaml(text, ORIGIN))


def published_top1(method: str, task: str) -> float | None:
    """The published top-1 of ``method`` (a recipe folder name, or teacher/vanilla) on ``task``."""
    return load_published().top1(method, task)


def teacher_top1(task: str) -> float | None:
    """The published accuracy of ``task``'s teacher."""
    return load_published().teacher_top1(task)


def vanilla_top1(task: str) -> float | None:
    """The published accuracy of ``task``'s student trained alone."""
    return load_published().vanilla_top1(task)


def method_label(method: str) -> str:
    """The display name of a method (``hint`` → ``FitNet``); an unknown method keeps its key."""
    return load_published().label(method)


def source(method: str) -> Source | None:
    """Where ``method``'s published numbers come from; None when there is no published row."""
    return load_published().source(method)
