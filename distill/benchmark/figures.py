"""Learning curves as PNG files: test top-1 per epoch, one figure per task.

Each run is drawn as its own line, coloured by method, so that the seeds of a
method share a colour and their spread stays visible (a per-epoch mean would jump
where an incomplete run stops). Incomplete runs are dashed.

matplotlib is optional (the ``plots`` extra) and imported here only, when figures
are asked for; it draws with the Agg backend, so no display is needed.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.benchmark.report import method_order, task_order
from distill.benchmark.runs import RunRecord

INSTALL_HINT = "figures skipped: install matplotlib (pip install 'distill[plots]')"


class FiguresUnavailable(Exception):
    """matplotlib is not installed; the message says how to install it."""


@dataclass(frozen=True)
class Matplotlib:
    """The few matplotlib pieces the figures need (no pyplot: no global state, no display)."""

    Figure: Any
    FigureCanvasAgg: Any
    Line2D: Any
    colormaps: Any
    MaxNLocator: Any


def load_matplotlib() -> Matplotlib:
    """matplotlib's Agg pieces, imported lazily; :class:`FiguresUnavailable` when it is not installed."""
    try:
        from matplotlib import colormaps
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise FiguresUnavailable(INSTALL_HINT) from None
    return Matplotlib(Figure, FigureCanvasAgg, Line2D, colormaps, MaxNLocator)


def figure_filename(task: str) -> str:
    """``<task>.png``, with characters that do not belong in a file name replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", task) + ".png"


def runs_by_task(records: Iterable[RunRecord]) -> dict[str, list[RunRecord]]:
    """The runs with at least one finished epoch, grouped by task, tasks in report order."""
    groups: dict[str, list[RunRecord]] = defaultdict(list)
    for record in records:
        if record.curve:
            groups[record.task].append(record)
    return {task: groups[task] for task in task_order(groups)}


def plot_task(task: str, runs: Sequence[RunRecord], path: Path) -> Path:
    """Draw one task's curves and save them as a PNG at ``path``."""
    mpl = load_matplotlib()
    figure = mpl.Figure(figsize=(7, 4.5), dpi=100)
    mpl.FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    methods = method_order(run.method for run in runs)
    colours = mpl.colormaps["tab10" if len(methods) <= 10 else "tab20"]
    colour = {method: colours(index % colours.N) for index, method in enumerate(methods)}
    for run in sorted(runs, key=lambda r: (methods.index(r.method), r.seed if r.seed is not None else -1)):
        epochs, top1 = zip(*run.curve)
        axes.plot(epochs, top1, color=colour[run.method], linestyle="-" if run.complete else "--", linewidth=1.2)
    handles = [mpl.Line2D([], [], color=colour[method]) for method in methods]
    labels = list(methods)
    if any(not run.complete for run in runs):
        handles.append(mpl.Line2D([], [], color="grey", linestyle="--"))
        labels.append("incomplete run")
    axes.legend(handles, labels, fontsize="small", loc="lower right")
    axes.set_title(task)
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(mpl.MaxNLocator(integer=True))
    axes.set_ylabel("test top-1 (%)")
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


def write_figures(records: Iterable[RunRecord], out_dir: Path) -> list[Path]:
    """One ``<out_dir>/<task>.png`` per task with curves; raises :class:`FiguresUnavailable` without matplotlib."""
    load_matplotlib()
    groups = runs_by_task(records)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [plot_task(task, runs, out_dir / figure_filename(task)) for task, runs in groups.items()]
