"""``distill report RUNS...``: benchmark tables (Markdown and CSV) and learning curves from run directories."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from distill.benchmark.published import load_published
from distill.benchmark.report import METRICS, aggregate, render_markdown, write_csv
from distill.benchmark.runs import RunRecord, find_runs

DEFAULT_OUTPUT = "report"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="tables of results vs. the published numbers, from run directories",
        description=(
            "Collect the runs under RUNS (searched recursively) and write DIR/report.md, DIR/report.csv "
            "and DIR/figures/<task>.png: one column per CRD task, one row per method, each cell our "
            "mean ± std over seeds beside the published number, tagged with its protocol."
        ),
    )
    parser.add_argument("runs", nargs="+", metavar="RUNS", help="run directories, or folders that contain them")
    parser.add_argument("--output", "-o", default=DEFAULT_OUTPUT, metavar="DIR", help="output folder (default: report/)")
    parser.add_argument(
        "--metric",
        choices=METRICS,
        default="final",
        help=(
            "final: last-epoch top-1, the CRD paper's protocol (default); best: best epoch, chosen on the test set. "
            "Either is compared only with published numbers of the same protocol"
        ),
    )
    parser.add_argument("--all-tasks", action="store_true", help="a column for each of the 13 tasks, even without runs")
    parser.add_argument("--no-figures", action="store_true", help="do not draw the learning curves")
    parser.set_defaults(run=run)


def draw_figures(records: Sequence[RunRecord], figures_dir: Path, report_dir: Path) -> list[str]:
    """The figures' paths relative to the report; an install hint (and none) when matplotlib is missing."""
    from distill.benchmark.figures import FiguresUnavailable, write_figures

    try:
        paths = write_figures(records, figures_dir)
    except FiguresUnavailable as error:
        print(error)
        return []
    return [path.relative_to(report_dir).as_posix() for path in paths]


def run(args: argparse.Namespace) -> int:
    records = find_runs(args.runs)
    published = load_published()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    plotted = [record for record in records if not record.failed]  # drawn dashed, a failed run would pass for an unfinished one
    figures = [] if args.no_figures else draw_figures(plotted, out / "figures", out)
    markdown = render_markdown(records, published, args.metric, args.all_tasks, figures)
    (out / "report.md").write_text(markdown, encoding="utf-8")
    write_csv(out / "report.csv", aggregate(records, args.metric), published, args.metric)
    print(markdown)
    complete = sum(record.complete for record in records)
    failed = sum(record.failed for record in records)
    print(f"{len(records)} run(s), {complete} complete, {len(records) - complete - failed} incomplete, {failed} failed")
    for path in [out / "report.md", out / "report.csv", *(out / figure for figure in figures)]:
        print(f"wrote {path}")
    return 0
