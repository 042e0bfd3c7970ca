"""DIST, WTTM and WTTM+CRD through the CLI for one epoch on the fake CIFAR-100, with and without logit standardization."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from tiny_runs import tiny_pair_overrides

from distill.cli.main import main
from distill.engine.metrics import read_metrics

REPO = Path(__file__).resolve().parent.parent
TASK = "resnet32x4-resnet8x4"

# method → (the distillation term, weights of every term as the recipe sets them, extra overrides)
CASES = {
    "dist": ("dist", {"ce": 1.0, "dist": 2.0}, []),
    "wttm": ("wttm", {"ce": 1.0, "wttm": 4.0}, []),
    # K=16384 would exceed the 256-image fake set
    "wttm_crd": ("wttm", {"ce": 1.0, "crd": 0.8, "wttm": 4.0}, ["losses.crd.num_negatives=200"]),
}


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("standardize", [False, True], ids=["plain", "standardized"])
@pytest.mark.parametrize("method", list(CASES))
def test_one_epoch_through_the_cli(method, standardize, fake_cifar100, tiny_teacher, tmp_path, capsys):
    term, weights, extra = CASES[method]
    recipe = REPO / f"recipes/cifar100/{method}/{TASK}.yaml"
    run_dir = tmp_path / method
    switch = [f"losses.{term}.standardize=true"] if standardize else []
    args = ["train", str(recipe), *tiny_pair_overrides(fake_cifar100, tiny_teacher), *extra, *switch, "--run-dir", str(run_dir), "--no-tensorboard"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"loss {term}: " in out and f"loss {term}: {term}:" not in out  # the name once, then the settings
    assert ("logits standardized first" in out) == standardize
    row = read_metrics(run_dir)[-1]
    assert row["epoch"] == 1 and math.isfinite(row["test/top1"])
    for name in weights:
        assert math.isfinite(row[f"train/loss/{name}"]) and row[f"train/loss/{name}"] > 0, name
    total = sum(weight * row[f"train/loss/{name}"] for name, weight in weights.items())
    assert row["train/loss/total"] == pytest.approx(total, rel=1e-5)
