"""The published CIFAR-100 numbers of the 13 CRD tasks, read from the package data file ``published.yaml``.

The numbers live in a data file, not in code, so that each one sits next to the
source it was copied from and can be checked or corrected without touching logic.
This module loads that file, checks its structure (every task a known task, every
number a float or null, every row naming a listed source) and answers look-ups.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from distill.benchmark.tasks import TASKS
from distill.errors import DistillError
from distill.recipe.yaml_io import parse_yaml

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


def _fail(where: str, message: str) -> DistillError:
    return DistillError(
        f"{ORIGIN}: {where}: {message}. The packaged data file is damaged: reinstall distill "
        "or fix the file (see its header)."
    )


def _text(data: Mapping[str, Any], key: str, where: str, required: bool = True) -> str:
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise _fail(f"{where}.{key}", f"expected a non-empty text, got {value!r}")
    return value.strip()


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, f"expected a mapping, got {type(value).__name__}")
    return value


def parse_results(raw: Any, where: str) -> dict[str, float | None]:
    """A row's ``results``: all 13 tasks, each a number or null (a missing task is an error, not a null)."""
    results = _mapping(raw, where)
    known = [task.name for task in TASKS]
    unknown = [name for name in results if name not in known]
    if unknown:
        raise _fail(where, f"unknown task(s) {', '.join(map(repr, unknown))}; tasks are {', '.join(known)}")
    missing = [name for name in known if name not in results]
    if missing:
        raise _fail(where, f"task(s) missing: {', '.join(missing)} (write null where there is no number)")
    parsed: dict[str, float | None] = {}
    for name in known:
        value = results[name]
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise _fail(f"{where}.{name}", f"expected a number or null, got {value!r}")
        parsed[name] = None if value is None else float(value)
    return parsed


def parse_row(key: str, raw: Any, where: str, sources: Mapping[str, Source]) -> PublishedRow:
    data = _mapping(raw, where)
    source = _text(data, "source", where)
    if source not in sources:
        raise _fail(f"{where}.source", f"{source!r} is not listed under 'sources'")
    return PublishedRow(
        key=key,
        label=_text(data, "label", where),
        source=source,
        note=_text(data, "note", where, required=False),
        results=parse_results(data.get("results"), f"{where}.results"),
    )


def parse_source(key: str, raw: Any) -> Source:
    where = f"sources.{key}"
    data = _mapping(raw, where)
    commit = data.get("commit")
    if commit is not None and not isinstance(commit, str):
        raise _fail(f"{where}.commit", f"expected a commit hash or null, got {commit!r}")
    return Source(
        key=key,
        title=_text(data, "title", where),
        url=_text(data, "url", where),
        commit=commit,
        note=_text(data, "note", where, required=False),
        copied_from=tuple(_copied_from(data.get("copied_from"), f"{where}.copied_from")),
    )


def _copied_from(raw: Any, where: str) -> list[str]:
    """``copied_from`` entries as ``owner/repo`` names (the entries' other keys are for readers)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _fail(where, f"expected a list, got {type(raw).__name__}")
    return [_text(_mapping(entry, f"{where}[{i}]"), "repo", f"{where}[{i}]") for i, entry in enumerate(raw)]


def parse_published(data: Any) -> PublishedResults:
    """Check the structure of the loaded data file and build the typed object."""
    top = _mapping(data, "top level")
    sources = {key: parse_source(key, raw) for key, raw in _mapping(top.get("sources"), "sources").items()}
    baselines = _mapping(top.get("baselines"), "baselines")
    if set(baselines) != set(BASELINES):
        raise _fail("baselines", f"expected exactly the rows {', '.join(BASELINES)}, got {', '.join(baselines)}")
    methods = _mapping(top.get("methods"), "methods")
    clash = [key for key in methods if key in BASELINES]
    if clash:
        raise _fail("methods", f"{', '.join(clash)} belong under 'baselines'")
    rows = {key: parse_row(key, baselines[key], f"baselines.{key}", sources) for key in BASELINES}
    rows.update({key: parse_row(key, raw, f"methods.{key}", sources) for key, raw in methods.items()})
    return PublishedResults(protocol=_text(top, "protocol", "top level"), rows=rows, sources=sources)


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
