"""How a run starts, changes and ends, through the CLI (issue 13's trainer-side bugs).

* a resume forced with other optimiser or schedule values trains on the new values
  (and a change that cannot be applied is refused by name); a finished run can be
  extended with a longer schedule;
* one process at a time trains a run directory;
* every run directory says how it ended (``outcome.json`` and ``log.txt``);
* bad input (a seed out of range, a plugin loss that raises, a full disk inside
  ``torch.save``) ends with one line and exit status 2;
* ``--dry-run`` checks everything a start checks and writes nothing.

Runs are in-process on the fake CIFAR-100: KD resnet14 → resnet8, 256 images in
batches of 64, 4 steps an epoch.
"""

from __future__ import annotations

import errno
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from kd_runs import KD_RECIPE, STEP_LOSSES, TESTS, kd_overrides, train

from distill.cli.main import main
from distill.engine import checkpoint as checkpoint_module
from distill.engine.metrics import read_metrics
from distill.engine.signals import EXIT_STOPPED
from distill.files.rundir import RunDirLock, read_outcome

pytestmark = pytest.mark.e2e

REPO = TESTS.parent



@pytest.fixture(scope="module")
def plugin() -> Path:
    return STEP_LOSSES


def resume(run_dir: Path, *extra: str) -> int:
    return main(["train", "--resume", str(run_dir), *extra, "--no-tensorboard"])


def stopped_run(run_dir: Path, plugin: Path, data_root: Path, teacher: Path, capsys) -> None:
    """A run that SIGTERM stopped after step 3, in the middle of epoch 1."""
    stop = "{type: signal_at_step, weight: 1.0, step: 2, marker: " + str(run_dir.parent / "signalled") + "}"
    assert train(run_dir, *kd_overrides(data_root, teacher), f"plugins=[{plugin}]", f"losses.stop={stop}") == EXIT_STOPPED
    capsys.readouterr()


def saved(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


def epoch_rows(run_dir: Path) -> list[dict]:
    return [row for row in read_metrics(run_dir) if "test/top1" in row]


@pytest.mark.slow
def test_a_forced_optimizer_change_takes_effect_from_the_resumed_step(plugin, fake_cifar100, tiny_teacher, tmp_path, capsys):
    run_dir = tmp_path / "run"
    stopped_run(run_dir, plugin, fake_cifar100, tiny_teacher, capsys)
    group = saved(run_dir)["optimizer"]["param_groups"][0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.05, 0.9, 5e-4)

    changes = ["optimizer.lr=0.01", "optimizer.momentum=0.5", "optimizer.weight_decay=0.001"]
    assert resume(run_dir, *changes, "--force") == 0
    assert "applied from step 4: optimizer.momentum = 0.5; optimizer.weight_decay = 0.001; lr 0.01" in capsys.readouterr().out
    group = saved(run_dir)["optimizer"]["param_groups"][0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["initial_lr"]) == (0.01, 0.5, 0.001, 0.01)
    rows = epoch_rows(run_dir)
    assert [(r["lr"], r["momentum"], r["weight_decay"]) for r in rows] == [(0.01, 0.5, 0.001)] * 2
    assert "lr: 0.01" in (run_dir / "recipe.yaml").read_text()


@pytest.mark.slow
def test_a_forced_schedule_change_moves_the_decay(plugin, fake_cifar100, tiny_teacher, tmp_path, capsys):
    run_dir = tmp_path / "run"
    stopped_run(run_dir, plugin, fake_cifar100, tiny_teacher, capsys)
    assert resume(run_dir, "schedule.milestones=[1]", "schedule.gamma=0.5", "schedule.epochs=3", "--force") == 0
    rows = epoch_rows(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["lr"] for r in rows] == [0.05, 0.025, 0.025]  # 0.05 · 0.5^#{m ≤ epochs done}
    scheduler = saved(run_dir)["scheduler"]
    assert dict(scheduler["milestones"]) == {1: 1} and scheduler["gamma"] == 0.5


def test_a_change_that_cannot_be_applied_is_refused_by_name_even_when_forced(
    plugin, fake_cifar100, tiny_teacher, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    stopped_run(run_dir, plugin, fake_cifar100, tiny_teacher, capsys)
    assert resume(run_dir, "optimizer.name=adamw", "--force") == 2
    assert "optimizer.name cannot change when resuming" in capsys.readouterr().err
    assert resume(run_dir, "data.batch_size=32", "--force") == 2
    assert "data.batch_size cannot change in the middle of an epoch" in capsys.readouterr().err
    assert saved(run_dir)["state"]["step"] == 3


@pytest.mark.slow
def test_a_finished_run_is_extended_by_a_forced_longer_schedule(fake_cifar100, tiny_teacher, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert train(run_dir, *kd_overrides(fake_cifar100, tiny_teacher, "schedule.epochs=1")) == 0
    assert resume(run_dir, "schedule.epochs=2") == 2
    assert "schedule.epochs=N --force" in capsys.readouterr().err
    assert resume(run_dir, "schedule.epochs=1", "--force") == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert resume(run_dir, "schedule.epochs=2", "--force") == 0
    assert [r["epoch"] for r in epoch_rows(run_dir)] == [1, 2]
    assert json.loads((run_dir / "summary.json").read_text())["epochs"] == 2
    assert saved(run_dir)["state"]["step"] == 8 and read_outcome(run_dir).status == "finished"


@pytest.mark.slow
def test_a_second_process_on_a_run_directory_is_refused_with_the_holder(
    plugin, fake_cifar100, tiny_teacher, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    stopped_run(run_dir, plugin, fake_cifar100, tiny_teacher, capsys)
    holder = RunDirLock(run_dir)
    holder.acquire()  # as a concurrent `distill train --resume` would
    try:
        assert resume(run_dir) == 2
        err = capsys.readouterr().err
        assert "is being trained by another process (pid" in err and "on host" in err and "Traceback" not in err
        assert saved(run_dir)["state"]["step"] == 3 and len(epoch_rows(run_dir)) == 0
    finally:
        holder.release()
    assert resume(run_dir) == 0


@pytest.mark.slow
def test_every_way_a_run_ends_is_recorded(plugin, fake_cifar100, tiny_teacher, tmp_path, capsys):
    finished, stopped, failed = tmp_path / "finished", tmp_path / "stopped", tmp_path / "failed"
    assert train(finished, *kd_overrides(fake_cifar100, tiny_teacher, "schedule.epochs=1")) == 0
    assert read_outcome(finished).status == "finished"
    assert (finished / "log.txt").read_text().rstrip().endswith("run ended: finished")
    stopped_run(stopped, plugin, fake_cifar100, tiny_teacher, capsys)
    assert read_outcome(stopped).status == "stopped" and "stopped by SIGTERM" in read_outcome(stopped).message
    raising = "{type: raises_at_step, weight: 1.0, step: 2}"
    assert train(failed, *kd_overrides(fake_cifar100, tiny_teacher), f"plugins=[{plugin}]", f"losses.bad={raising}") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "losses.bad (RaisesAtStep) failed while computing its term" in err
    assert "IndexError: the plugin indexed past the batch" in err
    outcome = read_outcome(failed)
    assert outcome.status == "failed" and outcome.ended_badly and "IndexError" in outcome.message
    assert "run ended: failed: losses.bad" in (failed / "log.txt").read_text()


def test_a_plugin_that_raises_while_building_leaves_nothing(plugin, fake_cifar100, tiny_teacher, tmp_path, capsys):
    broken = "{type: raises_at_step, weight: 1.0, in_constructor: true}"
    run_dir = tmp_path / "run"
    assert train(run_dir, *kd_overrides(fake_cifar100, tiny_teacher), f"plugins=[{plugin}]", f"losses.bad={broken}") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "losses.bad: building loss 'raises_at_step' failed: ZeroDivisionError" in err
    assert not run_dir.exists()


def test_a_seed_out_of_range_is_a_recipe_error(capsys):
    assert main(["train", str(KD_RECIPE), "seed=-1"]) == 2
    err = capsys.readouterr().err
    assert "seed: must be an integer from 0 to 2**32 - 1" in err and "Traceback" not in err


@pytest.mark.slow
def test_a_full_disk_inside_torch_save_names_the_disk_not_the_zip_writer(
    fake_cifar100, tiny_teacher, tmp_path, capsys, monkeypatch
):
    """The real torch.save, writing to a disk that fills after 1 000 bytes: its RuntimeError hides the OSError."""
    real_save = torch.save

    class FillingFile(io.RawIOBase):
        def __init__(self, handle):
            self.handle, self.written = handle, 0

        def writable(self):
            return True

        def write(self, data):
            self.written += len(data)
            if self.written > 1000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.handle.write(data)

    monkeypatch.setattr(checkpoint_module.torch, "save", lambda obj, handle: real_save(obj, FillingFile(handle)))
    run_dir = tmp_path / "run"
    assert train(run_dir, *kd_overrides(fake_cifar100, tiny_teacher, "schedule.epochs=1")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "unexpected pos" not in err
    assert "No space left on device" in err and "the disk is full: free space" in err
    assert read_outcome(run_dir).status == "failed"


@pytest.mark.slow
def test_the_last_line_states_its_protocol_without_claiming_a_paper(fake_cifar100, tiny_teacher, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert train(run_dir, *kd_overrides(fake_cifar100, tiny_teacher, "schedule.epochs=1")) == 0
    out = capsys.readouterr().out
    assert "[last epoch of 1, one run, seed 0]" in out and "CRD paper reports" not in out
    assert "[selected on the test set: not a result]" in out


@pytest.mark.slow
def test_the_run_records_absolute_checkpoint_paths(fake_cifar100, tiny_teacher, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tiny_teacher.parent)
    run_dir = tmp_path / "run"
    relative = [o for o in kd_overrides(fake_cifar100, tiny_teacher, "schedule.epochs=1") if not o.startswith("teacher.checkpoint")]
    assert train(run_dir, *relative, f"teacher.checkpoint={tiny_teacher.name}") == 0
    recorded = (run_dir / "recipe.yaml").read_text()
    assert f"checkpoint: {tiny_teacher}" in recorded


def test_dry_run_reports_every_check_and_writes_nothing(fake_cifar100, tiny_teacher, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["train", str(KD_RECIPE), *kd_overrides(fake_cifar100, tiny_teacher), "losses.crd={weight: 0.8}",
                 "--run-dir", str(run_dir), "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and not run_dir.exists()
    assert "schedule.epochs = 2    [command-line override]" in out
    assert f"optimizer.momentum = 0.9    [{REPO}/recipes/cifar100/_base_/cifar100.yaml]" in out
    assert f"teacher         resnet14 from {tiny_teacher} (sha256 " in out
    assert "256 train / 100 test images, 100 classes" in out
    assert "loss crd" in out and "built on the real feature shapes" in out and "MiB of buffers" in out
    assert "parameters      student resnet8:" in out and "memory " in out
    assert "no run directory was written" in out


def test_dry_run_fails_like_a_start_would(fake_cifar100, tmp_path, capsys):
    missing = tmp_path / "nowhere.pth"
    code = main(["train", str(KD_RECIPE), *kd_overrides(fake_cifar100, missing), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and f"teacher.checkpoint: file {missing} does not exist" in err


def as_format_2(checkpoint: dict) -> dict:
    """The checkpoint as distill wrote it before format 3: the ``state`` counters as top-level keys."""
    older = {key: value for key, value in checkpoint.items() if key != "state"}
    return {**older, **checkpoint["state"], "format": "distill-checkpoint/2"}


def test_a_format_2_checkpoint_resumes_exactly_like_the_format_3_one(plugin, fake_cifar100, tiny_teacher, tmp_path, capsys):
    stopped = tmp_path / "stopped"
    stopped_run(stopped, plugin, fake_cifar100, tiny_teacher, capsys)
    assert saved(stopped)["format"] == "distill-checkpoint/3" and saved(stopped)["state"]["step"] == 3
    older = tmp_path / "older"
    shutil.copytree(stopped, older)
    torch.save(as_format_2(saved(older)), older / "checkpoints" / "last.pt")
    assert resume(stopped) == 0 and resume(older) == 0
    for key, value in saved(stopped)["model"].items():
        assert torch.equal(value, saved(older)["model"][key]), key
    assert saved(older)["format"] == "distill-checkpoint/3"  # what resumes writes the current format
    assert [r["test/top1"] for r in epoch_rows(older)] == [r["test/top1"] for r in epoch_rows(stopped)]


def test_a_format_1_checkpoint_is_refused_for_resume_by_name(plugin, fake_cifar100, tiny_teacher, tmp_path, capsys):
    run_dir = tmp_path / "run"
    stopped_run(run_dir, plugin, fake_cifar100, tiny_teacher, capsys)
    first = {key: value for key, value in saved(run_dir).items() if key in ("epoch", "arch", "model", "num_classes")}
    torch.save({**first, "format": "distill-checkpoint/1"}, run_dir / "checkpoints" / "last.pt")
    assert resume(run_dir) == 2
    assert "format 'distill-checkpoint/1'" in capsys.readouterr().err


def test_a_resumed_run_reports_the_training_time_of_all_its_processes(plugin, fake_cifar100, tiny_teacher, tmp_path, capsys):
    run_dir = tmp_path / "run"
    stopped_run(run_dir, plugin, fake_cifar100, tiny_teacher, capsys)
    before = saved(run_dir)["train_seconds"]
    assert before > 0
    assert resume(run_dir) == 0
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    resumed_epochs = sum(row["time/epoch_s"] for row in epoch_rows(run_dir))  # every epoch row is the resumed process's
    assert summary["seconds"] >= before + resumed_epochs  # the stopped process's time is not lost
    assert saved(run_dir)["train_seconds"] == pytest.approx(summary["seconds"], abs=1.0)
    assert "summed over the run's resumes" in summary["seconds_note"]
