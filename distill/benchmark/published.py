"""The published CIFAR-100 numbers of the 13 CRD tasks, read from the package data file ``published.yaml``.

The numbers live in a data file, not in code, so that each one sits next to the
source it was copied from and can be checked or corrected without touching logic.
This module loads that file, checks it against its schema (:class:`PublishedFile`:
every task a known task, every number a float or null, every row naming a listed
source and stating its :class:`Protocol`) and answers look-ups.

Each row states how its numbers were measured (views, epochs, last or best epoch,
runs averaged), because papers differ and a number is only comparable with one
measured the same way: the report puts that protocol beside every published number.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Literal

from distill.benchmark.tasks import TASKS
from distill.errors import DistillError
from distill.recipe.yaml_io import parse_yaml
from distill.schema import ValidationIssue, build_dataclass, checked, positive

DATA_FILE = "published.yaml"
ORIGIN = "distill/benchmark/published.yaml"
BASELINES = ("teacher", "vanilla")
"""The two rows that are not distillation methods: the teacher and the student trained alone."""
EpochChoice = Literal["last", "best", "not stated"]
"""Which epoch's accuracy a source reports: the last one, the best one (chosen on the test set), or it does not say."""


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
class Protocol:
    """How a row's numbers were measured, as its source states it (or says nothing of it).

    One protocol holds for a whole row: a row may not mix protocols across tasks,
    except the number of epochs where the source really trained some tasks longer
    (``epochs_by_task``, e.g. MLKD's 960-epoch ShuffleNet pairs). :meth:`for_task`
    gives the protocol of one number, with that override applied.
    """

    views: int
    """Images per sample per training step: 1 (the standard pipeline) or 2 (e.g. MLKD's weak and strong views)."""
    epochs: int
    epoch: EpochChoice
    runs: int | None
    """How many runs each number averages; None where the source does not say."""
    note: str = ""
    epochs_by_task: Mapping[str, int] = field(default_factory=dict)

    def for_task(self, task: str) -> Protocol:
        """The protocol of ``task``'s number: ``epochs`` from ``epochs_by_task`` where the task has its own."""
        return Protocol(self.views, self.epochs_by_task.get(task, self.epochs), self.epoch, self.runs, self.note)

    def key(self) -> tuple[int, int, str, int | None]:
        """What makes two numbers' protocols the same (the note is commentary, not protocol)."""
        return (self.views, self.epochs, self.epoch, self.runs)

    def describe(self) -> str:
        """``best epoch, 240 epochs, 1 view, mean of 4 runs``: the protocol in words, for legends and CSV files."""
        epoch = {"last": "last epoch", "best": "best epoch", "not stated": "last or best epoch not stated"}[self.epoch]
        views = "1 view" if self.views == 1 else f"{self.views} views"
        runs = "runs not stated" if self.runs is None else ("1 run" if self.runs == 1 else f"mean of {self.runs} runs")
        return f"{epoch}, {self.epochs} epochs, {views}, {runs}"


@dataclass(frozen=True)
class PublishedRow:
    """One row of published numbers (a method, or a baseline), keyed by task name, with the protocol they share."""

    key: str
    label: str
    source: str
    note: str
    results: Mapping[str, float | None]
    protocol: Protocol

    def protocol_for(self, task: str) -> Protocol:
        return self.protocol.for_task(task)


@dataclass(frozen=True)
class PublishedResults:
    """The whole data file: what its numbers measure, its rows (baselines first) and its sources."""

    metric: str
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

    def protocol(self, method: str, task: str) -> Protocol | None:
        """The protocol of ``method``'s number on ``task``; None for a method without a published row."""
        row = self.rows.get(method)
        return None if row is None else row.protocol_for(task)

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


def one_or_two(views: int) -> int:
    """``views``: images per sample per step, 1 or 2 (no source here trains on more)."""
    if views not in (1, 2):
        raise ValueError(f"expected 1 or 2 (images per sample per training step), got {views}")
    return views


def epochs_of_known_tasks(epochs: dict[str, int]) -> dict[str, int]:
    """``epochs_by_task``: known task names, each with a positive number of epochs."""
    known = [task.name for task in TASKS]
    unknown = [name for name in epochs if name not in known]
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(map(repr, unknown))}; tasks are {', '.join(known)}")
    bad = [f"{name}: {value}" for name, value in epochs.items() if value < 1]
    if bad:
        raise ValueError(f"epochs must be positive, got {', '.join(bad)}")
    return epochs


@dataclass(frozen=True)
class ProtocolFields:
    """A row's ``protocol`` as the data file writes it; ``runs`` must be written, as null where the source is silent.

    Whatever the source leaves unstated (``runs: null``, ``epoch: not stated``) needs a ``note`` that says
    so and what is known instead, so that a reader never takes a gap for a fact.
    """

    views: int = field(metadata=checked(one_or_two))
    epochs: int = field(metadata=positive())
    epoch: EpochChoice
    runs: int | None = field(metadata=positive())
    note: str = field(default="", metadata=checked(text))
    epochs_by_task: dict[str, int] = field(default_factory=dict, metadata=checked(epochs_of_known_tasks))

    def __post_init__(self) -> None:
        if (self.runs is None or self.epoch == "not stated") and not self.note:
            unstated = "runs" if self.runs is None else "epoch"
            raise ValidationIssue(("note",), f"{unstated} is not stated: write a note that says so and what is known")


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
    protocol: ProtocolFields
    note: str = field(default="", metadata=checked(text))


@dataclass(frozen=True)
class PublishedFile:
    """The data file's top level; every row names a listed source."""

    metric: str = field(metadata=checked(text))
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
        key: PublishedRow(key, raw.label, raw.source, raw.note, raw.results, protocol_of(raw.protocol))
        for key, raw in {**parsed.baselines, **parsed.methods}.items()
    }
    return PublishedResults(metric=parsed.metric, rows=rows, sources=sources)


def protocol_of(raw: ProtocolFields) -> Protocol:
    return Protocol(raw.views, raw.epochs, raw.epoch, raw.runs, raw.note, dict(raw.epochs_by_task))


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
