"""The bench's figure: one panel per critic type, the true-MI staircase, log n, one curve per estimator.

Laid out like the ML-CPC paper's MI figures (Song & Ermon, NeurIPS 2020): the raw
per-batch estimates faint, their moving average solid, the true MI as a black
staircase and log n (the CPC ceiling) as a dashed horizontal line.

matplotlib is optional (the ``plots`` extra) and imported only here, when the
figure is drawn, through :func:`distill.benchmark.figures.load_matplotlib`
(the Agg backend: no display needed). Without it that raises
:class:`~distill.benchmark.figures.FiguresUnavailable`.
"""

from __future__ import annotations

import math
from pathlib import Path

from distill.benchmark.figures import FiguresUnavailable, load_matplotlib
from distill.mi_bench.bench import BenchResult

__all__ = ["FIGURE_NAME", "FiguresUnavailable", "write_figure"]

FIGURE_NAME = "mi_bench.png"


def _y_limits(levels: list[float]) -> tuple[float, float]:
    """From just below 0 to 3 nats above the top stair: room for overshooting estimators, none for NWJ's dips."""
    return -1.0, max(levels) + 3.0


def write_figure(result: BenchResult, out_dir: Path) -> Path:
    """Draw ``result`` to ``out_dir/mi_bench.png`` and return the path.

    Raises:
        FiguresUnavailable: matplotlib is not installed (the message says how to install it).
    """
    mpl = load_matplotlib()
    critics = list(dict.fromkeys(curve.critic for curve in result.curves))
    estimators = list(dict.fromkeys(curve.estimator.name for curve in result.curves))
    colours = mpl.colormaps["tab10" if len(estimators) <= 10 else "tab20"]
    colour = {name: colours(index % colours.N) for index, name in enumerate(estimators)}
    steps = list(range(len(result.true_mi)))
    log_n = math.log(result.config.batch_size)

    figure = mpl.Figure(figsize=(6.0 * len(critics) + 2.2, 4.6), dpi=110)
    mpl.FigureCanvasAgg(figure)
    axes_row = figure.subplots(1, len(critics), sharey=True, squeeze=False)[0]
    for axes, critic in zip(axes_row, critics):
        for curve in (c for c in result.curves if c.critic == critic):
            axes.plot(steps, curve.estimates, color=colour[curve.estimator.name], alpha=0.15, linewidth=0.6)
            axes.plot(steps, curve.smoothed, color=colour[curve.estimator.name], linewidth=1.5)
        axes.step(steps, result.true_mi, where="post", color="black", linewidth=1.5)
        axes.axhline(log_n, color="grey", linestyle="--", linewidth=1.0)
        axes.set_title(f"{critic} critic")
        axes.set_xlabel("training step")
        axes.set_ylim(*_y_limits(result.true_mi))
        axes.grid(True, alpha=0.3)
    axes_row[0].set_ylabel("MI estimate (nats)")

    n = result.config.batch_size
    labels = {
        curve.estimator.name: curve.estimator.label + ("" if curve.estimator.is_lower_bound(n, n) else " (no bound)")
        for curve in result.curves
    }
    handles = [mpl.Line2D([], [], color=colour[name]) for name in estimators]
    handles += [mpl.Line2D([], [], color="black"), mpl.Line2D([], [], color="grey", linestyle="--")]
    names = [labels[name] for name in estimators] + ["true MI", f"log n = {log_n:.2f} (n = {n})"]
    figure.legend(handles, names, loc="center right", fontsize="small", frameon=False)
    cubic = ", cubic" if result.config.cubic else ""
    figure.suptitle(
        f"MI estimates on correlated Gaussians (d = {result.config.dim}{cubic}, batch {result.config.batch_size}, "
        f"{result.config.steps} steps; smoothed: EMA span {result.config.ema_span})",
        fontsize="medium",
    )
    figure.tight_layout(rect=(0, 0, 1 - 2.2 / (6.0 * len(critics) + 2.2), 1))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / FIGURE_NAME
    figure.savefig(path, format="png")
    return path
