"""The quickstart: its reduced mode end to end (four real runs per seed, the report), its
recipes, and the verdict rule (gain against spread → words) on hand-made numbers."""

from __future__ import annotations

import dataclasses
import json
import math
import os

import pytest

from distill.benchmark.quickstart import (
    CRD_KD,
    FULL,
    KD,
    REDUCED,
    STUDENTS,
    format_report,
    quickstart_recipes,
)
from distill.benchmark.verdict import (
    Comparison,
    SeedSummary,
    compare,
    describe,
    summarise,
)
from distill.benchmark.workers import Job, Outcome, console_file, run_jobs
from distill.cli.main import main
from distill.engine.metrics import read_metrics
from distill.errors import DistillError
from distill.recipe.load import recipe_from_dict

# --- the verdict rule, against hand-made numbers -------------------------------------------


def test_summarise_uses_the_sample_standard_deviation():
    summary = summarise([50.0, 54.0])
    assert summary.mean == 52.0 and summary.std == pytest.approx(math.sqrt(8.0)) and summary.n == 2
    assert str(summary) == "52.0 ± 2.8"
    assert summarise([61.0]) == SeedSummary(61.0, None, 1) and str(summarise([61.0])) == "61.0"
    with pytest.raises(ValueError):
        summarise([])


def test_a_gain_larger_than_the_spread_is_a_gain():
    # alone 50, 54 (sd 2.83); kd 60, 62 (sd 1.41): gain 9, spread √(8 + 2) = 3.16
    comparison = compare(summarise([60.0, 62.0]), summarise([50.0, 54.0]))
    assert comparison.verdict == "gain"
    assert comparison.gain == pytest.approx(9.0) and comparison.spread == pytest.approx(math.sqrt(10.0))
    assert describe(comparison, "KD") == "+9.0 points (spread 3.2), larger than the spread: KD helps here"


def test_a_gain_within_the_spread_is_called_noise():
    # gain 2, spread √(8 + 8) = 4
    comparison = compare(summarise([52.0, 56.0]), summarise([50.0, 54.0]))
    assert comparison == Comparison(gain=pytest.approx(2.0), spread=pytest.approx(4.0), verdict="within noise")
    assert "within the spread: no difference this demonstration can show" in describe(comparison, "KD")
    # exactly at the spread is not more than the spread
    assert compare(SeedSummary(54.0, 3.0, 2), SeedSummary(49.0, 4.0, 2)).verdict == "within noise"


def test_a_loss_larger_than_the_spread_is_called_a_loss():
    comparison = compare(summarise([45.0, 46.0]), summarise([50.0, 51.0]))
    assert comparison.verdict == "loss" and comparison.gain == pytest.approx(-5.0)
    assert describe(comparison, "CRD + KD").endswith("the wrong way: CRD + KD hurts here")
    assert describe(comparison, "CRD + KD").startswith("-5.0 points (spread 1.0)")


def test_one_seed_gives_no_verdict():
    comparison = compare(summarise([70.0]), summarise([50.0]))
    assert comparison == Comparison(gain=20.0, spread=None, verdict="one seed")
    assert describe(comparison, "KD") == "+20.0 points (no spread), one seed only: no spread to hold it against, so no verdict"


def test_report_states_what_the_numbers_are_and_says_when_there_is_no_contrastive_gain():
    results = {"teacher": [80.0, 82.0], "alone": [50.0, 54.0], "kd": [60.0, 62.0], "crd_kd": [59.0, 63.0]}
    report = format_report(results, [0, 1], FULL)
    assert "Last-epoch test top-1" in report and "GENERATED dataset (not CIFAR-100" in report
    assert "mean ± std over 2 seed(s) (0, 1)" in report
    assert f"{FULL.teacher_train_size} images" in report and f"same {FULL.student_train_size} images" in report
    assert "81.0 ± 1.4" in report and "52.0 ± 2.8" in report and "61.0 ± 1.4" in report
    assert "KD against the student alone: +9.0 points (spread 3.2), larger than the spread: KD helps here." in report
    assert "The contrastive term (CRD + KD against KD): +0.0 points" in report
    assert "does NOT show a contrastive gain" in report
    # a contrastive gain beyond the spread is reported as such, without the disclaimer
    results["crd_kd"] = [70.0, 71.0]
    report = format_report(results, [0, 1], FULL)
    assert "does NOT show" not in report and "the contrastive term helps here" in report


# --- the recipes ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [FULL, REDUCED])
def test_quickstart_recipes_validate(size):
    recipes = {key: recipe_from_dict(data) for key, data in quickstart_recipes(size, 0, "teacher.pt").items()}
    assert list(recipes) == ["teacher", "alone", "kd", "crd_kd"]
    teacher = recipes.pop("teacher")
    assert teacher.teacher is None and teacher.data.options["train_size"] == size.teacher_train_size
    for recipe in recipes.values():
        assert recipe.student.arch != teacher.student.arch
        assert recipe.data.options["train_size"] == size.student_train_size
        assert recipe.data.options["test_size"] == teacher.data.options["test_size"]
    assert recipes["alone"].teacher is None
    assert recipes["kd"].teacher.arch == recipes["crd_kd"].teacher.arch == teacher.student.arch
    assert set(recipes["kd"].losses) == {"ce", "kd"} and set(recipes["crd_kd"].losses) == {"ce", "kd", "crd"}
    # the CRD paper's weights for CRD + KD; the KD paper's for KD
    assert recipes["crd_kd"].losses["crd"].weight == 0.8 and recipes["crd_kd"].losses["kd"].weight == 1.0
    assert recipes["kd"].losses["ce"].weight == 0.1 and recipes["kd"].losses["kd"].weight == 0.9
    # enough negatives of other classes in the students' training set (10 balanced classes)
    assert size.crd_negatives <= size.student_train_size * 9 // 10


# --- the reduced demo, end to end ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.e2e
def test_reduced_quickstart_runs_four_models_per_seed_and_prints_the_verdicts(tmp_path, capsys):
    assert main(["quickstart", "--reduced", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "DEMONSTRATION" in out and "say nothing about CIFAR-100" in out
    report = out[out.index("Last-epoch test top-1") :]
    assert "mean ± std over 2 seed(s) (0, 1)" in report
    for label in ("teacher  resnet20", "student  resnet8 alone", "student  resnet8 + KD", "student  resnet8 + CRD + KD"):
        row = next(line for line in report.splitlines() if line.startswith(label))
        assert " ± " in row, row
    for student in (KD, CRD_KD):
        line = next(line for line in report.splitlines() if line.startswith(f"{student.what} against the student alone:"))
        assert any(words in line for words in ("larger than the spread", "within the spread")), line
    assert "The contrastive term (CRD + KD against KD):" in report
    recorded = json.loads((tmp_path / "quickstart.json").read_text())
    assert recorded["seeds"] == [0, 1] and set(recorded["top1"]) == {"teacher", *(s.key for s in STUDENTS)}
    # the runs went to worker processes: the parent shows one line per finished model, no progress lines
    progress = out[: out.index("Last-epoch test top-1")]
    finished = [line for line in progress.splitlines() if line.startswith("seed ")]
    assert len(finished) == 8 and "step " not in progress and "epoch 1/1" not in progress
    for seed in (0, 1):
        mine = [line for line in finished if line.startswith(f"seed {seed}: ")]
        assert "teacher resnet20" in mine[0] and "s CPU)" in mine[0]  # the teacher before its students
        assert f"{recorded['top1']['teacher'][seed]:5.1f} %" in mine[0]
        for key in ("teacher", "alone", "kd", "crd_kd"):
            assert recorded["runs"][f"seed{seed}/{key}"]["cpu_s"] > 0
            assert "epoch 1/1 step " in console_file(tmp_path / f"seed{seed}" / key).read_text()  # the progress went here
    assert "s of CPU in all processes" in out
    for seed in (0, 1):
        for run, term in (("teacher", "ce"), ("alone", "ce"), ("kd", "kd"), ("crd_kd", "crd")):
            rows = [r for r in read_metrics(tmp_path / f"seed{seed}" / run) if "test/top1" in r]
            assert rows and all(math.isfinite(r["train/loss/total"]) for r in rows)
            assert f"train/loss/{term}" in rows[-1]


@pytest.mark.e2e
def test_seed_options(tmp_path, capsys):
    from distill.cli.main import build_parser
    from distill.cli.quickstart import chosen_seeds

    parser = build_parser()
    assert chosen_seeds(parser.parse_args(["quickstart"])) == [0, 1]
    assert chosen_seeds(parser.parse_args(["quickstart", "--seed", "5"])) == [5, 6]
    assert chosen_seeds(parser.parse_args(["quickstart", "--seeds", "3", "1", "3"])) == [3, 1]
    assert main(["quickstart", "--reduced", "--seeds", "-1", "--output", str(tmp_path)]) == 2
    assert "seeds must be integers ≥ 0" in capsys.readouterr().err


# --- worker failures reach the parent --------------------------------------------------------


@pytest.mark.slow
@pytest.mark.e2e
def test_a_user_error_in_a_worker_ends_the_command_with_its_message(tmp_path, capsys, monkeypatch):
    from distill.benchmark import quickstart

    # 4-pixel images are refused by the synthetic dataset, inside the worker's run
    monkeypatch.setattr(quickstart, "REDUCED", dataclasses.replace(REDUCED, image_size=4))
    assert main(["quickstart", "--reduced", "--seeds", "3", "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "quickstart seed 3, teacher  resnet20 (CE) failed:" in err and "image_size" in err
    assert str(tmp_path / "seed3" / "teacher" / "log.txt") in err
    assert not (tmp_path / "quickstart.json").exists()


def _die(job: Job) -> Outcome:
    os._exit(3)


def _teacher_then_students(job: Job) -> Outcome:
    return Outcome(job, 50.0, 0.0, 0.0)


@pytest.mark.slow
@pytest.mark.e2e
def test_a_worker_process_that_dies_is_reported_by_name(tmp_path):
    job = Job("quickstart seed 0, teacher", (0, "teacher"), {}, str(tmp_path / "teacher"))
    with pytest.raises(DistillError, match=r"quickstart seed 0, teacher failed: its worker process died"):
        run_jobs([job], lambda outcome: [], workers=1, worker=_die)


@pytest.mark.slow
@pytest.mark.e2e
def test_follow_up_jobs_run_after_the_job_that_asked_for_them(tmp_path):
    seen = []

    def then(outcome):
        seen.append(outcome.job.tag)
        return [Job(f"student {i}", ("student", i), {}, str(tmp_path / f"s{i}")) for i in range(3)] if outcome.job.tag == "teacher" else []

    outcomes = run_jobs([Job("teacher", "teacher", {}, str(tmp_path / "t"))], then, workers=2, worker=_teacher_then_students)
    assert seen[0] == "teacher" and sorted(seen[1:]) == [("student", i) for i in range(3)]
    assert [o.job.tag for o in outcomes] == seen
