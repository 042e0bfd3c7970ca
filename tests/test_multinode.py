"""One run across two "nodes" on one machine: two launches over the loopback address, one process each.

Two concurrent ``torchrun --nnodes 2 --node_rank 0|1 --nproc_per_node 1`` launches
(static rendezvous on 127.0.0.1, gloo on CPU) train into one run directory and must
end bit-identical to one ``torchrun --nproc_per_node 2`` launch: same ranks, same
shards, same all-reduces, so the same final checkpoint and metrics. The same holds for
two ``accelerate launch`` launches with the multi-host config that docs/multi-node.md
gives (its address, port and process count adapted), and for a two-node run stopped
by SIGTERM to both torchruns (as Slurm stops a job) and resumed by two launches.

The recipe is CRD (its memory bank is written by every process from all-gathered
embeddings), cut down to resnet14 → resnet8 on the fake CIFAR-100, two epochs.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from resume_checks import assert_same_run
from tiny_runs import run_distill, tiny_pair_overrides

from distill.engine.metrics import read_metrics
from distill.files.rundir import read_outcome

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REPO = Path(__file__).resolve().parent.parent
CRD_RECIPE = REPO / "recipes/cifar100/crd/resnet32x4-resnet8x4.yaml"
FAULT_PLUGIN = Path(__file__).resolve().parent / "fault_plugin.py"
DOC = REPO / "docs/multi-node.md"
LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                    "TORCHELASTIC_RUN_ID", "DISTILL_FAULT")  # fmt: skip
BATCH_LINE = "batch 32 per process × 2 processes{nodes} = effective batch 64 | lr 0.05, tuned for batch 32"
WARNING = (
    "warning: effective batch 64 differs from batch 32, which lr 0.05 was tuned for; distill does not scale the lr "
    "itself. Pass optimizer.lr=0.1 (linear scaling: 0.05 × 64/32), or data.batch_size=16 (effective batch 32), "
    "or optimizer.reference_batch_size=64 if lr 0.05 is already meant for batch 64"
)


def free_port() -> int:
    """A TCP port nobody listens on now (the rendezvous binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def overrides(data_root: Path, teacher: Path) -> list[str]:
    return [
        *tiny_pair_overrides(data_root, teacher), "data.batch_size=32", "losses.crd.num_negatives=100",
        "schedule.epochs=2", "schedule.milestones=[1]", "log_every=1", f"plugins=[{FAULT_PLUGIN}]",
    ]  # fmt: skip


def torchrun_node(rank: int, port: int, *args: str) -> list[str]:
    """One node's torchrun: one process, rendezvous with the other node on 127.0.0.1:port."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
            "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
            "-m", "distill", *args]  # fmt: skip


def accelerate_node(rank: int, config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
            "--machine_rank", str(rank), "-m", "distill", *args]  # fmt: skip


def documented_accelerate_config(tmp_path: Path, port: int) -> Path:
    """docs/multi-node.md's multi-host config, pointed at 127.0.0.1:port with one process per "host"."""
    block = re.search(r"```yaml\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    assert block, f"{DOC} has no yaml block"
    config = yaml.safe_load(block.group(1))
    assert (config["num_machines"], config["machine_rank"], config["distributed_type"]) == (2, 0, "MULTI_GPU")
    config.update(main_process_ip="127.0.0.1", main_process_port=port, num_processes=2)
    path = tmp_path / "multi-host.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def start_nodes(commands: list[list[str]], logs: Path, fault: str = "") -> list[subprocess.Popen]:
    """Start each node's launcher at once (stdout and stderr to ``logs/node<R>.out|err``), one torch thread each."""
    logs.mkdir(parents=True, exist_ok=True)
    env = {key: value for key, value in os.environ.items() if key not in LAUNCH_VARIABLES}
    env.update(OMP_NUM_THREADS="1", DISTILL_FAULT=fault)
    nodes = []
    for rank, command in enumerate(commands):
        with open(logs / f"node{rank}.out", "w") as out, open(logs / f"node{rank}.err", "w") as err:
            nodes.append(subprocess.Popen(command, stdout=out, stderr=err, text=True, env=env, cwd=REPO))
    return nodes


def wait_nodes(nodes: list[subprocess.Popen], logs: Path, timeout: float = 300) -> list[int]:
    """Each launcher's exit status; all are killed if any outlives ``timeout``."""
    deadline = time.monotonic() + timeout
    try:
        return [node.wait(timeout=max(1.0, deadline - time.monotonic())) for node in nodes]
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the nodes did not finish within {timeout} s:\n{node_output(logs)}") from None
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()


def node_output(logs: Path, stream: str = "err", rank: int | None = None) -> str:
    ranks = (0, 1) if rank is None else (rank,)
    return "\n".join((logs / f"node{r}.{stream}").read_text(encoding="utf-8")[-3000:] for r in ranks)


@pytest.fixture(scope="module")
def one_node(fake_cifar100, tiny_teacher, tmp_path_factory) -> Path:
    """The reference: one torchrun launch of two processes."""
    run_dir = tmp_path_factory.mktemp("one-node") / "run"
    result = run_distill("train", str(CRD_RECIPE), *overrides(fake_cifar100, tiny_teacher), "--run-dir", str(run_dir),
                         processes=2, port=free_port())  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def test_two_torchrun_nodes_end_as_one_node_with_two_processes(one_node, fake_cifar100, tiny_teacher, tmp_path):
    run_dir, port = tmp_path / "run", free_port()
    args = ["train", str(CRD_RECIPE), *overrides(fake_cifar100, tiny_teacher), "--run-dir", str(run_dir)]
    codes = wait_nodes(start_nodes([torchrun_node(rank, port, *args) for rank in (0, 1)], tmp_path / "logs"), tmp_path / "logs")
    assert codes == [0, 0], node_output(tmp_path / "logs")
    assert_same_run(one_node, run_dir)
    log = (run_dir / "log.txt").read_text(encoding="utf-8")
    assert BATCH_LINE.format(nodes=" on 2 nodes") in log and WARNING in log
    assert BATCH_LINE.format(nodes="") in (one_node / "log.txt").read_text(encoding="utf-8")  # one node: not named
    lrs = [row["lr"] for row in read_metrics(run_dir) if "lr" in row]
    assert lrs == pytest.approx([0.05, 0.005], rel=1e-12)  # the recipe's lr, not scaled behind the user's back
    assert (tmp_path / "logs/node1.out").read_text(encoding="utf-8") == ""  # the second node's process only trains


def test_two_accelerate_hosts_with_the_documented_config_end_as_one_node(one_node, fake_cifar100, tiny_teacher, tmp_path):
    run_dir = tmp_path / "run"
    config = documented_accelerate_config(tmp_path, free_port())
    args = ["train", str(CRD_RECIPE), *overrides(fake_cifar100, tiny_teacher), "--run-dir", str(run_dir)]
    codes = wait_nodes(start_nodes([accelerate_node(rank, config, *args) for rank in (0, 1)], tmp_path / "logs"), tmp_path / "logs")
    assert codes == [0, 0], node_output(tmp_path / "logs")
    assert_same_run(one_node, run_dir)
    assert BATCH_LINE.format(nodes=" on 2 nodes") in (run_dir / "log.txt").read_text(encoding="utf-8")


def wait_for_text(path: Path, text: str, nodes: list[subprocess.Popen], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and text in path.read_text(encoding="utf-8"):
            return
        assert all(node.poll() is None for node in nodes), f"a node ended before {text!r}"
        time.sleep(0.1)
    raise AssertionError(f"no {text!r} in {path} within {timeout} s")


def test_a_two_node_run_stopped_by_sigterm_resumes_exactly(one_node, fake_cifar100, tiny_teacher, tmp_path):
    """SIGTERM to each node's torchrun (what Slurm sends): a checkpoint, the resume hint, then an exact resume."""
    run_dir, logs, port = tmp_path / "run", tmp_path / "stopped", free_port()
    args = ["train", str(CRD_RECIPE), *overrides(fake_cifar100, tiny_teacher), "--run-dir", str(run_dir)]
    nodes = start_nodes([torchrun_node(rank, port, *args) for rank in (0, 1)], logs, fault="slow_steps=0.5")
    try:
        wait_for_text(logs / "node0.out", "epoch 1/2 step 2/", nodes)
        for node in nodes:
            node.send_signal(signal.SIGTERM)
    finally:
        codes = wait_nodes(nodes, logs, timeout=180)
    assert codes == [1, 1], node_output(logs)  # torchrun reports a stopped worker as 1; outcome.json has the truth
    assert read_outcome(run_dir).status == "stopped"
    hint = f"Continue with: torchrun --nproc_per_node 1 --nnodes 2 <your rendezvous options> -m distill train --resume {run_dir}"
    for rank in (0, 1):  # the local rank 0 of each node speaks for it, once
        err = node_output(logs, rank=rank)
        assert err.count("stopped by SIGTERM") == 1 and hint in err, err
    stopped = torch.load(run_dir / "checkpoints/last.pt", weights_only=False)
    assert len(stopped["processes"]) == 2 and 2 <= stopped["state"]["step"] < 8

    port = free_port()
    resume = ["train", "--resume", str(run_dir)]
    codes = wait_nodes(start_nodes([torchrun_node(rank, port, *resume) for rank in (0, 1)], tmp_path / "resumed"),
                       tmp_path / "resumed")  # fmt: skip
    assert codes == [0, 0], node_output(tmp_path / "resumed")
    assert_same_run(one_node, run_dir)
