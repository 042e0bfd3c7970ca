"""``distill sweep`` then ``distill report``: a 2 tasks × 2 methods × 2 seeds grid on a tiny fake CIFAR-100.

Checks the grid, that every run is a normal run directory, that a re-run skips what
finished and resumes what did not (including a sweep really killed mid-grid), and that
the report's cells are the mean and standard deviation of the runs' last-epoch top-1.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distill.benchmark.sweep import parse_seeds, parse_tasks, plan
from distill.cli.main import main
from distill.errors import DistillError
from distill.recipe.manifest import MANIFEST_ENV

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes" / "cifar100"
TASK_NAMES = ["resnet56-resnet20", "resnet110-resnet20"]
METHODS = ["kd", "crd"]
SEEDS = [0, 1]


def overrides(data_root: Path) -> list[str]:
    options = [
        f"data.root={data_root}", "data.verify=false", "data.download=false", "data.num_workers=0",
        "data.batch_size=50", "schedule.epochs=1", "log_every=1",
    ]
    return [part for option in options for part in ("-o", option)]


def sweep_arguments(output: Path, data_root: Path, seeds: str = "0,1") -> list[str]:
    return [
        "sweep", "--tasks", ",".join(TASK_NAMES), "--methods", ",".join(METHODS), "--seeds", seeds,
        "--output", str(output), "--no-tensorboard", *overrides(data_root),
    ]


@pytest.fixture(scope="module")
def swept(tiny_cifar, random_teachers, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(MANIFEST_ENV, str(random_teachers))
        assert main(sweep_arguments(output, tiny_cifar)) == 0
    return output


def run_dirs(output: Path) -> dict[tuple[str, str, int], Path]:
    return {(m, t, s): output / m / t / f"seed{s}" for m in METHODS for t in TASK_NAMES for s in SEEDS}


def test_the_grid_is_tasks_by_methods_by_seeds(tmp_path):
    cells, absent = plan(RECIPES, ["kd", "fsp"], ["resnet56-resnet20", "vgg13-MobileNetV2"], [0, 1, 2], tmp_path)
    assert [(c.method, c.task, c.seed) for c in cells] == [
        ("kd", "resnet56-resnet20", 0), ("kd", "resnet56-resnet20", 1), ("kd", "resnet56-resnet20", 2),
        ("kd", "vgg13-MobileNetV2", 0), ("kd", "vgg13-MobileNetV2", 1), ("kd", "vgg13-MobileNetV2", 2),
        ("fsp", "resnet56-resnet20", 0), ("fsp", "resnet56-resnet20", 1), ("fsp", "resnet56-resnet20", 2),
    ]
    assert absent == [("fsp", "vgg13-MobileNetV2")]  # FSP does not apply across architectures
    assert cells[0].run_dir == tmp_path / "kd" / "resnet56-resnet20" / "seed0"
    assert cells[0].recipe == RECIPES / "kd" / "resnet56-resnet20.yaml"


def test_task_method_and_seed_arguments():
    assert len(parse_tasks("all")) == 13
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4] and parse_seeds("2,0,2") == [2, 0]
    with pytest.raises(DistillError, match="Did you mean 'resnet56-resnet20'"):
        parse_tasks("resnet56-resnet2O")
    with pytest.raises(DistillError, match="--seeds"):
        parse_seeds("a,b")


@pytest.mark.e2e
def test_bad_method_is_a_clear_error(capsys, tmp_path):
    assert main(["sweep", "--methods", "kd,crdd", "--output", str(tmp_path), "--dry-run"]) == 2
    message = capsys.readouterr().err
    assert "crdd" in message and "Did you mean 'crd'" in message


@pytest.mark.e2e
def test_dry_run_prints_the_grid_and_runs_nothing(tiny_cifar, random_teachers, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(MANIFEST_ENV, str(random_teachers))
    output = tmp_path / "sweep"
    arguments = ["sweep", "--tasks", "all", "--methods", "kd,crd,ml_cpc", "--seeds", "0,1,2", "--output", str(output)]
    assert main([*arguments, *overrides(tiny_cifar), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "117 runs: 0 done, 0 unfinished, 0 failed, 117 pending; 0 with problems" in out  # 13 tasks × 3 methods × 3 seeds
    assert "ml_cpc wrn_40_2-ShuffleV1 seed 2" in out and "problem:" not in out
    assert not output.exists()


@pytest.mark.slow
@pytest.mark.e2e
def test_every_run_of_the_sweep_is_a_finished_run_directory(swept):
    for (method, task, seed), run_dir in run_dirs(swept).items():
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["epochs"] == 1
        recipe_text = (run_dir / "recipe.yaml").read_text()
        assert f"name: cifar100/{method}/{task}" in recipe_text and f"seed: {seed}" in recipe_text
        assert (run_dir / "checkpoints" / "last.pt").is_file()


@pytest.mark.slow
@pytest.mark.e2e
def test_report_cells_are_the_runs_last_epoch_statistics(swept, tmp_path, capsys):
    report_dir = tmp_path / "report"
    assert main(["report", str(swept), "--output", str(report_dir), "--no-figures"]) == 0
    rows = {(row["method"], row["task"]): row for row in csv.DictReader((report_dir / "report.csv").open())}
    for method in METHODS:
        for task in TASK_NAMES:
            finals = [
                json.loads((swept / method / task / f"seed{seed}" / "summary.json").read_text())["final_top1"]
                for seed in SEEDS
            ]
            row = rows[(method, task)]
            assert int(row["n_complete"]) == 2 and int(row["n_incomplete"]) == 0
            assert float(row["mean"]) == pytest.approx(statistics.mean(finals), abs=1e-4)  # the CSV keeps 4 decimals
            assert float(row["std"]) == pytest.approx(statistics.stdev(finals), abs=1e-4)
    markdown = (report_dir / "report.md").read_text()
    assert "last-epoch" in markdown and "resnet56 → resnet20" in markdown
    assert "71.16" in markdown  # the published CRD number of resnet56 → resnet20 sits beside ours


@pytest.mark.slow
@pytest.mark.e2e
def test_rerun_skips_finished_runs_and_resumes_unfinished_ones(swept, tiny_cifar, random_teachers, monkeypatch, capsys):
    monkeypatch.setenv(MANIFEST_ENV, str(random_teachers))
    dirs = run_dirs(swept)
    unfinished = dirs[("crd", "resnet110-resnet20", 1)]
    (unfinished / "summary.json").unlink()  # as if the run had been killed after its last checkpoint
    stamps = {key: (path / "summary.json").stat().st_mtime_ns for key, path in dirs.items() if path != unfinished}
    assert main(sweep_arguments(swept, tiny_cifar)) == 0
    out = capsys.readouterr().out
    assert "8 runs, 7 already finished, 1 to run" in out and f"resuming unfinished run {unfinished} from its last checkpoint" in out
    assert (unfinished / "summary.json").is_file()
    assert stamps == {key: (dirs[key] / "summary.json").stat().st_mtime_ns for key in stamps}


@pytest.mark.slow
@pytest.mark.e2e
def test_a_sweep_killed_mid_grid_resumes_where_it_stopped(tiny_cifar, random_teachers, tmp_path, monkeypatch):
    output = tmp_path / "sweep"
    arguments = [
        "sweep", "--tasks", "resnet56-resnet20", "--methods", "kd", "--seeds", "0,1", "--output", str(output),
        "--no-tensorboard", *overrides(tiny_cifar),
    ]
    env = {**os.environ, MANIFEST_ENV: str(random_teachers), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "distill.cli.main", *arguments], env=env, cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first, second = output / "kd" / "resnet56-resnet20" / "seed0", output / "kd" / "resnet56-resnet20" / "seed1"
    deadline = time.monotonic() + 240
    while not (second / "recipe.yaml").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert (first / "summary.json").is_file() and not (second / "summary.json").exists()
    finished_at = (first / "summary.json").stat().st_mtime_ns
    monkeypatch.setenv(MANIFEST_ENV, str(random_teachers))
    assert main(arguments) == 0
    assert (second / "summary.json").is_file()
    assert (first / "summary.json").stat().st_mtime_ns == finished_at


@pytest.mark.e2e
def test_a_failing_run_is_reported_and_the_sweep_goes_on(tiny_cifar, tmp_path, monkeypatch, capsys):
    missing = tmp_path / "no-teachers.yaml"
    monkeypatch.setenv(MANIFEST_ENV, str(missing))
    code = main(["sweep", "--tasks", "resnet56-resnet20", "--methods", "vanilla,kd", "--output", str(tmp_path / "s"),
                 "--no-tensorboard", *overrides(tiny_cifar)])
    out = capsys.readouterr().out
    assert code == 1
    assert "1 ran, 0 skipped (already finished), 1 failed" in out
    assert "failed: kd resnet56-resnet20 seed 0" in out and str(missing) in out


@pytest.mark.e2e
def test_a_stop_signal_ends_the_sweep_instead_of_moving_on(tiny_cifar, tmp_path, monkeypatch, capsys):
    """SIGTERM stops the cell being trained (it checkpointed); the sweep must stop too, not start the next cell."""
    from distill.benchmark.launchers import local as local_launcher
    from distill.engine.signals import EXIT_STOPPED, TrainingStopped

    started = []

    def stopped_cell(cell, overrides, tensorboard):
        started.append(cell.label)
        raise TrainingStopped(f"stopped by SIGTERM in epoch 1 after batch 2; continue with: distill train --resume {cell.run_dir}")

    monkeypatch.setattr(local_launcher, "run_in_process", stopped_cell)
    code = main(["sweep", "--tasks", "resnet56-resnet20", "--methods", "vanilla", "--seeds", "0,1",
                 "--output", str(tmp_path / "s"), "--no-tensorboard", *overrides(tiny_cifar)])
    assert code == EXIT_STOPPED and len(started) == 1
    assert "stopped by SIGTERM" in capsys.readouterr().err


def test_the_parallel_mode_hands_out_devices_round_robin_logs_per_cell_and_stops_on_failure(tmp_path, monkeypatch):
    """``--jobs N``: each cell a ``distill train`` process (stubbed here), its device and log file by grid order.

    Every cell but seed 1 waits until the sweep has reported seed 1's failure, so the
    order of events is fixed whatever the thread scheduling.
    """
    import threading

    from distill.benchmark import sweep as sweep_module
    from distill.benchmark.launchers import local as local_launcher

    cells = [
        sweep_module.SweepCell("kd", "resnet56-resnet20", seed, tmp_path / "recipe.yaml", tmp_path / "runs" / f"seed{seed}")
        for seed in range(5)
    ]
    started: list[tuple[int, str, Path]] = []
    failure_reported = threading.Event()

    def fake_train(cell, overrides, tensorboard, log_file, env):
        started.append((cell.seed, env.get("CUDA_VISIBLE_DEVICES"), log_file))
        if cell.seed == 1:
            raise DistillError("exit status 2; see the log")
        assert failure_reported.wait(timeout=60)

    def echo(line: str) -> None:
        lines.append(line)
        if line.startswith("FAILED"):
            failure_reported.set()

    monkeypatch.setattr(local_launcher, "run_subprocess", fake_train)
    lines: list[str] = []
    outcome = local_launcher.run_sweep(cells, jobs=2, devices=["0", "1"], log_dir=tmp_path / "logs", echo=echo)
    assert sorted(seed for seed, _, _ in started) == [0, 1, 2, 3, 4]
    assert {seed: device for seed, device, _ in started} == {0: "0", 1: "1", 2: "0", 3: "1", 4: "0"}
    assert {seed: log for seed, _, log in started}[3] == tmp_path / "logs/kd/resnet56-resnet20/seed3.log"
    assert [cell.seed for cell, _ in outcome.failed] == [1] and sorted(c.seed for c in outcome.done) == [0, 2, 3, 4]
    assert "FAILED kd resnet56-resnet20 seed 1: exit status 2; see the log" in lines

    started.clear()
    failure_reported.clear()
    outcome = local_launcher.run_sweep(cells, jobs=2, fail_fast=True, log_dir=tmp_path / "logs", echo=echo)
    assert sorted(seed for seed, _, _ in started) == [0, 1]  # no new cell starts after a failure
    assert [cell.seed for cell, _ in outcome.failed] == [1] and [c.seed for c in outcome.done] == [0]
