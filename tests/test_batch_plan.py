"""The batch plan: per-process and effective batch, the lr and the batch it was tuned for, and the warning.

Numbers are checked against hand-computed values; the warning's text is pinned
whole once, because users act on it. ``optimizer.reference_batch_size`` only
reports: a resume with another value (or a run recorded before the key existed)
is not refused, and the dry run shows the same lines as a start.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from distill.cli.main import main
from distill.engine.batch_plan import BatchPlan, batch_line, batch_lines, batch_plan, batch_warning
from distill.engine.resume import differing_keys, recipe_differences, recorded_form
from distill.engine.startup import start_lines
from distill.errors import DistillError
from distill.recipe.load import load_recipe

REPO = Path(__file__).resolve().parent.parent
KD_RECIPE = REPO / "recipes/cifar100/kd/resnet32x4-resnet8x4.yaml"


def recipe(*overrides: str):
    return load_recipe(KD_RECIPE, list(overrides))


def plan(per_process: int, processes: int, lr: float, reference: int | None, nodes: int = 1) -> BatchPlan:
    overrides = [f"data.batch_size={per_process}", f"optimizer.lr={lr}"]
    if reference is not None:
        overrides.append(f"optimizer.reference_batch_size={reference}")
    return batch_plan(recipe(*overrides), processes, nodes)


@pytest.mark.parametrize(
    ("per_process", "processes", "lr", "reference", "effective", "scaled_lr", "restoring"),
    [
        (64, 1, 0.05, None, 64, 0.05, 64),  # the recipe as written: reference = data.batch_size
        (64, 2, 0.05, None, 128, 0.1, 32),  # two processes at the recipe's batch: twice the batch
        (64, 8, 0.05, 64, 512, 0.4, 8),
        (16, 4, 0.05, 64, 64, 0.05, 16),  # four processes sharing the reference batch
        (64, 3, 0.05, 64, 192, 0.15, None),  # 64 is not a multiple of 3 processes
        (128, 1, 0.1, 64, 128, 0.2, 64),  # one process, a larger batch than the lr's
        (32, 2, 0.01, 128, 64, 0.005, 64),  # smaller than the reference: linear scaling lowers the lr
    ],
)
def test_effective_batch_and_linear_scaling_lr(per_process, processes, lr, reference, effective, scaled_lr, restoring):
    result = plan(per_process, processes, lr, reference)
    assert result.per_process == per_process and result.processes == processes and result.lr == lr
    assert result.reference == (reference if reference is not None else per_process)
    assert result.effective == effective
    assert result.linear_scaling_lr == pytest.approx(scaled_lr, rel=1e-12)
    assert result.per_process_for_reference == restoring


def test_no_warning_when_the_effective_batch_is_the_reference():
    assert batch_warning(plan(64, 1, 0.05, None)) is None
    assert batch_warning(plan(16, 4, 0.05, 64, nodes=2)) is None
    assert batch_lines(plan(64, 1, 0.05, None)) == [
        "batch 64 per process × 1 process = effective batch 64 | lr 0.05, tuned for batch 64 "
        "(data.batch_size on one process; optimizer.reference_batch_size is unset)"
    ]


def test_the_warning_gives_the_scaled_lr_and_each_way_out():
    two_nodes = plan(64, 4, 0.05, 64, nodes=2)
    assert batch_lines(two_nodes) == [
        "batch 64 per process × 4 processes on 2 nodes = effective batch 256 | lr 0.05, tuned for batch 64 "
        "(optimizer.reference_batch_size)",
        "warning: effective batch 256 differs from batch 64, which lr 0.05 was tuned for; distill does not scale the "
        "lr itself. Pass optimizer.lr=0.2 (linear scaling: 0.05 × 256/64), or data.batch_size=16 (effective batch 64), "
        "or optimizer.reference_batch_size=256 if lr 0.05 is already meant for batch 256",
    ]


def test_the_warning_offers_no_per_process_batch_when_none_gives_the_reference():
    warning = batch_warning(plan(64, 3, 0.05, 64))
    assert warning is not None and "optimizer.lr=0.15 " in warning  # 0.15, not 0.15000000000000002
    assert "data.batch_size=" not in warning
    assert warning.endswith("or optimizer.reference_batch_size=192 if lr 0.05 is already meant for batch 192")


def test_one_node_is_not_mentioned():
    assert " on " not in batch_line(plan(64, 2, 0.05, None, nodes=1)).split("|")[0]
    assert "× 2 processes on 2 nodes =" in batch_line(plan(64, 2, 0.05, None, nodes=2))


def test_counts_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        batch_plan(recipe(), 0)


def test_the_reference_batch_must_be_positive():
    with pytest.raises(DistillError, match="optimizer.reference_batch_size: must be positive, got 0"):
        recipe("optimizer.reference_batch_size=0")


def test_the_reference_batch_does_not_change_the_result():
    """A run may resume with another reference batch, and a run recorded before the key existed resumes too."""
    before = recorded_form(recipe())
    del before["optimizer"]["reference_batch_size"]  # a recipe.yaml written before the key existed
    now = recorded_form(recipe("optimizer.reference_batch_size=256"))
    assert recipe_differences(before, now) == [] and differing_keys(before, now) == []
    changed_lr = recorded_form(recipe("optimizer.reference_batch_size=256", "optimizer.lr=0.1"))
    assert differing_keys(before, changed_lr) == ["optimizer.lr"]  # the neighbouring key still counts


def fake_built(processes: int) -> SimpleNamespace:
    accelerator = SimpleNamespace(device=torch.device("cpu"), num_processes=processes)
    return SimpleNamespace(accelerator=accelerator, train_size=256, test_size=100, data_path="device loader",
                           unwrapped=SimpleNamespace(losses={}))  # fmt: skip


def test_start_lines_report_the_batch_the_nodes_and_the_warning(monkeypatch):
    for name, value in {"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(name, value)
    lines = start_lines(recipe(), fake_built(4), run_dir="runs/x", resumed=None, last_saved="", forced=[], applied=[])
    assert lines[2] == (
        "batch 64 per process × 4 processes on 2 nodes = effective batch 256 | lr 0.05, tuned for batch 64 "
        "(data.batch_size on one process; optimizer.reference_batch_size is unset)"
    )
    assert lines[3].startswith("warning: effective batch 256 differs from batch 64") and "optimizer.lr=0.2 " in lines[3]
    assert lines[4].startswith("data: device loader")


def test_start_lines_of_one_process_carry_no_warning(monkeypatch):
    for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    lines = start_lines(recipe(), fake_built(1), run_dir="runs/x", resumed=None, last_saved="", forced=[], applied=[])
    assert [line for line in lines if line.startswith(("batch", "warning"))] == [
        "batch 64 per process × 1 process = effective batch 64 | lr 0.05, tuned for batch 64 "
        "(data.batch_size on one process; optimizer.reference_batch_size is unset)"
    ]


@pytest.mark.e2e
def test_the_dry_run_shows_the_batch_and_the_warning(fake_cifar100, tiny_teacher, tmp_path, capsys):
    code = main([
        "train", str(KD_RECIPE), f"data.root={fake_cifar100}", "data.verify=false", "data.num_workers=0",
        "student.arch=resnet8", "teacher.name=null", "teacher.arch=resnet14", f"teacher.checkpoint={tiny_teacher}",
        "data.batch_size=32", "optimizer.reference_batch_size=64", "--run-dir", str(tmp_path / "run"), "--dry-run",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "optimizer.reference_batch_size = 64    [command-line override]" in out
    assert (
        "  batch           32 per process × 1 process = effective batch 32 | lr 0.05, tuned for batch 64 "
        "(optimizer.reference_batch_size)\n"
    ) in out
    assert (
        "  warning         effective batch 32 differs from batch 64, which lr 0.05 was tuned for; distill does not "
        "scale the lr itself. Pass optimizer.lr=0.025 (linear scaling: 0.05 × 32/64), or data.batch_size=64 "
        "(effective batch 64), or optimizer.reference_batch_size=32 if lr 0.05 is already meant for batch 32\n"
    ) in out
