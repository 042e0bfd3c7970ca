"""Signals and launchers: one message per job, a resume hint that names the launcher, no silent single process.

The real-process cases run ``torchrun --nproc_per_node 2`` (gloo on CPU) and
``accelerate launch`` on the fake CIFAR-100, as a user would; the environment
cases pin what each launcher's variables mean (as read from torch's elastic
agent and Accelerate's launch code).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from distill.engine.launch import (
    LaunchError,
    check_process_count,
    detect_launch,
    is_main_local_process,
    resume_command,
    stopped_exit_note,
)
from distill.engine.signals import EXIT_STOPPED, stopped_message
from distill.files.rundir import read_outcome

REPO = Path(__file__).resolve().parent.parent
KD_RECIPE = REPO / "recipes/cifar100/kd/resnet32x4-resnet8x4.yaml"
FAULT_PLUGIN = Path(__file__).resolve().parent / "fault_plugin.py"

TORCHRUN_WORKER = {  # what torchrun --nproc_per_node 2 gives its second worker
    "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "GROUP_WORLD_SIZE": "1",
    "TORCHELASTIC_RUN_ID": "85764d7b-820d-4b2e-80b7-ddc45f115f07", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500",
}
ACCELERATE_MULTI = {  # accelerate launch --multi_gpu --num_processes 2 (its elastic agent), first worker
    "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "none",
    "MASTER_ADDR": "127.0.0.1", "ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_DYNAMO_BACKEND": "NO",
}
ACCELERATE_SIMPLE_ASKED_FOR_TWO = {  # accelerate launch --cpu --num_processes 2: one process, nothing tells it more
    "ACCELERATE_USE_CPU": "True", "ACCELERATE_MIXED_PRECISION": "no", "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29500", "OMP_NUM_THREADS": "1",
}


# --- the environment, as each launcher leaves it ---------------------------------------------------------------


def test_resume_command_names_the_launcher():
    assert resume_command("runs/a b", {}) == "distill train --resume 'runs/a b'"
    assert resume_command("runs/x", TORCHRUN_WORKER) == "torchrun --nproc_per_node 2 -m distill train --resume runs/x"
    assert resume_command("runs/x", ACCELERATE_MULTI) == (
        "accelerate launch --multi_gpu --num_processes 2 -m distill train --resume runs/x"
    )
    bf16 = {**ACCELERATE_MULTI, "ACCELERATE_MIXED_PRECISION": "bf16"}
    assert resume_command("r", bf16).startswith("accelerate launch --multi_gpu --num_processes 2 --mixed_precision bf16 -m")
    two_nodes = {**TORCHRUN_WORKER, "WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "4"}
    assert resume_command("r", two_nodes) == (
        "torchrun --nproc_per_node 4 --nnodes 2 <your rendezvous options> -m distill train --resume r"
    )


def test_detect_launch_reads_the_process_counts():
    assert detect_launch({}).launcher == "direct"
    launch = detect_launch(TORCHRUN_WORKER)
    assert (launch.launcher, launch.world_size, launch.local_world_size, launch.nodes) == ("torchrun", 2, 2, 1)
    assert detect_launch(ACCELERATE_MULTI).launcher == "accelerate"


def test_only_local_rank_zero_speaks():
    assert is_main_local_process({})
    assert not is_main_local_process(TORCHRUN_WORKER)
    assert is_main_local_process({**TORCHRUN_WORKER, "RANK": "4", "LOCAL_RANK": "0"})  # the first process of node 2
    assert not is_main_local_process({"RANK": "3"})  # an MPI-style launch that sets only RANK


def test_stopped_message_says_how_to_continue_and_what_the_launcher_reports(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID", "ACCELERATE_MIXED_PRECISION"):
        monkeypatch.delenv(name, raising=False)
    alone = stopped_message("SIGINT", "in epoch 2 after batch 3", "runs/x/checkpoints/last.pt", "runs/x")
    assert alone == (
        "stopped by SIGINT in epoch 2 after batch 3; checkpoint runs/x/checkpoints/last.pt. "
        "Continue with: distill train --resume runs/x"
    )
    assert stopped_exit_note({}) == ""
    for name, value in TORCHRUN_WORKER.items():
        monkeypatch.setenv(name, value)
    launched = stopped_message("SIGTERM", "at the end of epoch 1", "c.pt", "runs/x")
    assert "Continue with: torchrun --nproc_per_node 2 -m distill train --resume runs/x." in launched
    assert "torchrun itself exits with 1" in launched and "outcome.json says 'stopped'" in launched


def test_the_single_process_accelerate_launch_is_refused():
    with pytest.raises(LaunchError, match="started ONE process") as caught:
        check_process_count(ACCELERATE_SIMPLE_ASKED_FOR_TWO)
    assert "accelerate launch --multi_gpu --num_processes N -m distill train" in str(caught.value)
    assert "torchrun --nproc_per_node N" in str(caught.value)


@pytest.mark.parametrize(
    "environ",
    [
        {},
        TORCHRUN_WORKER,
        ACCELERATE_MULTI,
        {"ACCELERATE_USE_CPU": "True", "ACCELERATE_MIXED_PRECISION": "no"},  # --cpu, one process: as asked
        {**ACCELERATE_SIMPLE_ASKED_FOR_TWO, "OMPI_COMM_WORLD_SIZE": "2"},  # --cpu with mpirun: it knows its world
        {"MASTER_ADDR": "10.0.0.1"},  # a cluster's variable, no accelerate launch
    ],
    ids=["direct", "torchrun", "accelerate-multi", "accelerate-one", "accelerate-mpirun", "cluster-master-addr"],
)
def test_launches_that_start_what_they_were_asked_for_pass(environ):
    check_process_count(environ)


# --- real processes ----------------------------------------------------------------------------------------------


def kd_overrides(data_root: Path, teacher: Path) -> list[str]:
    return [
        f"data.root={data_root}", "data.verify=false", "data.num_workers=0", "data.batch_size=32",
        "schedule.epochs=2", "schedule.milestones=[1]", "log_every=1", "student.arch=resnet8",
        "teacher.name=null", "teacher.arch=resnet14", f"teacher.checkpoint={teacher}", f"plugins=[{FAULT_PLUGIN}]",
    ]


@pytest.mark.slow
@pytest.mark.e2e
def test_ctrl_c_under_torchrun_prints_once_and_stops_every_process(fake_cifar100, tiny_teacher, tmp_path):
    """Ctrl-C reaches torchrun (its workers run in their own sessions); torchrun forwards SIGINT to each worker."""
    run_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561",
        "-m", "distill", "train", str(KD_RECIPE), *kd_overrides(fake_cifar100, tiny_teacher), "--run-dir", str(run_dir),
    ]
    env = {**os.environ, "DISTILL_FAULT": "slow_steps=0.5", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if "epoch 1/2 step 2/" in line:
                break
            assert line or process.poll() is None, "the run ended before its second step"
        else:
            raise AssertionError("no second step within 240 s")
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
    assert stderr.count("SIGINT received") == 1, stderr[-4000:]
    assert stderr.count("stopped by SIGINT") == 1, stderr[-4000:]
    assert f"Continue with: torchrun --nproc_per_node 2 -m distill train --resume {run_dir}" in stderr
    assert read_outcome(run_dir).status == "stopped"
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert len(state["processes"]) == 2 and state["state"]["step"] >= 2
    # torchrun, not distill, decides the job's status: its elastic agent turns the signal into SignalException
    # and exits 1 (pinned here so that a torch release that forwards the workers' 75 is noticed).
    assert process.returncode == 1 != EXIT_STOPPED
    assert "SignalException" in stderr


@pytest.mark.e2e
def test_accelerate_launch_cpu_with_two_processes_is_refused_not_run_alone(fake_cifar100, tiny_teacher, tmp_path):
    run_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "distill", "train", str(KD_RECIPE),
        *kd_overrides(fake_cifar100, tiny_teacher), "schedule.epochs=1", "--run-dir", str(run_dir),
    ]
    env = {key: value for key, value in os.environ.items() if key not in ("MASTER_ADDR", "WORLD_SIZE", "DISTILL_FAULT")}
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=REPO, check=False)
    assert result.returncode != 0, result.stderr[-3000:]
    assert result.stderr.count("accelerate launch started ONE process") == 1, result.stderr[-3000:]
    assert "accelerate launch --multi_gpu --num_processes N -m distill train" in result.stderr
    assert not run_dir.exists()  # refused before anything was written
