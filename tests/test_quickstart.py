"""The quickstart in its reduced mode: three real runs on generated data, a table at the end."""

from __future__ import annotations

import math

from distill.cli.main import main
from distill.cli.quickstart import FULL, quickstart_recipes
from distill.engine.metrics import read_metrics
from distill.recipe import recipe_from_dict


def test_reduced_quickstart_trains_three_models_and_prints_the_table(tmp_path, capsys):
    assert main(["quickstart", "--reduced", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "DEMONSTRATION" in out and "say nothing about CIFAR-100" in out
    table = out[out.index("model ") :]
    for label in ("teacher  resnet20", "student  resnet8 alone", "student  resnet8 + KD"):
        assert label in table
    for run in ("teacher", "alone", "distilled"):
        rows = [r for r in read_metrics(tmp_path / run) if "test/top1" in r]
        assert rows and all(math.isfinite(r["train/loss/total"]) for r in rows)
    kd_terms = read_metrics(tmp_path / "distilled")[-1]
    assert "train/loss/kd" in kd_terms


def test_full_quickstart_recipes_validate():
    recipes = quickstart_recipes(FULL, seed=0, teacher_checkpoint="teacher.pt")
    teacher = recipe_from_dict(recipes["teacher"])
    distilled = recipe_from_dict(recipes["distilled"])
    assert teacher.teacher is None and distilled.teacher.arch == teacher.student.arch
    assert distilled.student.arch == recipe_from_dict(recipes["alone"]).student.arch
    assert set(distilled.losses) == {"ce", "kd"}
