"""Benchmark tables in the CRD paper's layout, from run records: aggregation and rendering.

Everything here is a pure function (records in, numbers or text out) so that the
arithmetic and the layout can be tested without training anything. The CLI
(``distill report``) does the file handling.

Layout: one column per teacher→student task, in the paper's order, one row per
method. A cell holds our mean ± sample std over seeds, the number of finished
runs, the published number with a letter for its protocol (the legend under the
table says what each letter means) and our difference to it, which is printed only
where the two were measured the same way (:mod:`distill.benchmark.comparison`).
Runs that have not finished
are counted and shown, never averaged in: a half-trained run would drag a mean down.
Runs that an error ended (``outcome.json`` says ``failed`` or ``nonfinite``) are
no result at all: counted apart from the unfinished ones and listed with their error.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from distill.benchmark.comparison import OURS_EPOCH, Comparison, OurProtocol, compare, published_delta
from distill.benchmark.cost import CPU, GPU, CostGroup, RunCost, cost_groups, format_duration
from distill.benchmark.published import Protocol, PublishedResults
from distill.benchmark.runs import TEACHER_METHOD, RunRecord
from distill.benchmark.tasks import TASKS

Metric = Literal["final", "best"]
METRICS: tuple[str, ...] = ("final", "best")

METHOD_ORDER: tuple[str, ...] = (
    "teacher", "vanilla", "kd", "hint", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "fsp", "nst",
    "crd", "crd_kd", "dkd", "kd_ls", "dkd_ls", "mlkd", "mlkd_ls", "kd_2view", "kd_ls_2view", "dist", "ttm", "wttm",
    "wttm_crd", "ml_cpc", "ml_cpc_kd", "reviewkd", "itrd", "wttm_itrd", "crd_infomin", "ml_cpc_infomin", "segmental",
    "segmental_kd",
)  # fmt: skip
"""Row order: the CRD paper's, then the later methods (MLKD's compute-matched baselines beside it; the
representation distillers of issue 16 after ML-CPC); other methods follow alphabetically."""

REFERENCE_EPOCHS = 240
"""The CRD paper's schedule; cells of runs trained for another number of epochs say so."""

MINUS = "\u2212"
NO_VALUE = "\u2013"
NOTHING_FINISHED = "\u2014"
TASK_NAMES = tuple(task.name for task in TASKS)

CSV_COLUMNS = (
    "method", "task", "teacher", "student", "metric", "n_complete", "n_incomplete", "n_failed", "seeds",
    "mean", "std", "epoch", "epochs", "views", "published", "delta", "comparison", "comparison_note",
    "published_epoch", "published_epochs", "published_views", "published_runs", "published_protocol",
    "published_source", "gpu_runs", "gpu_wall_s_mean", "gpu_hours_per_run", "cpu_runs", "cpu_wall_s_mean",
    "cpu_hours_per_run",
)  # fmt: skip
"""``epoch``/``epochs``/``views``: our protocol; ``published_*``: the source's; ``comparison``: same protocol,
labelled or withheld (``delta`` is empty when withheld), ``comparison_note`` says why. ``gpu_*``/``cpu_*``:
the cost of the finished runs per kind of device (wall × processes / 3600 per run; runs whose device was not
recorded are in neither)."""

CellKey = tuple[str, str]
ProtocolKey = tuple[int, int, str, int | None]
Markers = Mapping[ProtocolKey, str]
"""A letter per distinct published protocol shown in a table (``a``, ``b``, ...), explained in the legend under it."""


@dataclass(frozen=True)
class Cell:
    """The runs of one (method, task): the metric of each finished run, and how many have not finished or failed."""

    method: str
    task: str
    teacher_arch: str | None
    student_arch: str
    values: tuple[float, ...]
    seeds: tuple[int | None, ...]
    """Seeds of the finished runs, in the order of ``values``."""
    incomplete_seeds: tuple[int | None, ...]
    """Seeds of the runs that have not finished yet (running, stopped, or killed without a word)."""
    epochs: tuple[int, ...]
    """Distinct epoch counts of the finished runs."""
    views: tuple[int, ...] = ()
    """Distinct views per step of the finished runs (see :attr:`RunRecord.views`)."""
    failed_seeds: tuple[int | None, ...] = ()
    """Seeds of the runs an error ended (see :attr:`RunRecord.failed`)."""
    costs: tuple[RunCost, ...] = ()
    """Wall time and device of the finished runs that recorded one."""

    @property
    def cost_groups(self) -> list[CostGroup]:
        """The finished runs' cost per kind of device (GPU-hours and CPU-hours are never added together)."""
        return cost_groups(self.costs)

    @property
    def n_complete(self) -> int:
        return len(self.values)

    @property
    def n_incomplete(self) -> int:
        return len(self.incomplete_seeds)

    @property
    def n_failed(self) -> int:
        return len(self.failed_seeds)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation (n−1); None for fewer than two runs, where it is undefined."""
        return statistics.stdev(self.values) if len(self.values) >= 2 else None


def record_value(record: RunRecord, metric: Metric) -> float | None:
    """The run's number under ``metric``; None while the run is incomplete."""
    if not record.complete:
        return None
    return record.final_top1 if metric == "final" else record.best_top1


def record_cells(record: RunRecord) -> list[tuple[str, str | None, str]]:
    """The (task, teacher arch, student arch) columns a run belongs to.

    A teacher run counts for every benchmark task that uses that teacher (it is the
    paper's "Teacher" row there); any other run for its own task. Benchmark tasks
    take their archs from the task, so a vanilla run (no teacher) still names one.
    """
    if record.method == TEACHER_METHOD:
        tasks = [(t.name, t.teacher, t.student) for t in TASKS if t.teacher == record.student_arch]
        if tasks:
            return tasks
    if record.task in TASK_NAMES:
        spec = TASKS[TASK_NAMES.index(record.task)]
        return [(spec.name, spec.teacher, spec.student)]
    return [(record.task, record.teacher_arch, record.student_arch)]


def aggregate(records: Iterable[RunRecord], metric: Metric = "final") -> dict[CellKey, Cell]:
    """Group runs by (method, task); finished runs give values, unfinished and failed ones are only counted.

    A run that failed before writing its recipe belongs to no cell (its method and task are unknown).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    groups: dict[CellKey, list[RunRecord]] = defaultdict(list)
    archs: dict[CellKey, tuple[str | None, str]] = {}
    for record in records:
        if record.recipe_missing:
            continue
        for task, teacher, student in record_cells(record):
            groups[record.method, task].append(record)
            archs[record.method, task] = (teacher, student)
    cells = {}
    for key, group in groups.items():
        finished = sorted(
            ((r.seed, value, r.epochs_done) for r in group if (value := record_value(r, metric)) is not None),
            key=lambda item: (item[0] is None, item[0] or 0),
        )
        cells[key] = Cell(
            method=key[0],
            task=key[1],
            teacher_arch=archs[key][0],
            student_arch=archs[key][1],
            values=tuple(value for _, value, _ in finished),
            seeds=tuple(seed for seed, _, _ in finished),
            incomplete_seeds=tuple(r.seed for r in group if record_value(r, metric) is None and not r.failed),
            epochs=tuple(sorted({epochs for _, _, epochs in finished})),
            views=tuple(sorted({r.views for r in group if record_value(r, metric) is not None})),
            failed_seeds=tuple(r.seed for r in group if r.failed),
            costs=tuple(r.cost for r in group if record_value(r, metric) is not None and r.cost is not None),
        )
    return cells


def measured_teachers(records: Iterable[RunRecord]) -> dict[str, tuple[float, ...]]:
    """Per task, the distinct teacher accuracies the distillation runs measured before training."""
    found: dict[str, set[float]] = defaultdict(set)
    for record in records:
        if record.teacher_top1_measured is not None:
            found[record.task].add(record.teacher_top1_measured)
    return {task: tuple(sorted(values)) for task, values in found.items()}


def method_order(methods: Iterable[str]) -> list[str]:
    """The paper's row order for the known methods, then the others alphabetically."""
    unique = set(methods)
    known = [m for m in METHOD_ORDER if m in unique]
    return known + sorted(unique - set(METHOD_ORDER))


def task_order(tasks: Iterable[str], all_tasks: bool = False) -> list[str]:
    """The benchmark tasks in the paper's order (all 13 with ``all_tasks``), then other tasks alphabetically."""
    unique = set(tasks)
    known = [name for name in TASK_NAMES if all_tasks or name in unique]
    return known + sorted(unique - set(TASK_NAMES))


def format_number(value: float | None) -> str:
    return NO_VALUE if value is None else f"{value:.2f}"


def format_delta(delta: float) -> str:
    """``+0.18``, ``−0.18`` (a true minus sign) or ``±0.00``."""
    if round(delta, 2) == 0:
        return "\u00b10.00"
    return f"+{delta:.2f}" if delta > 0 else f"{MINUS}{-delta:.2f}"


def method_title(method: str, published: PublishedResults) -> str:
    """The row title: the published label, with our key when the label does not contain it (``FitNet (hint)``)."""
    label = published.label(method)
    simple = "".join(ch for ch in label.lower() if ch.isalnum())
    key = "".join(ch for ch in method.lower() if ch.isalnum())
    return label if key in simple else f"{label} ({method})"


def our_protocol(cell: Cell, metric: Metric) -> OurProtocol:
    """The protocol of a cell's mean: the metric's epoch, the finished runs' epoch counts and how many they are."""
    return OurProtocol(  # type: ignore[arg-type]
        epoch=OURS_EPOCH[metric], epochs=cell.epochs, runs=cell.n_complete, views=cell.views or (1,)
    )


def shown_protocols(methods: Iterable[str], tasks: Sequence[str], published: PublishedResults) -> list[Protocol]:
    """The protocols of the published numbers a table shows, in reading order: the header's baselines, then row by row."""
    found = []
    for task in tasks:
        if task in TASK_NAMES:
            found += [published.protocol(row, task) for row in ("teacher", "vanilla") if published.top1(row, task) is not None]
    for method in methods:
        found += [published.protocol(method, task) for task in tasks if published.top1(method, task) is not None]
    return [protocol for protocol in found if protocol is not None]


def protocol_markers(protocols: Iterable[Protocol]) -> dict[ProtocolKey, str]:
    """A letter per distinct protocol, in order of first appearance (``a``, ``b``, ...; ``p27`` on after ``z``)."""
    markers: dict[ProtocolKey, str] = {}
    for protocol in protocols:
        if protocol.key() not in markers:
            index = len(markers)
            markers[protocol.key()] = chr(ord("a") + index) if index < 26 else f"p{index + 1}"
    return markers


def marker(published: PublishedResults, row: str, task: str, markers: Markers) -> str:
    """`` [a]``: the letter of the protocol of ``row``'s number on ``task`` (empty without one)."""
    protocol = published.protocol(row, task)
    letter = markers.get(protocol.key()) if protocol is not None else None
    return f" [{letter}]" if letter else ""


def header_cell(
    task: str, archs: tuple[str | None, str] | None, published: PublishedResults, markers: Markers | None = None
) -> str:
    """``resnet32x4 → resnet8x4<br>T 79.42 [a] · S 72.50 [a]`` for a benchmark task; the archs for any other."""
    if task in TASK_NAMES:
        spec = TASKS[TASK_NAMES.index(task)]
        markers = markers or {}
        teacher, vanilla = published.teacher_top1(task), published.vanilla_top1(task)
        return (
            f"{spec.teacher} \u2192 {spec.student}<br>T {format_number(teacher)}{marker(published, 'teacher', task, markers)}"
            f" \u00b7 S {format_number(vanilla)}{marker(published, 'vanilla', task, markers)}"
        )
    if archs is not None and archs[0] is not None:
        return f"{archs[0]} \u2192 {archs[1]}"
    return task


def not_finished_counts(cell: Cell) -> list[str]:
    """``["2 incomplete", "1 failed"]``: the runs of a cell that give no number, by kind (none left out)."""
    counts = [(cell.n_incomplete, "incomplete"), (cell.n_failed, "failed")]
    return [f"{count} {kind}" for count, kind in counts if count]


def ours_text(cell: Cell) -> str:
    """``75.33 ± 0.20 (n=3)``, ``75.33 ± – (n=1)``, or ``— (2 incomplete, 1 failed)`` when no run finished."""
    if cell.mean is None:
        return f"{NOTHING_FINISHED} ({', '.join(not_finished_counts(cell))})"
    text = f"{format_number(cell.mean)} \u00b1 {format_number(cell.std)} (n={cell.n_complete})"
    for count in not_finished_counts(cell):
        text += f"<br>+{count}"
    if cell.epochs and cell.epochs != (REFERENCE_EPOCHS,):
        unit = "epoch" if cell.epochs == (1,) else "epochs"
        text += f"<br>{', '.join(map(str, cell.epochs))} {unit} (paper: {REFERENCE_EPOCHS})"
    if cell.views and cell.views != (1,):
        text += f"<br>{', '.join(map(str, cell.views))} views per step"
    cost = cost_text(cell)
    return text + (f"<br>{cost}" if cost else "")


def cost_text(cell: Cell) -> str:
    """``cost 2.41 h, 4.82 GPU-h per run``: mean wall time and device-hours of the finished runs, per kind of device.

    Runs on GPUs and on CPUs are shown apart, each with its count (``GPU ... (n=2); CPU ... (n=1)``);
    runs that did not record their device show their wall time only.
    """
    groups = cell.cost_groups
    parts = []
    for group in groups:
        text = format_duration(group.wall_seconds)
        if group.device_hours is not None:
            text += f", {group.device_hours:.3g} {group.unit}"
        text += " per run"
        if group.device_hours is None:
            text += f" ({group.kind})"
        if len(groups) > 1 or group.runs != cell.n_complete:
            text += f" (n={group.runs})"
        parts.append(text)
    return "cost " + "; ".join(parts) if parts else ""


def comparison(cell: Cell | None, method: str, task: str, published: PublishedResults, metric: Metric) -> Comparison | None:
    """Ours vs the published number of (method, task); None where either number is missing."""
    value, protocol = published.top1(method, task), published.protocol(method, task)
    if cell is None or cell.mean is None or value is None or protocol is None:
        return None
    return compare(cell.mean, our_protocol(cell, metric), value, protocol)


def comparison_text(result: Comparison | None) -> str:
    """`` (−0.18)``, `` (−0.18; paper: last or best epoch not stated)`` or `` (no Δ; paper: best epoch)``."""
    if result is None:
        return ""
    if result.delta is None:
        return f" (no \u0394; {result.caveat})"
    return f" ({format_delta(result.delta)}{'; ' + result.caveat if result.caveat else ''})"


def paper_text(
    method: str, task: str, cell: Cell | None, published: PublishedResults, metric: Metric, markers: Markers | None = None
) -> str:
    """``paper 75.51 [a] (−0.18)``; ``paper n/a`` where the source has no number; nothing off the benchmark.

    The letter names the number's protocol (legend under the table); the difference is
    printed as :func:`distill.benchmark.comparison.compare` decides: plain, labelled or withheld.
    """
    if method not in published.rows or task not in TASK_NAMES:
        return ""
    value = published.top1(method, task)
    if value is None:
        return "paper n/a"
    tag = marker(published, method, task, markers or {})
    return f"paper {format_number(value)}{tag}{comparison_text(comparison(cell, method, task, published, metric))}"


def format_cell(
    cell: Cell | None, method: str, task: str, published: PublishedResults, metric: Metric, markers: Markers | None = None
) -> str:
    """A table cell: our result, then the published number on a second line."""
    ours = ours_text(cell) if cell is not None else ""
    paper = paper_text(method, task, cell, published, metric, markers)
    return "<br>".join(part for part in (ours, paper) if part)


def measured_teacher_cell(
    values: Sequence[float], task: str, published: PublishedResults, markers: Markers | None = None
) -> str:
    """The teacher checkpoint's accuracy as the runs measured it, against the published teacher.

    The checkpoint is the published teacher itself, evaluated again: the difference checks the file, not a protocol.
    """
    if not values:
        return ""
    ours = format_number(values[0])
    if len(values) > 1:
        ours += f"\u2013{format_number(values[-1])}"
    paper = published.teacher_top1(task)
    if paper is None:
        return ours
    tag = marker(published, "teacher", task, markers or {})
    if len(values) == 1:
        return f"{ours}<br>paper {format_number(paper)}{tag} ({format_delta(published_delta(values[0], paper))})"
    return f"{ours}<br>paper {format_number(paper)}{tag}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def results_table(
    cells: Mapping[CellKey, Cell],
    published: PublishedResults,
    metric: Metric = "final",
    all_tasks: bool = False,
    teachers_measured: Mapping[str, Sequence[float]] | None = None,
) -> str:
    """The main table: tasks as columns, methods as rows (plus the measured teacher checkpoints, if any).

    Under it, the legend of the letters that tag the published numbers with their protocols.
    """
    tasks = task_order((task for _, task in cells), all_tasks)
    methods = method_order(method for method, _ in cells)
    markers = protocol_markers(shown_protocols(methods, tasks, published))
    archs = {task: (cell.teacher_arch, cell.student_arch) for (_, task), cell in cells.items()}
    header = ["Method", *(header_cell(task, archs.get(task), published, markers) for task in tasks)]
    rows = [
        [method_title(method, published)]
        + [format_cell(cells.get((method, task)), method, task, published, metric, markers) for task in tasks]
        for method in methods
    ]
    measured = measured_row(tasks, published, teachers_measured or {}, markers)
    if measured:
        at = methods.index(TEACHER_METHOD) + 1 if TEACHER_METHOD in methods else 0
        rows.insert(at, measured)
    legend = protocols_legend(markers, methods, tasks, published, metric)
    return markdown_table(header, rows) + (f"\n\n{legend}" if legend else "")


def protocols_legend(
    markers: Markers, methods: Sequence[str], tasks: Sequence[str], published: PublishedResults, metric: Metric
) -> str:
    """What each letter means, which rows use it, and our own protocol, so that no two protocols pass for one."""
    if not markers:
        return ""
    users: dict[ProtocolKey, list[str]] = defaultdict(list)
    for row in ("teacher", "vanilla", *methods):
        for task in tasks:
            protocol = published.protocol(row, task)
            if protocol is not None and published.top1(row, task) is not None and protocol.key() in markers:
                label = published.label(row)
                if label not in users[protocol.key()]:
                    users[protocol.key()].append(label)
    by_key = {protocol.key(): protocol for protocol in shown_protocols(methods, tasks, published)}
    ours = "last epoch (`final_top1`)" if metric == "final" else "best epoch (`best_top1`, selected on the test set)"
    lines = [
        "Protocols of the published numbers (the letter after each; notes in `distill/benchmark/published.yaml`). "
        f"Ours: {ours}; one view and {REFERENCE_EPOCHS} epochs unless a cell says otherwise; the number of finished runs (n) "
        "each cell says. A difference is "
        "printed only where the protocols match; \"no \u0394\" says what the paper did differently.",
        "",
    ]
    for key, letter in markers.items():
        lines.append(f"- [{letter}] {by_key[key].describe()}: {', '.join(users[key])}.")
    return "\n".join(lines)


def measured_row(
    tasks: Sequence[str],
    published: PublishedResults,
    teachers_measured: Mapping[str, Sequence[float]],
    markers: Markers | None = None,
) -> list[str] | None:
    """The "teacher checkpoint (measured)" row, or None when no run of these tasks measured its teacher."""
    if not any(teachers_measured.get(task) for task in tasks):
        return None
    return ["Teacher checkpoint (measured)"] + [
        measured_teacher_cell(teachers_measured.get(task, ()), task, published, markers) for task in tasks
    ]


def delta_summary(cells: Mapping[CellKey, Cell], published: PublishedResults, metric: Metric = "final") -> str:
    """Per method, how far our means are from the paper on average over the tasks whose protocols allow it.

    Only the differences the table prints are averaged; the tasks whose difference is
    withheld are counted with the reason, and a caveat (the paper's epoch unstated) is repeated.
    """
    deltas: dict[str, list[float]] = defaultdict(list)
    caveats: dict[str, set[str]] = defaultdict(set)
    withheld: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for (method, task), cell in cells.items():
        result = comparison(cell, method, task, published, metric)
        if result is None:
            continue
        if result.delta is None:
            withheld[method][result.caveat] += 1
            continue
        deltas[method].append(result.delta)
        if result.caveat:
            caveats[method].add(result.caveat)
    rows = []
    for method in method_order([*deltas, *withheld]):
        values = deltas.get(method, [])
        notes = sorted(caveats.get(method, ()))
        notes += [f"{count} task(s) not compared ({reason})" for reason, count in withheld.get(method, {}).items()]
        rows.append(
            [
                method_title(method, published),
                str(len(values)),
                format_delta(statistics.fmean(values)) if values else NO_VALUE,
                f"{format_delta(min(values))} \u2026 {format_delta(max(values))}" if values else NO_VALUE,
                "; ".join(notes),
            ]
        )
    if not rows:
        return ""
    return markdown_table(["Method", "tasks compared", "mean difference", "range", "protocol"], rows)


def title_block(metric: Metric, published: PublishedResults) -> str:
    """The heading and legend: the metric in the table, how to read a cell, where the paper numbers come from."""
    if metric == "final":
        what = (
            "**Metric: last-epoch top-1 (the CRD paper's protocol)**: test top-1 (%) after the last "
            "training epoch (`final_top1` of each run's summary.json)."
        )
    else:
        what = (
            "**Metric: BEST-epoch top-1, selected on the test set \u2014 not comparable to last-epoch numbers.** "
            "The best epoch is picked by looking at test accuracy, which flatters every run. A difference is "
            "printed only beside published numbers that are best-epoch too (or do not say, labelled so); "
            "the CRD paper's are last-epoch and are shown for reference, without one."
        )
    legend = (
        "Cells: mean \u00b1 sample standard deviation (n\u22121) over the finished runs "
        f"(n = how many; {NO_VALUE} when n=1), then the published number with its protocol's letter "
        "(legend under the table) and, in brackets, ours \u2212 paper where the protocols match. "
        "Runs without summary.json are incomplete: counted (`+k incomplete`), never averaged; runs an error "
        "ended are counted apart (`+k failed`) and listed under Failed runs. "
        "Column headers: teacher \u2192 student, with the published accuracies of the teacher (T) and "
        "of the student trained alone (S). `cost`: mean wall time of the finished runs and device-hours "
        "per run (wall \u00d7 processes / 3600), GPU-h and CPU-h apart, never added together."
    )
    return "\n\n".join(["# CIFAR-100 benchmark report", what, legend, sources_legend(published)])


def sources_legend(published: PublishedResults) -> str:
    """Which published rows come from which source (second-hand and missing numbers said so)."""
    by_source: dict[str, list[str]] = defaultdict(list)
    for key, row in published.rows.items():
        by_source[row.source].append(key)
    lines = [f"Published numbers: {published.metric}", ""]
    for source_key, keys in by_source.items():
        source = published.sources[source_key]
        labels = ", ".join(published.label(key) for key in keys)
        text = f"- {labels}: {source.title}, {source.citation()}"
        if source.copied_from:
            text += f"; second-hand, copied from the READMEs of {', '.join(source.copied_from)}"
        if all(value is None for key in keys for value in published.rows[key].results.values()):
            text += "; no numbers available"
        lines.append(text + ".")
    lines.append("- Per-row notes: `distill/benchmark/published.yaml`.")
    return "\n".join(lines)


def run_label(record: RunRecord) -> str:
    """``method / task, seed N`` for the lists of incomplete and failed runs."""
    return f"{record.method} / {record.task}, seed {NO_VALUE if record.seed is None else record.seed}"


def progress(record: RunRecord) -> str:
    """``done/planned`` epochs (``?`` when the plan is unknown)."""
    return f"{record.epochs_done}/{record.epochs_planned if record.epochs_planned is not None else '?'}"


def incomplete_section(records: Iterable[RunRecord]) -> str:
    """A list of the runs that have not finished (and did not fail), with their progress and folder."""
    lines = []
    for record in records:
        if record.complete or record.failed:
            continue
        spent = f", {format_duration(record.wall_seconds)} so far" if record.wall_seconds is not None else ""
        lines.append(f"- {run_label(record)}: epoch {progress(record)}{spent} \u2014 `{record.path}`")
    if not lines:
        return ""
    return "## Incomplete runs (not averaged)\n\n" + "\n".join(lines)


def one_line(message: str) -> str:
    """A message's non-empty lines joined with `` | ``, so that it fits one list item."""
    return " | ".join(line.strip() for line in message.splitlines() if line.strip())


def failed_section(records: Iterable[RunRecord]) -> str:
    """A list of the runs that an error ended: which run, how far it got, its folder and the error."""
    lines = []
    for record in records:
        outcome = record.outcome
        if outcome is None or not record.failed:
            continue
        message = one_line(outcome.message) or "(no message recorded)"
        if record.recipe_missing:
            lines.append(f"- `{record.path}` ({outcome.status}, before it wrote its recipe): {message}")
            continue
        where = f"{outcome.status} after epoch {progress(record)}"
        lines.append(f"- {run_label(record)}: {where} \u2014 `{record.path}`: {message}")
    if not lines:
        return ""
    return "## Failed runs (an error ended them; not averaged)\n\n" + "\n".join(lines)


def figures_section(figures: Sequence[str]) -> str:
    """Markdown image links to the curves (paths relative to the report)."""
    if not figures:
        return ""
    lines = [f"![{Path(path).stem}]({path})" for path in figures]
    intro = "## Test top-1 per epoch\n\nOne line per run, coloured by method; dashed lines are incomplete runs."
    return "\n\n".join([intro, *lines])


def render_markdown(
    records: Sequence[RunRecord],
    published: PublishedResults,
    metric: Metric = "final",
    all_tasks: bool = False,
    figures: Sequence[str] = (),
) -> str:
    """The whole report: legend, results table, differences to the paper, incomplete and failed runs, figures."""
    cells = aggregate(records, metric)
    parts = [
        title_block(metric, published),
        results_table(cells, published, metric, all_tasks, measured_teachers(records)),
    ]
    summary = delta_summary(cells, published, metric)
    if summary:
        parts.append("## Difference to the paper, per method (ours \u2212 paper, same protocol only)\n\n" + summary)
    parts += [incomplete_section(records), failed_section(records), figures_section(figures)]
    return "\n\n".join(part for part in parts if part) + "\n"


def _csv_number(value: float | None, digits: int) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def csv_rows(
    cells: Mapping[CellKey, Cell], published: PublishedResults, metric: Metric = "final"
) -> list[dict[str, str]]:
    """One row per (method, task) in table order, with both protocols; ``delta`` only where :func:`compare` gives one."""
    rows = []
    tasks = task_order(task for _, task in cells)
    for method in method_order(method for method, _ in cells):
        for task in tasks:
            cell = cells.get((method, task))
            if cell is None:
                continue
            paper = published.top1(method, task)
            source = published.source(method)
            protocol = published.protocol(method, task)
            result = comparison(cell, method, task, published, metric)
            ours = our_protocol(cell, metric)
            rows.append(
                {
                    "method": method,
                    "task": task,
                    "teacher": cell.teacher_arch or "",
                    "student": cell.student_arch,
                    "metric": metric,
                    "n_complete": str(cell.n_complete),
                    "n_incomplete": str(cell.n_incomplete),
                    "n_failed": str(cell.n_failed),
                    "seeds": " ".join("?" if seed is None else str(seed) for seed in cell.seeds),
                    "mean": _csv_number(cell.mean, 4),
                    "std": _csv_number(cell.std, 4),
                    "epoch": ours.epoch,
                    "epochs": " ".join(map(str, ours.epochs)),
                    "views": " ".join(map(str, ours.views)),
                    "published": _csv_number(paper, 2),
                    "delta": _csv_number(result.delta if result is not None else None, 2),
                    "comparison": result.kind if result is not None else "",
                    "comparison_note": result.caveat if result is not None else "",
                    **published_protocol_columns(protocol),
                    "published_source": f"{source.key}: {source.citation()}" if source is not None else "",
                    **cost_columns(cell),
                }
            )
    return rows


def cost_columns(cell: Cell) -> dict[str, str]:
    """The ``gpu_*`` and ``cpu_*`` columns of a CSV row (empty for a kind no finished run used)."""
    groups = {group.kind: group for group in cell.cost_groups}
    columns = {}
    for kind in (GPU, CPU):
        group = groups.get(kind)
        prefix = kind.lower()
        columns[f"{prefix}_runs"] = str(group.runs) if group else ""
        columns[f"{prefix}_wall_s_mean"] = _csv_number(group.wall_seconds if group else None, 1)
        columns[f"{prefix}_hours_per_run"] = _csv_number(group.device_hours if group else None, 4)
    return columns


def published_protocol_columns(protocol: Protocol | None) -> dict[str, str]:
    """The ``published_*`` protocol columns of a CSV row (empty for a method without a published row)."""
    if protocol is None:
        return {"published_epoch": "", "published_epochs": "", "published_views": "", "published_runs": "", "published_protocol": ""}
    return {
        "published_epoch": protocol.epoch,
        "published_epochs": str(protocol.epochs),
        "published_views": str(protocol.views),
        "published_runs": "" if protocol.runs is None else str(protocol.runs),
        "published_protocol": protocol.describe(),
    }


def write_csv(path: Path, cells: Mapping[CellKey, Cell], published: PublishedResults, metric: Metric = "final") -> Path:
    """Write :func:`csv_rows` as a CSV file with a header row (long format, one row per method and task)."""
    with Path(path).open("w", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(csv_rows(cells, published, metric))
    return Path(path)
