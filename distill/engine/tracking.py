"""Experiment trackers: where a run's scalars go besides ``metrics.jsonl``, through Accelerate's trackers.

The recipe's ``tracking.log_with`` names them (:data:`distill.recipe.schema.TrackerName`);
each is one :class:`TrackerKind` in :data:`TRACKERS`: the package it needs, how to make
Accelerate's tracker for a run, and what to keep so that a resume continues the same
tracker run. Only TensorBoard is a dependency of distill; the others are optional extras,
and a recipe naming one that is not installed is refused before anything is written
(:func:`check_trackers_available`).

Why Accelerate's tracker classes rather than ``Accelerator(log_with=...)``: the
Accelerator of a run exists before its run directory is known (it takes part in
choosing it), TensorBoard's events belong in the run directory's own ``tensorboard/``
(``init_trackers`` puts them in a sub-folder named after the project), and
``Accelerator.end_training`` also destroys the process group, which the trainer's last
barrier and a sweep running cells one after another in one process still need. So the
trainer's main process starts, feeds and finishes the trackers itself
(:class:`Trackers`), with the same calls ``init_trackers``/``log``/``end_training`` make.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from accelerate.tracking import AimTracker, CometMLTracker, GeneralTracker, MLflowTracker, TensorBoardTracker, WandBTracker
from accelerate.utils import (
    is_aim_available,
    is_comet_ml_available,
    is_mlflow_available,
    is_tensorboard_available,
    is_wandb_available,
)

from distill.errors import DistillError
from distill.files.rundir import TENSORBOARD_DIR, TRACKERS_FILE
from distill.recipe.schema import Recipe, TrackerName
from distill.recipe.serialize import flatten_recipe, recipe_to_dict

BOOKKEEPING_KEYS = frozenset({"epoch", "step", "batch"})
"""Row fields that place a row (its x-axis), not scalars to plot."""

TAG_KEY = re.compile(r"[A-Za-z0-9_.\-]+")


class TrackerError(DistillError):
    """A tracker cannot be used: not installed, or it failed to start."""


@dataclass(frozen=True)
class TrackerRun:
    """What a tracker needs to know about the run it records."""

    run_dir: Path
    project: str
    tags: Mapping[str, str]
    run_id: str | None
    """The id this run had in the tracker at an earlier start (kept in ``trackers.json``), else ``None``."""


@dataclass(frozen=True)
class TrackerKind:
    """One tracker distill can log to.

    ``requirement``: what ``pip install`` needs. ``available``: Accelerate's own test
    (so distill never asks for a tracker Accelerate would then silently leave out).
    ``make``: Accelerate's tracker for a run. ``run_id``: after it started, the id that
    continues this tracker run (``None`` for a tracker with nothing to continue).
    ``rebuilt``: its record lives in the run directory and a resume rebuilds it from the
    rows the checkpoint saw (``clear`` removes it first), so it never holds a row twice.
    """

    requirement: str
    available: Callable[[], object]
    make: Callable[[TrackerRun], GeneralTracker]
    run_id: Callable[[GeneralTracker], str | None] = lambda tracker: None
    rebuilt: bool = False
    clear: Callable[[Path], None] = lambda run_dir: None


def _new_id() -> str:
    """A fresh tracker run id: 32 hex digits (valid as a W&B run id and a Comet experiment key)."""
    return uuid.uuid4().hex


def _wandb(run: TrackerRun) -> GeneralTracker:
    return WandBTracker(
        run.project, id=run.run_id or _new_id(), resume="allow", name=run.run_dir.name,
        tags=[f"{key}={value}" for key, value in run.tags.items()],
    )


def _mlflow(run: TrackerRun) -> GeneralTracker:
    return MLflowTracker(experiment_name=run.project, run_id=run.run_id, tags=dict(run.tags) or None, run_name=run.run_dir.name)


def _aim(run: TrackerRun) -> GeneralTracker:
    """Aim's repository is the folder above the run directory (``output_dir``, a sweep's folder): runs meet there."""
    return AimTracker(run.run_dir.name, str(run.run_dir.parent), run_hash=run.run_id, experiment=run.project)


def _comet(run: TrackerRun) -> GeneralTracker:
    return CometMLTracker(run.project, experiment_key=run.run_id or _new_id())


TRACKERS: dict[str, TrackerKind] = {
    "tensorboard": TrackerKind(
        requirement="tensorboard",
        available=is_tensorboard_available,
        make=lambda run: TensorBoardTracker(TENSORBOARD_DIR, run.run_dir),  # events in RUN_DIR/tensorboard, as always
        rebuilt=True,
        clear=lambda run_dir: shutil.rmtree(run_dir / TENSORBOARD_DIR, ignore_errors=True),
    ),
    "wandb": TrackerKind("wandb", is_wandb_available, _wandb, run_id=lambda tracker: tracker.init_kwargs["id"]),
    "mlflow": TrackerKind("mlflow", is_mlflow_available, _mlflow, run_id=lambda tracker: tracker.active_run.info.run_id),
    "aim": TrackerKind("'aim<4'", is_aim_available, _aim, run_id=lambda tracker: tracker.writer.hash),
    "comet_ml": TrackerKind("comet-ml", is_comet_ml_available, _comet, run_id=lambda tracker: tracker.init_kwargs["experiment_key"]),
}
"""Every tracker of :data:`~distill.recipe.schema.TrackerName`, by name."""

assert set(TRACKERS) == set(get_args(TrackerName)), "TRACKERS and recipe.schema.TrackerName name the same trackers"


def check_trackers_available(names: Iterable[str]) -> None:
    """Refuse (:class:`TrackerError`, one line) a tracker whose package is not installed, saying what to install."""
    missing = [name for name in names if not TRACKERS[name].available()]
    if missing:
        install = " ".join(TRACKERS[name].requirement for name in missing)
        raise TrackerError(
            f"tracking.log_with names {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed: "
            f"pip install {install} (or leave {'it' if len(missing) == 1 else 'them'} out of tracking.log_with)"
        )


def check_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """The run's tags (``task``, ``method``, ``seed`` of a grid cell): keys of letters, digits, ``_.-``; values not empty."""
    checked: dict[str, str] = {}
    for key, value in tags.items():
        if not isinstance(key, str) or not TAG_KEY.fullmatch(key):
            raise TrackerError(f"tag {key!r}: a tag's key is letters, digits, '_', '.' or '-', e.g. task=cifar100")
        if not isinstance(value, str) or not value:
            raise TrackerError(f"tag {key}: expected a non-empty text value, got {value!r}")
        checked[key] = value
    return checked


def parse_tags(items: Iterable[str]) -> dict[str, str]:
    """``["task=cifar100", "seed=0"]`` (``--tag`` options) → ``{"task": "cifar100", "seed": "0"}``, checked."""
    tags: dict[str, str] = {}
    for item in items:
        key, equals, value = item.partition("=")
        if not equals:
            raise TrackerError(f"--tag {item!r}: expected KEY=VALUE, e.g. --tag task=cifar100")
        if key in tags:
            raise TrackerError(f"--tag {key} is given twice ({key}={tags[key]} and {item}); give each key once")
        tags[key] = value
    return check_tags(tags)


def _config_value(value: Any) -> bool | int | float | str:
    """A leaf as a tracker config value: TensorBoard's hparams take bool, int, float and str, so lists and null become JSON text."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value)


def tracker_config(recipe: Recipe, tags: Mapping[str, str]) -> dict[str, bool | int | float | str]:
    """The run's recipe, flat (``optimizer.lr`` …), and its tags (``tags/task`` …): the config every tracker stores."""
    config = {key: _config_value(value) for key, value in flatten_recipe(recipe_to_dict(recipe)).items()}
    config.update({f"tags/{key}": value for key, value in tags.items()})
    return config


def scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """A row's finite numbers, the fields that place it (epoch, step, batch) left out: what a tracker plots."""
    return {
        key: value
        for key, value in row.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in BOOKKEEPING_KEYS
        and value == value and abs(value) != float("inf")
    }


def read_tracker_ids(run_dir: Path) -> dict[str, str]:
    """The ids this run has in its remote trackers (``trackers.json``); none if it has none or the file is damaged."""
    try:
        recorded = json.loads((run_dir / TRACKERS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in recorded.items() if isinstance(v, str)} if isinstance(recorded, dict) else {}


class Trackers:
    """The trackers one run logs to: started on the main process when the run directory opens, finished at its end.

    A resume continues the same run in each tracker that can: W&B, MLflow, Aim and Comet
    get the run's id kept in ``trackers.json`` (written at the first start). TensorBoard
    lives in the run directory and is rebuilt from the rows the checkpoint saw
    (:meth:`replay`), so it holds each step once. A remote tracker cannot take rows
    back: the rows a crashed process logged after its last checkpoint stay there. W&B
    then drops the resumed run's rows for those steps (its steps must increase), so it
    keeps the crashed process's values for them; MLflow and Aim keep both values at
    each such step. ``metrics.jsonl`` and ``steps.jsonl`` stay the record of the run.
    """

    def __init__(
        self, run_dir: Path, names: Iterable[str], project: str = "distill", config: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        self.run_dir, self.project = Path(run_dir), project
        self.names = list(names)
        self.config = dict(config or {})
        self.tags = dict(tags or {})
        self._started: list[tuple[str, GeneralTracker]] = []

    def __bool__(self) -> bool:
        return bool(self.names)

    def start(self, *, resumed: bool) -> None:
        """Start every tracker and give it the config; a ``resumed`` run first clears what :meth:`replay` rebuilds."""
        ids = read_tracker_ids(self.run_dir) if resumed else {}
        for name in self.names:
            kind = TRACKERS[name]
            if resumed and kind.rebuilt:
                kind.clear(self.run_dir)
            tracker = kind.make(TrackerRun(self.run_dir, self.project, self.tags, ids.get(name)))
            try:
                tracker.start()
                if self.config:
                    tracker.store_init_configuration(self.config)
            except Exception as error:  # a tracker's own failure (no login, no server): say which, in one line
                self.finish()
                raise TrackerError(f"tracker {name} could not start: {type(error).__name__}: {error}") from error
            self._started.append((name, tracker))
            run_id = kind.run_id(tracker)
            if run_id is not None:
                ids[name] = run_id
        if ids:  # a plain write, as outcome.json: a file cut short reads as no ids (a new tracker run), not as a stranger
            (self.run_dir / TRACKERS_FILE).write_text(json.dumps(ids, indent=2) + "\n", encoding="utf-8")

    def replay(self, rows: Iterable[tuple[Mapping[str, Any], int]]) -> None:
        """Log ``(row, step)`` pairs a resumed run kept to the trackers rebuilt from them (TensorBoard)."""
        rebuilt = [tracker for name, tracker in self._started if TRACKERS[name].rebuilt]
        for row, step in rows:
            values = scalars(row)
            if values:
                for tracker in rebuilt:
                    tracker.log(values, step=step)

    def log(self, row: Mapping[str, Any], step: int) -> None:
        """A row's scalars (:func:`scalars`) at ``step``, to every tracker."""
        values = scalars(row)
        if values:
            for _, tracker in self._started:
                tracker.log(values, step=step)

    def finish(self) -> None:
        """Close every started tracker (flush TensorBoard's files, end the W&B/MLflow/Aim/Comet run)."""
        started, self._started = self._started, []
        for _, tracker in started:
            tracker.finish()
