"""``distill sweep`` checks before it trains: run directories with other settings, and ``--dry-run``.

A finished cell run with other settings must be reported, never counted as done; a dry
run must find every problem a real start would meet (recipe and overrides, teacher
checkpoints, the dataset, the settings of existing run directories). The run
directories here are written by hand, as ``distill train`` leaves them; nothing trains.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from distill.benchmark.launchers import local as local_launcher
from distill.cli.main import main
from distill.files.rundir import write_outcome
from distill.recipe.load import load_recipe
from distill.recipe.manifest import MANIFEST_ENV
from distill.recipe.serialize import recipe_to_yaml

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes" / "cifar100"
TASK = "resnet56-resnet20"


@pytest.fixture()
def teachers(random_teachers, monkeypatch) -> Path:
    monkeypatch.setenv(MANIFEST_ENV, str(random_teachers))
    return random_teachers


def settings(data_root: Path, epochs: int = 1) -> list[str]:
    return [f"data.root={data_root}", "data.verify=false", "data.download=false", f"schedule.epochs={epochs}"]


def options(overrides: list[str]) -> list[str]:
    return [part for override in overrides for part in ("-o", override)]


def sweep(output: Path, overrides: list[str], methods: str = "kd", seeds: str = "0", *extra: str) -> int:
    return main(["sweep", "--tasks", TASK, "--methods", methods, "--seeds", seeds, "--output", str(output),
                 "--no-tensorboard", *options(overrides), *extra])


def write_cell(output: Path, method: str, seed: int, overrides: list[str], finished: bool = True) -> Path:
    """A cell's run directory as ``distill train`` leaves it, run with ``overrides``: recipe.yaml, metrics, summary."""
    run_dir = output / method / TASK / f"seed{seed}"
    (run_dir / "checkpoints").mkdir(parents=True)
    recipe = load_recipe(RECIPES / method / f"{TASK}.yaml", [*overrides, f"seed={seed}"])
    if recipe.teacher is not None:  # the trainer records the file it used
        recipe.teacher.checkpoint = "/somewhere/ckpt_epoch_240.pth"
    (run_dir / "recipe.yaml").write_text(recipe_to_yaml(recipe), encoding="utf-8")
    (run_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test/top1": 1.0}) + "\n", encoding="utf-8")
    if finished:
        summary = {"final_top1": 1.0, "final_top5": 5.0, "best_top1": 1.0, "best_epoch": 1, "epochs": 1}
        (run_dir / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
        write_outcome(run_dir, "finished")
    return run_dir


@pytest.fixture()
def trained(monkeypatch) -> list[str]:
    """Replaces training: records the cells the sweep would have trained."""
    cells: list[str] = []
    monkeypatch.setattr(local_launcher, "run_in_process", lambda cell, overrides, tensorboard: cells.append(cell.label))
    return cells


# --- a finished cell with other settings -----------------------------------------------------------


@pytest.mark.e2e
def test_a_finished_cell_with_other_settings_is_reported_not_counted_as_done(tiny_cifar, teachers, tmp_path, trained, capsys):
    output = tmp_path / "sweep"
    run_dir = write_cell(output, "kd", 0, settings(tiny_cifar, epochs=2))
    assert sweep(output, settings(tiny_cifar, epochs=3)) == 1
    out = capsys.readouterr().out
    assert trained == []  # not run: its directory holds another experiment
    assert "0 ran, 0 skipped (already finished), 0 failed, 1 not run (other settings)" in out
    assert f"not run: kd {TASK} seed 0 ({run_dir}): finished with other settings: schedule.epochs: run has 2, now 3" in out
    assert "another --output" in out and "delete" in out


@pytest.mark.e2e
def test_a_finished_cell_with_the_same_settings_is_skipped(tiny_cifar, teachers, tmp_path, trained, capsys, another_root):
    output = tmp_path / "sweep"
    write_cell(output, "kd", 0, settings(tiny_cifar))
    # data.root and teacher.checkpoint moved: they do not change the result.
    assert sweep(output, settings(another_root)) == 0
    out = capsys.readouterr().out
    assert trained == [] and "1 runs, 1 already finished, 0 to run" in out
    assert "0 ran, 1 skipped (already finished), 0 failed, 0 not run" in out


@pytest.fixture()
def another_root(tiny_cifar, tmp_path) -> Path:
    copy = tmp_path / "moved_data"
    shutil.copytree(tiny_cifar, copy)
    return copy


@pytest.mark.e2e
def test_an_unfinished_cell_with_other_settings_is_not_resumed(tiny_cifar, teachers, tmp_path, trained, capsys):
    output = tmp_path / "sweep"
    run_dir = write_cell(output, "kd", 0, settings(tiny_cifar, epochs=2), finished=False)
    assert sweep(output, [*settings(tiny_cifar, epochs=2), "optimizer.lr=0.1"], "kd,vanilla") == 1
    out = capsys.readouterr().out
    assert trained == [f"vanilla {TASK} seed 0"]
    assert f"not run: kd {TASK} seed 0 ({run_dir}): started with other settings: optimizer.lr: run has 0.05, now 0.1" in out


# --- failed cells in the summary ---------------------------------------------------------------------


@pytest.mark.e2e
def test_the_summary_gives_the_last_line_of_a_failed_cells_error(tiny_cifar, teachers, tmp_path, monkeypatch, capsys):
    def failing(cell, overrides, tensorboard):
        raise RuntimeError("Traceback (most recent call last):\n  File x, line 1\nValueError: loss went wrong")

    monkeypatch.setattr(local_launcher, "run_in_process", failing)
    output = tmp_path / "sweep"
    assert sweep(output, settings(tiny_cifar), "vanilla") == 1
    lines = capsys.readouterr().out.splitlines()
    assert f"  failed: vanilla {TASK} seed 0 ({output / 'vanilla' / TASK / 'seed0'}): ValueError: loss went wrong" in lines


def test_last_line():
    from distill.benchmark.sweep import last_line

    assert last_line("error: a\n  details\nwhat to do\n\n") == "what to do"
    assert last_line("") == ""


# --- --dry-run -----------------------------------------------------------------------------------------


def dry_run(capsys, output: Path, overrides: list[str], methods: str = "kd,vanilla", seeds: str = "0") -> tuple[int, str]:
    code = sweep(output, overrides, methods, seeds, "--dry-run")
    return code, capsys.readouterr().out


def problems_of(out: str, label: str) -> list[str]:
    """The problem lines printed under the run ``label``."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(label + " "))
    found = []
    for line in lines[start + 1:]:
        if not line.startswith("    "):
            break
        if line.startswith("    problem: "):
            found.append(line.removeprefix("    problem: "))
    return found


@pytest.mark.e2e
def test_dry_run_without_problems_exits_0_and_writes_nothing(tiny_cifar, teachers, tmp_path, capsys):
    output = tmp_path / "sweep"
    code, out = dry_run(capsys, output, settings(tiny_cifar), seeds="0,1")
    assert code == 0, out
    assert "4 runs: 0 done, 0 unfinished, 0 failed, 4 pending; 0 with problems" in out
    assert not output.exists()


@pytest.mark.e2e
def test_dry_run_rejects_a_bad_override(tiny_cifar, teachers, tmp_path, capsys):
    code, out = dry_run(capsys, tmp_path / "sweep", [*settings(tiny_cifar), "schedule.epochs=abc"])
    assert code == 2
    for label in (f"kd {TASK} seed 0", f"vanilla {TASK} seed 0"):
        (problem,) = problems_of(out, label)
        assert "schedule.epochs" in problem and "'abc'" in problem
    assert "2 of 2 runs have problems" in out


@pytest.mark.e2e
def test_dry_run_finds_a_missing_teacher_checkpoint(tiny_cifar, tmp_path, capsys, monkeypatch):
    manifest = tmp_path / "teachers" / "cifar100.yaml"  # the real manifest, none of its files present
    manifest.parent.mkdir()
    shutil.copy(REPO / "teachers" / "cifar100.yaml", manifest)
    monkeypatch.setenv(MANIFEST_ENV, str(manifest))
    code, out = dry_run(capsys, tmp_path / "sweep", settings(tiny_cifar))
    assert code == 2
    (problem,) = problems_of(out, f"kd {TASK} seed 0")
    assert problem.startswith("teacher: ") and "resnet56" in problem
    assert problems_of(out, f"vanilla {TASK} seed 0") == []  # no teacher, nothing missing
    assert "1 of 2 runs have problems" in out


@pytest.mark.e2e
def test_dry_run_finds_a_teacher_file_that_does_not_exist(tiny_cifar, teachers, tmp_path, capsys):
    missing = tmp_path / "nowhere.pth"
    code, out = dry_run(capsys, tmp_path / "sweep", [*settings(tiny_cifar), f"teacher.checkpoint={missing}"], "kd")
    assert code == 2
    assert problems_of(out, f"kd {TASK} seed 0") == [f"teacher.checkpoint: file {missing} does not exist"]


@pytest.mark.e2e
def test_dry_run_finds_a_tracker_that_is_not_installed(tiny_cifar, teachers, tmp_path, capsys):
    """wandb is not installed here: a grid that names it is refused cell by cell before anything is submitted."""
    code, out = dry_run(capsys, tmp_path / "sweep", [*settings(tiny_cifar), "tracking.log_with=[tensorboard, wandb]"], "kd")
    assert code == 2
    assert problems_of(out, f"kd {TASK} seed 0") == [
        "tracking.log_with names wandb, which is not installed: pip install wandb (or leave it out of tracking.log_with)"
    ]


@pytest.mark.e2e
def test_dry_run_finds_missing_data(teachers, tmp_path, capsys):
    empty = tmp_path / "no_data"
    empty.mkdir()
    code, out = dry_run(capsys, tmp_path / "sweep", settings(empty))
    assert code == 2
    for label in (f"kd {TASK} seed 0", f"vanilla {TASK} seed 0"):
        (problem,) = problems_of(out, label)
        assert problem.startswith("data: CIFAR-100 not found") and str(empty) in problem


@pytest.mark.e2e
def test_dry_run_reports_cells_run_with_other_settings(tiny_cifar, teachers, tmp_path, capsys):
    output = tmp_path / "sweep"
    write_cell(output, "kd", 0, settings(tiny_cifar, epochs=2))
    write_cell(output, "vanilla", 0, settings(tiny_cifar, epochs=2), finished=False)
    write_cell(output, "vanilla", 1, settings(tiny_cifar, epochs=3))  # same settings as now: fine
    code, out = dry_run(capsys, output, settings(tiny_cifar, epochs=3), seeds="0,1")
    assert code == 2
    assert problems_of(out, f"kd {TASK} seed 0") == ["finished with other settings: schedule.epochs: run has 2, now 3"]
    assert problems_of(out, f"vanilla {TASK} seed 0") == ["started with other settings: schedule.epochs: run has 2, now 3"]
    assert problems_of(out, f"vanilla {TASK} seed 1") == []
    assert "4 runs: 2 done, 1 unfinished, 0 failed, 1 pending; 2 with problems" in out
    assert "another --output" in out


@pytest.mark.e2e
def test_dry_run_shows_failed_cells_and_foreign_files(tiny_cifar, teachers, tmp_path, capsys):
    output = tmp_path / "sweep"
    failed = write_cell(output, "kd", 0, settings(tiny_cifar), finished=False)
    write_outcome(failed, "nonfinite", "non-finite loss in epoch 1")
    strange = write_cell(output, "vanilla", 0, settings(tiny_cifar), finished=False)
    (strange / "notes.txt").write_text("mine", encoding="utf-8")
    code, out = dry_run(capsys, output, settings(tiny_cifar))
    assert code == 2
    assert f"kd {TASK} seed 0" in out and problems_of(out, f"kd {TASK} seed 0") == []
    assert next(line for line in out.splitlines() if line.startswith(f"kd {TASK} seed 0")).split()[4] == "failed"
    (problem,) = problems_of(out, f"vanilla {TASK} seed 0")
    assert "notes.txt" in problem


@pytest.mark.e2e
def test_a_sweep_whose_recipe_does_not_load_fails_a_finished_cell_instead_of_skipping_it(tiny_cifar, teachers, tmp_path, trained, capsys):
    output = tmp_path / "sweep"
    write_cell(output, "kd", 0, settings(tiny_cifar))
    assert sweep(output, [*settings(tiny_cifar), "schedule.epochs=abc"]) == 1
    out = capsys.readouterr().out
    assert trained == [] and "0 skipped (already finished), 1 failed" in out

