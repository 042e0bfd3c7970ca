"""Guarded training and resume checks through the CLI: non-finite steps, changed recipes and teachers, a full disk.

Runs are in-process (``distill.cli.main.main``) on a fake CIFAR-100. The plugin file
``tests/step_losses.py`` gives the losses for the purpose:

* ``bad_at_steps``: zero (with a gradient) except at the listed training steps,
  where it is NaN (``kind: loss``) or finite with a NaN gradient (``kind: gradient``);
* ``signal_at_step``: zero, but sends this process SIGTERM at the given step, which
  is how a scheduler's preemption notice arrives.
"""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kd_runs import KD_RECIPE, STEP_LOSSES, kd_overrides, train

from distill.cli.main import main
from distill.engine import checkpoint as checkpoint_module
from distill.engine.metrics import read_metrics
from distill.engine.signals import EXIT_STOPPED

REPO = Path(__file__).resolve().parent.parent
FAULT_PLUGIN = Path(__file__).resolve().parent / "fault_plugin.py"



@pytest.fixture(scope="module")
def plugin() -> Path:
    return STEP_LOSSES


def with_loss(plugin: Path, loss: str) -> list[str]:
    return [f"plugins=[{plugin}]", f"losses.extra={loss}"]


def last_checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


def all_finite(state: dict) -> bool:
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("kind,problem", [("loss", "loss term extra = nan"), ("gradient", "the gradient became non-finite")])
def test_a_non_finite_step_stops_the_run_and_saves_nothing_after_it(
    kind, problem, plugin, fake_cifar100, tiny_teacher, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    bad = "{type: bad_at_steps, weight: 1.0, steps: [6], kind: " + kind + "}"
    code = train(run_dir, *kd_overrides(fake_cifar100, tiny_teacher, "checkpoint_every_steps=2"), *with_loss(plugin, bad))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "training stopped at step 6 (epoch 2, batch 2)" in err and problem in err
    assert f"the last good checkpoint is {run_dir / 'checkpoints' / 'last.pt'} (epoch 1, step 4)" in err
    assert "lower optimizer.lr" in err and "skip_nonfinite" in err and f"--resume {run_dir}" in err
    saved = last_checkpoint(run_dir)  # the step-6 checkpoint was never written over it
    assert (saved["epoch"], saved["state"]["batch"], saved["state"]["step"]) == (1, 0, 4) and all_finite(saved["model"])
    assert not (run_dir / "summary.json").exists()


@pytest.mark.slow
@pytest.mark.e2e
def test_skip_nonfinite_drops_bad_steps_up_to_its_budget(plugin, fake_cifar100, tiny_teacher, tmp_path, capsys):
    bad = "{type: bad_at_steps, weight: 1.0, steps: [2, 5]}"
    run_dir = tmp_path / "run"
    assert train(run_dir, *kd_overrides(fake_cifar100, tiny_teacher, "skip_nonfinite=2"), *with_loss(plugin, bad)) == 0
    log = (run_dir / "log.txt").read_text()
    assert "step 2 (epoch 1, batch 2): loss term extra = nan became non-finite; step skipped (1 of skip_nonfinite=2)" in log
    assert "step 5 (epoch 2, batch 1)" in log and "(2 of skip_nonfinite=2)" in log
    final = last_checkpoint(run_dir)
    assert final["skipped_steps"] == 2 and final["state"]["step"] == 8 and all_finite(final["model"])
    assert all(math.isfinite(row["train/loss/total"]) for row in read_metrics(run_dir) if "train/loss/total" in row)

    capsys.readouterr()
    over_budget = "{type: bad_at_steps, weight: 1.0, steps: [2, 3, 5]}"
    code = train(tmp_path / "over", *kd_overrides(fake_cifar100, tiny_teacher, "skip_nonfinite=2"), *with_loss(plugin, over_budget))
    assert code == 2 and "training stopped at step 5" in capsys.readouterr().err


@pytest.mark.slow
def test_a_skipped_step_changes_no_parameter_and_no_optimiser_state(plugin, fake_cifar100, tiny_teacher, tmp_path):
    from distill.engine.trainer import Trainer
    from distill.recipe.load import load_recipe
    from distill.recipe.resolve import resolve_recipe

    bad = "{type: bad_at_steps, weight: 1.0, steps: [2]}"
    recipe = load_recipe(KD_RECIPE, [*kd_overrides(fake_cifar100, tiny_teacher, "skip_nonfinite=1"), *with_loss(plugin, bad)])
    trainer = Trainer(resolve_recipe(recipe), tmp_path / "run", tensorboard=False, echo=lambda line: None)
    trainer.train_loader.set_epoch(1)
    batches = iter(trainer.train_loader)
    trainer.train_step(*next(batches))
    assert trainer.last_step_applied
    parameters = [p.detach().clone() for p in trainer.trained_parameters]
    momenta = [trainer.optimizer.state[p]["momentum_buffer"].clone() for p in trainer.trained_parameters]
    trainer.train_step(*next(batches))
    assert not trainer.last_step_applied and trainer.guard.skipped == 1 and trainer.state.step == 2
    assert all(torch.equal(a, b) for a, b in zip(parameters, trainer.trained_parameters))
    assert all(torch.equal(a, trainer.optimizer.state[p]["momentum_buffer"]) for a, p in zip(momenta, trainer.trained_parameters))
    trainer.train_step(*next(batches))
    assert trainer.last_step_applied and not all(torch.equal(a, b) for a, b in zip(parameters, trainer.trained_parameters))


def stopped_run(run_dir: Path, plugin: Path, data_root: Path, teacher: Path, capsys) -> list[str]:
    """A run that SIGTERM stopped after step 3 (mid-epoch 1); returns its overrides."""
    signal_loss = "{type: signal_at_step, weight: 1.0, step: 2, marker: " + str(run_dir.parent / "signalled") + "}"
    overrides = [*kd_overrides(data_root, teacher), *with_loss(plugin, signal_loss)]
    assert train(run_dir, *overrides) == EXIT_STOPPED
    err = capsys.readouterr().err
    assert "stopped by SIGTERM in epoch 1 after batch 3" in err and f"distill train --resume {run_dir}" in err
    return overrides


@pytest.mark.slow
@pytest.mark.e2e
def test_sigterm_in_process_checkpoints_where_it_stopped(plugin, fake_cifar100, tiny_teacher, tmp_path, capsys):
    run_dir = tmp_path / "run"
    stopped_run(run_dir, plugin, fake_cifar100, tiny_teacher, capsys)
    saved = last_checkpoint(run_dir)
    assert (saved["epoch"], saved["state"]["batch"], saved["state"]["step"]) == (0, 3, 3)
    assert main(["train", "--resume", str(run_dir), "--no-tensorboard"]) == 0
    rows = [row for row in read_metrics(run_dir) if "test/top1" in row]
    assert [row["epoch"] for row in rows] == [1, 2] and last_checkpoint(run_dir)["state"]["step"] == 8
    info = json.loads((run_dir / "run.json").read_text())
    assert [(r["from_epoch"], r["from_batch"], r["from_step"]) for r in info["resumes"]] == [(0, 3, 3)]


@pytest.mark.slow
@pytest.mark.e2e
def test_resuming_with_another_recipe_is_refused_unless_forced(plugin, fake_cifar100, tiny_teacher, tmp_path, capsys):
    run_dir = tmp_path / "run"
    stopped_run(run_dir, plugin, fake_cifar100, tiny_teacher, capsys)
    assert main(["train", "--resume", str(run_dir), "optimizer.lr=0.1", "--no-tensorboard"]) == 2
    err = capsys.readouterr().err
    assert "the recipe differs" in err and "optimizer.lr: run has 0.05, now 0.1" in err and "--force" in err
    assert last_checkpoint(run_dir)["state"]["step"] == 3  # untouched

    assert main(["train", "--resume", str(run_dir), "optimizer.lr=0.1", "--force", "--no-tensorboard"]) == 0
    info = json.loads((run_dir / "run.json").read_text())
    assert any("optimizer.lr" in note for resume in info["resumes"] for note in resume["forced"])
    assert "lr: 0.1" in (run_dir / "recipe.yaml").read_text()


@pytest.mark.slow
@pytest.mark.e2e
def test_a_result_neutral_change_resumes_without_force(plugin, fake_cifar100, tiny_teacher, tmp_path, capsys):
    run_dir = tmp_path / "run"
    stopped_run(run_dir, plugin, fake_cifar100, tiny_teacher, capsys)
    assert main(["train", "--resume", str(run_dir), "log_every=3", "data.num_workers=1", "--no-tensorboard"]) == 0


@pytest.mark.slow
@pytest.mark.e2e
def test_resuming_with_another_teacher_file_is_refused_unless_forced(plugin, fake_cifar100, tiny_teacher, tmp_path, capsys):
    from distill.models import create_model

    teacher = tmp_path / "teacher.pth"
    teacher.write_bytes(tiny_teacher.read_bytes())
    run_dir = tmp_path / "run"
    stopped_run(run_dir, plugin, fake_cifar100, teacher, capsys)
    torch.manual_seed(1)
    torch.save({"model": create_model("resnet14").state_dict()}, teacher)  # same path, other weights
    assert main(["train", "--resume", str(run_dir), "--no-tensorboard"]) == 2
    err = capsys.readouterr().err
    assert "the teacher checkpoint differs" in err and "sha256" in err and "--force" in err
    assert main(["train", "--resume", str(run_dir), "--no-tensorboard", "--force"]) == 0


@pytest.mark.e2e
def test_resume_needs_a_run_directory(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["train", "--resume", str(tmp_path / "empty")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["train"]) == 2
    assert "give a recipe" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.e2e
def test_a_run_killed_before_its_first_checkpoint_starts_over_in_place(fake_cifar100, tiny_teacher, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "log.txt").write_text("an earlier attempt\n")
    (run_dir / "metrics.jsonl").write_text('{"epoch": 0, "step": 0, "teacher/top1": 1.0}\n')
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / ".last.pt.tmp-123").write_bytes(b"half")
    assert train(run_dir, *kd_overrides(fake_cifar100, tiny_teacher, "schedule.epochs=1")) == 0
    assert (run_dir / "log.txt").read_text().startswith("an earlier attempt\n")
    assert [row["epoch"] for row in read_metrics(run_dir)] == [0, 1]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]


@pytest.mark.slow
@pytest.mark.e2e
def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(fake_cifar100, tiny_teacher, tmp_path, capsys, monkeypatch):
    real_save, calls = torch.save, []

    def save_until_the_disk_fills(obj, handle, *args, **kwargs):
        calls.append(1)
        if len(calls) >= 4:  # last.pt at step 2, last.pt and best.pt at step 4 fit; last.pt at step 6 does not
            handle.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save_until_the_disk_fills)
    run_dir = tmp_path / "run"
    assert train(run_dir, *kd_overrides(fake_cifar100, tiny_teacher, "checkpoint_every_steps=2")) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert "Traceback" not in err and "No space left on device" in err and "the disk is full: free space" in err
    assert "the previous last.pt is intact" in err and f"distill train --resume {run_dir}" in err
    saved = last_checkpoint(run_dir)
    assert (saved["epoch"], saved["state"]["batch"], saved["state"]["step"]) == (1, 0, 4)
    assert not list((run_dir / "checkpoints").glob(".*")) and not (run_dir / "summary.json").exists()


@pytest.mark.slow
@pytest.mark.e2e
def test_a_failing_rank_ends_every_rank(fake_cifar100, tiny_teacher, tmp_path):
    """Two CPU processes; rank 1 raises at step 2: the whole job exits non-zero instead of hanging."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
        "-m", "distill", "train", str(KD_RECIPE), *kd_overrides(fake_cifar100, tiny_teacher),
        f"plugins=[{FAULT_PLUGIN}]", "--run-dir", str(tmp_path / "run"), "--no-tensorboard",
    ]
    env = {**os.environ, "DISTILL_FAULT": "fail_on_rank=1:2", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env, cwd=REPO)
    assert result.returncode != 0
    assert "injected failure on rank 1 at step 2" in result.stderr
    assert not (tmp_path / "run" / "summary.json").exists()
