"""One epoch of the shipped KD+LS and DKD+LS recipes through ``distill train``, on the fake CIFAR-100.

resnet14 (random weights) → resnet8, the resnet32x4 → resnet8x4 recipes' losses as shipped
(KD+LS: 0.1·CE + 9·KD, τ 2; DKD+LS: CE + DKD, α 9, β 72, τ 2, warm-up 20).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from distill.cli.main import main
from distill.engine.metrics import read_metrics

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "cifar100"


def one_epoch(method: str, data_root: Path, teacher: Path, run_dir: Path) -> list[dict]:
    overrides = [
        f"data.root={data_root}", "data.verify=false", "data.download=false", "data.num_workers=0",
        "data.test_batch_size=32", "schedule.epochs=1", "log_every=2", "deterministic=true",
        "student.arch=resnet8", "teacher.name=null", "teacher.arch=resnet14", f"teacher.checkpoint={teacher}",
    ]
    recipe = RECIPES / method / "resnet32x4-resnet8x4.yaml"
    assert main(["train", str(recipe), *overrides, "--run-dir", str(run_dir), "--no-tensorboard"]) == 0
    return read_metrics(run_dir)


def test_kd_ls_trains_one_epoch(fake_cifar100, tiny_teacher, tmp_path):
    rows = one_epoch("kd_ls", fake_cifar100, tiny_teacher, tmp_path / "kd_ls")
    last = rows[-1]
    assert last["epoch"] == 1 and math.isfinite(last["test/top1"])
    assert last["train/loss/total"] == pytest.approx(0.1 * last["train/loss/ce"] + 9.0 * last["train/loss/kd"], rel=1e-5)
    assert "loss kd: T=2.0, logit standardization (code form)" in (tmp_path / "kd_ls" / "log.txt").read_text()


def test_dkd_ls_trains_one_epoch(fake_cifar100, tiny_teacher, tmp_path):
    rows = one_epoch("dkd_ls", fake_cifar100, tiny_teacher, tmp_path / "dkd_ls")
    last = rows[-1]
    assert last["epoch"] == 1 and math.isfinite(last["test/top1"])
    assert math.isfinite(last["train/loss/dkd"]) and last["train/loss/dkd"] > 0
    assert last["train/loss/total"] == pytest.approx(last["train/loss/ce"] + last["train/loss/dkd"], rel=1e-5)
    log = (tmp_path / "dkd_ls" / "log.txt").read_text()
    assert "loss dkd: alpha=9.0, beta=72.0, T=2.0, linear warm-up over 20 epochs, logit standardization (code form)" in log
