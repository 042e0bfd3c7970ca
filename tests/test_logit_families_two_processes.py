"""Each of issue 15's one-view families trains one epoch on two processes (torchrun, gloo on CPU).

The recipes as shipped (resnet32x4 → resnet8x4, with resnet14 → resnet8 on the fake
CIFAR-100): the loss terms reach metrics.jsonl finite, and their weighted sum is the total.
MLKD's two-view families have their own two-process test (tests/test_two_view_runs.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from tiny_runs import run_distill, tiny_pair_overrides

from distill.engine.metrics import read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REPO = Path(__file__).resolve().parent.parent

# family → (port, weight of every term for resnet32x4-resnet8x4, extra overrides)
FAMILIES = {
    "kd_ls": (29571, {"ce": 0.1, "kd": 9.0}, []),
    "dkd_ls": (29572, {"ce": 1.0, "dkd": 1.0}, []),
    "dist": (29573, {"ce": 1.0, "dist": 2.0}, []),
    "wttm": (29574, {"ce": 1.0, "wttm": 4.0}, []),
    "wttm_crd": (29575, {"ce": 1.0, "crd": 0.8, "wttm": 4.0}, ["losses.crd.num_negatives=100"]),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_one_epoch_on_two_processes(family, fake_cifar100, tiny_teacher, tmp_path):
    port, weights, extra = FAMILIES[family]
    run_dir = tmp_path / family
    recipe = REPO / "recipes" / "cifar100" / family / "resnet32x4-resnet8x4.yaml"
    result = run_distill("train", str(recipe), *tiny_pair_overrides(fake_cifar100, tiny_teacher), "data.batch_size=32",
                         *extra, "--run-dir", str(run_dir), processes=2, port=port)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "× 2 process(es)" in (run_dir / "log.txt").read_text(encoding="utf-8")
    row = read_metrics(run_dir)[-1]
    assert row["epoch"] == 1 and math.isfinite(row["test/top1"])
    for name in weights:
        assert math.isfinite(row[f"train/loss/{name}"]), name
    total = sum(weight * row[f"train/loss/{name}"] for name, weight in weights.items())
    assert row["train/loss/total"] == pytest.approx(total, rel=1e-5)
