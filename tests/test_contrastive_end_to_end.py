"""CRD and ML-CPC through the CLI on a fake CIFAR-100; banks in the checkpoint; banks across 2 processes."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill.cli.main import main
from distill.engine.metrics import read_metrics

REPO = Path(__file__).resolve().parent.parent


def overrides(data_root: Path, teacher: Path) -> list[str]:
    return [
        f"data.root={data_root}", "data.verify=false", "data.download=false", "data.num_workers=0",
        "schedule.epochs=1", "log_every=2", "student.arch=resnet8", "teacher.name=null", "teacher.arch=resnet14",
        f"teacher.checkpoint={teacher}",
    ]


@pytest.mark.parametrize("method,loss", [("crd_kd", "crd"), ("ml_cpc", "ml_cpc")])
def test_contrastive_run_trains_and_checkpoints_its_banks(method, loss, fake_cifar100, tiny_teacher, tmp_path, capsys):
    run_dir = tmp_path / method
    recipe = REPO / f"recipes/cifar100/{method}/resnet32x4-resnet8x4.yaml"
    # K=16384 would exceed the 256-image fake set; the reference then samples with replacement.
    args = ["train", str(recipe), *overrides(fake_cifar100, tiny_teacher), f"losses.{loss}.num_negatives=200", "--run-dir", str(run_dir)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"loss {loss}:" in out
    row = read_metrics(run_dir)[-1]
    assert math.isfinite(row[f"train/loss/{loss}"]) and math.isfinite(row["test/top1"])
    checkpoint = torch.load(run_dir / "checkpoints/last.pt", map_location="cpu", weights_only=True)
    banks = {k: v for k, v in checkpoint["losses"].items() if k.endswith("memory.memory")}
    assert set(banks) == {f"{loss}.student_memory.memory", f"{loss}.teacher_memory.memory"}
    assert all(v.shape == (256, 128) for v in banks.values())
    written = banks[f"{loss}.student_memory.memory"].norm(dim=1)
    assert torch.allclose(written, torch.ones(256), atol=1e-5)  # one epoch wrote every row (unit norm)

    from distill.losses import LossContext, build_loss
    from distill.models import create_model, probe_feature_shapes

    shapes = lambda arch: probe_feature_shapes(create_model(arch), (3, 32, 32))  # noqa: E731
    context = LossContext(student=shapes("resnet8"), teacher=shapes("resnet14"), num_classes=100, dataset_size=256, labels=torch.zeros(256, dtype=torch.long))
    fresh = build_loss(loss, context, {"num_negatives": 200})
    fresh.load_state_dict({k.removeprefix(f"{loss}."): v for k, v in checkpoint["losses"].items() if k.startswith(f"{loss}.")})
    assert torch.equal(fresh.student_memory.memory, banks[f"{loss}.student_memory.memory"])
    if loss == "crd":
        assert torch.isfinite(fresh.log_z).all()


WORKER = r"""
import sys, torch
from accelerate import Accelerator
from distill.losses import Batch, LossContext, build_loss
from distill.models.features import FeatureRecord, FeatureShapes
accelerator = Accelerator(cpu=True)
rank, world = accelerator.process_index, accelerator.num_processes
N, C = 40, 4
shapes = FeatureShapes(maps=[], preact_maps=[], pooled=(6,), logits=(C,))
context = LossContext(student=shapes, teacher=shapes, num_classes=C, dataset_size=N, labels=torch.arange(N) % C, batch_size=4)
torch.manual_seed(0)
loss = build_loss(sys.argv[2], context, {"num_negatives": 12, "feat_dim": 5})
results = {}
for step in range(3):
    g = torch.Generator().manual_seed(100 + step)
    indices = torch.randperm(N, generator=g)[: 4 * world]
    student_all, teacher_all = torch.randn(4 * world, 6, generator=g), torch.randn(4 * world, 6, generator=g)
    mine = slice(4 * rank, 4 * (rank + 1))
    record = lambda pooled: FeatureRecord(maps=[], preact_maps=[], pooled=pooled, logits=torch.zeros(4, C))
    batch = Batch(torch.zeros(4), indices[mine] % C, indices[mine])
    loss(record(student_all[mine]), record(teacher_all[mine]), batch)
    results[f"candidates{step}"] = loss.candidates(batch, loss.teacher_memory)
results.update({k: v for k, v in loss.state_dict().items()})
torch.save(results, f"{sys.argv[1]}/rank{rank}.pt")
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("loss_type", ["crd", "ml_cpc"])
def test_two_processes_hold_identical_banks_equal_to_one_process(loss_type, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script), str(tmp_path), loss_type]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for key in ("student_memory.memory", "teacher_memory.memory", "log_z"):
        assert torch.allclose(rank0[key], rank1[key], rtol=0, atol=0, equal_nan=True), key  # bit-identical
    assert not torch.equal(rank0["candidates2"], rank1["candidates2"])  # negatives independent per process

    # One process fed the same global batches (heads identical: same seed) ends with the same banks.
    from distill.losses import Batch, LossContext, build_loss
    from distill.models.features import FeatureShapes

    shapes = FeatureShapes(maps=[], preact_maps=[], pooled=(6,), logits=(4,))
    context = LossContext(student=shapes, teacher=shapes, num_classes=4, dataset_size=40, labels=torch.arange(40) % 4, batch_size=8)
    torch.manual_seed(0)
    single = build_loss(loss_type, context, {"num_negatives": 12, "feat_dim": 5})
    for step in range(3):
        g = torch.Generator().manual_seed(100 + step)
        indices = torch.randperm(40, generator=g)[:8]
        student_all, teacher_all = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
        batch = Batch(torch.zeros(8), indices % 4, indices)
        with torch.no_grad():
            single.update_memory(batch, single.student_head(student_all), single.teacher_head(teacher_all))
    for key in ("student_memory.memory", "teacher_memory.memory"):
        assert torch.allclose(single.state_dict()[key], rank0[key], atol=1e-6), key
