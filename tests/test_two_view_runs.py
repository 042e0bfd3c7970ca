"""MLKD's two-view training through real ``distill train`` processes on the fake CIFAR-100.

One epoch of each two-view family (mlkd, mlkd_ls and the compute-matched kd_2view,
kd_ls_2view) on both data paths; a run killed by SIGKILL mid-epoch and resumed ends
bit-identical to an uninterrupted one; two processes (gloo) train it too.
"""

from __future__ import annotations

import math
import signal
from pathlib import Path

import pytest
from resume_checks import assert_same_run, final_state
from tiny_runs import run_distill

from distill.engine.metrics import read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REPO = Path(__file__).resolve().parent.parent
TASK = "resnet32x4-resnet8x4"
FAULT_PLUGIN = Path(__file__).resolve().parent / "fault_plugin.py"

# method → weight of every term as the recipe sets it for TASK
WEIGHTS = {
    "mlkd": {"ce": 0.1, "mlkd": 0.9},
    "mlkd_ls": {"ce": 0.1, "mlkd": 9.0},
    "kd_2view": {"ce": 0.1, "kd": 0.9},
    "kd_ls_2view": {"ce": 0.1, "kd": 9.0},
}


def overrides(data_root: Path, teacher: Path, loader: str = "device", epochs: int = 1) -> list[str]:
    return [
        f"data.root={data_root}", "data.verify=false", "data.download=false", "data.num_workers=0",
        f"data.loader={loader}", f"schedule.epochs={epochs}", "log_every=1", "student.arch=resnet8",
        "teacher.name=null", "teacher.arch=resnet14", f"teacher.checkpoint={teacher}",
    ]


def recipe(method: str) -> str:
    return str(REPO / "recipes" / "cifar100" / method / f"{TASK}.yaml")


def assert_trained_one_epoch(run_dir: Path, method: str) -> None:
    row = read_metrics(run_dir)[-1]
    assert row["epoch"] == 1 and math.isfinite(row["test/top1"])
    weights = WEIGHTS[method]
    for name in weights:
        assert math.isfinite(row[f"train/loss/{name}"]) and row[f"train/loss/{name}"] > 0, name
    total = sum(weight * row[f"train/loss/{name}"] for name, weight in weights.items())
    assert row["train/loss/total"] == pytest.approx(total, rel=1e-5)
    log = (run_dir / "log.txt").read_text(encoding="utf-8")
    assert "2 views per step, each for both networks: standard, fixmatch_strong" in log


@pytest.mark.parametrize("loader", ["device", "workers"])
@pytest.mark.parametrize("method", list(WEIGHTS))
def test_one_epoch_of_each_two_view_family(method, loader, fake_cifar100, tiny_teacher, tmp_path):
    run_dir = tmp_path / method
    result = run_distill("train", recipe(method), *overrides(fake_cifar100, tiny_teacher, loader), "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_trained_one_epoch(run_dir, method)
    if method.startswith("mlkd"):
        temperatures = "(2, 3, 5, 2, 6)" if method == "mlkd_ls" else "(4, 3, 5, 2, 6)"
        log = (run_dir / "log.txt").read_text(encoding="utf-8")
        assert f"loss mlkd: T = {temperatures}, code form" in log  # the term's name once, then the settings


@pytest.mark.parametrize("loader", ["device", "workers"])
def test_a_two_view_run_killed_mid_epoch_resumes_bit_identical(loader, fake_cifar100, tiny_teacher, tmp_path):
    """4 steps per epoch, 2 epochs, checkpoints every 2 steps: killed after step 3, resumed from step 2."""
    settings = [*overrides(fake_cifar100, tiny_teacher, loader, epochs=2), "data.batch_size=64", "deterministic=true",
                "checkpoint_every_steps=2", "schedule.milestones=[1]", f"plugins=[{FAULT_PLUGIN}]"]
    uninterrupted = tmp_path / "uninterrupted"
    result = run_distill("train", recipe("mlkd"), *settings, "--run-dir", str(uninterrupted))
    assert result.returncode == 0, result.stderr[-3000:]

    run_dir = tmp_path / "killed"
    killed = run_distill("train", recipe("mlkd"), *settings, "--run-dir", str(run_dir), fault="kill_after_step=3")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert final_state(run_dir)["state"]["step"] == 2
    resumed = run_distill("train", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(uninterrupted, run_dir)


def test_two_processes_train_mlkd(fake_cifar100, tiny_teacher, tmp_path):
    run_dir = tmp_path / "two"
    result = run_distill("train", recipe("mlkd"), *overrides(fake_cifar100, tiny_teacher), "data.batch_size=32",
                     "--run-dir", str(run_dir), processes=2, port=29561)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_trained_one_epoch(run_dir, "mlkd")
    assert "× 2 process(es)" in (run_dir / "log.txt").read_text(encoding="utf-8")
