"""Exact resume: a run killed anywhere (SIGKILL, SIGTERM) and resumed ends bit-identical to an uninterrupted one.

Every run here is a real ``python -m distill train`` process on a fake CIFAR-100,
CRD (memory banks, Z, a private negatives generator) plus cross-entropy, with
``deterministic: true``. Faults come from ``tests/fault_plugin.py``, a recipe
plugin switched on by the ``DISTILL_FAULT`` environment variable.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from resume_checks import assert_same_run, final_state

from distill.engine.signals import EXIT_STOPPED

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REPO = Path(__file__).resolve().parent.parent
CRD_RECIPE = REPO / "recipes/cifar100/crd/resnet32x4-resnet8x4.yaml"
FAULT_PLUGIN = Path(__file__).resolve().parent / "fault_plugin.py"
STEPS_PER_EPOCH, EPOCHS, CHECKPOINT_EVERY = 4, 2, 2  # checkpoints after steps 2, 4 (epoch end), 6, 8 (end)


def overrides(data_root: Path, teacher: Path, seed: int) -> list[str]:
    return [
        f"data.root={data_root}", "data.verify=false", "data.num_workers=0", "data.batch_size=64",
        f"schedule.epochs={EPOCHS}", "schedule.milestones=[1]", "log_every=1", "deterministic=true", f"seed={seed}",
        "student.arch=resnet8", "teacher.name=null", "teacher.arch=resnet14", f"teacher.checkpoint={teacher}",
        "losses.crd.num_negatives=64", f"checkpoint_every_steps={CHECKPOINT_EVERY}", f"plugins=[{FAULT_PLUGIN}]",
    ]


def distill_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "distill", *args]


def run_distill(*args: str, fault: str = "", timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "DISTILL_FAULT": fault}
    return subprocess.run(distill_command(*args), capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def train(run_dir: Path, data_root: Path, teacher: Path, seed: int, fault: str = "") -> subprocess.CompletedProcess:
    return run_distill("train", str(CRD_RECIPE), *overrides(data_root, teacher, seed), "--run-dir", str(run_dir), fault=fault)


@pytest.fixture(scope="module")
def baselines(fake_cifar100, tiny_teacher, tmp_path_factory) -> dict[int, Path]:
    """One uninterrupted run per seed."""
    runs = {}
    for seed in (0, 1):
        run_dir = tmp_path_factory.mktemp("baseline") / f"seed{seed}"
        result = train(run_dir, fake_cifar100, tiny_teacher, seed)
        assert result.returncode == 0, result.stderr
        runs[seed] = run_dir
    return runs


def kill_points(seed: int) -> list[str]:
    """Three faults drawn from ``seed``, one per process of a run that is killed three times.

    Mid-epoch after a random early step; half-way through writing one of the next
    checkpoint files; right after one of the next checkpoints. Each still leaves
    work for the process after it (8 steps, checkpoints after steps 2, 4, 6, 8).
    """
    draw = random.Random(seed)
    return [
        f"kill_after_step={draw.randint(1, 3)}",
        f"kill_during_save={draw.randint(1, 2)}",
        f"kill_after_save={draw.randint(1, 2)}",
    ]


def assert_killed(result: subprocess.CompletedProcess, fault: str) -> None:
    assert result.returncode == -signal.SIGKILL, f"{fault} did not kill the run: {result.stderr[-2000:]}"


@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_at_several_points_then_resume_is_bit_identical(seed, baselines, fake_cifar100, tiny_teacher, tmp_path):
    run_dir = tmp_path / "run"
    first, during_save, after_save = kill_points(seed)
    assert_killed(train(run_dir, fake_cifar100, tiny_teacher, seed, fault=first), first)
    assert not (run_dir / "summary.json").exists()

    assert_killed(run_distill("train", "--resume", str(run_dir), fault=during_save), during_save)
    leftovers = [p.name for p in (run_dir / "checkpoints").glob(".*")]
    assert leftovers and all(".tmp-" in name for name in leftovers)  # the half-written file is only a temporary
    if (run_dir / "checkpoints" / "last.pt").exists():  # the previous checkpoint is intact (if there was one)
        torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)

    assert_killed(run_distill("train", "--resume", str(run_dir), fault=after_save), after_save)
    resumed = run_distill("train", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(baselines[seed], run_dir)
    assert not list((run_dir / "checkpoints").glob(".*"))  # a resumed run clears stale temporaries


def wait_for_line(process: subprocess.Popen, needle: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if needle in line:
            return
        if not line and process.poll() is not None:
            raise AssertionError(f"the run ended before printing {needle!r}")
    raise AssertionError(f"no {needle!r} within {timeout} s")


def start_slow_run(run_dir: Path, data_root: Path, teacher: Path) -> subprocess.Popen:
    env = {**os.environ, "DISTILL_FAULT": "slow_steps=0.3"}
    command = distill_command("train", str(CRD_RECIPE), *overrides(data_root, teacher, 0), "--run-dir", str(run_dir))
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def test_sigterm_checkpoints_exits_75_and_resumes_exactly(baselines, fake_cifar100, tiny_teacher, tmp_path):
    run_dir = tmp_path / "run"
    process = start_slow_run(run_dir, fake_cifar100, tiny_teacher)
    wait_for_line(process, "epoch 2/2 step 1/4")
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == EXIT_STOPPED, stderr
    assert "stopped by SIGTERM" in stderr and f"distill train --resume {run_dir}" in stderr
    stopped = final_state(run_dir)
    assert stopped["epoch"] == 1 and stopped["state"]["batch"] >= 1  # a checkpoint inside epoch 2, where it stopped
    assert not (run_dir / "summary.json").exists()

    resumed = run_distill("train", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(baselines[0], run_dir)


def test_a_second_signal_exits_at_once(fake_cifar100, tiny_teacher, tmp_path):
    run_dir = tmp_path / "run"
    process = start_slow_run(run_dir, fake_cifar100, tiny_teacher)
    wait_for_line(process, "epoch 1/2 step 1/4")
    process.send_signal(signal.SIGINT)
    time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGINT, stderr
    assert "second signal" in stderr and "without a checkpoint" in stderr


def torchrun_train(run_dir: Path, data_root: Path, teacher: Path, port: int, fault: str = "", resume: bool = False):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port), "-m", "distill", "train"]
    if resume:
        command += ["--resume", str(run_dir)]
    else:
        command += [str(CRD_RECIPE), *overrides(data_root, teacher, 0), "data.batch_size=32", "--run-dir", str(run_dir)]
    env = {**os.environ, "DISTILL_FAULT": fault, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=REPO)


def test_two_processes_killed_and_resumed_end_bit_identical(fake_cifar100, tiny_teacher, tmp_path):
    """Each process's random streams and running sums, gathered into one checkpoint, are handed back to it."""
    uninterrupted = tmp_path / "uninterrupted"
    result = torchrun_train(uninterrupted, fake_cifar100, tiny_teacher, 29541)
    assert result.returncode == 0, result.stderr[-3000:]

    run_dir = tmp_path / "killed"
    killed = torchrun_train(run_dir, fake_cifar100, tiny_teacher, 29542, fault="kill_after_step=3")
    assert killed.returncode != 0 and final_state(run_dir)["state"]["step"] == 2
    assert len(final_state(run_dir)["processes"]) == 2
    resumed = torchrun_train(run_dir, fake_cifar100, tiny_teacher, 29543, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(uninterrupted, run_dir)
