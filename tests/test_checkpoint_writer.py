"""Checkpoint writes in a background thread (``async_checkpoint``): same files, same errors, same resume.

The unit tests hold the background write back (an event) so that "training" changes
the tensors before the file is written; the runs compare a CRD run with the option on
against the same run with it off, uninterrupted and stopped by SIGTERM mid-epoch.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from collections import Counter, OrderedDict
from pathlib import Path

import pytest
import torch
from resume_checks import assert_same_run, final_state

from distill.cli.main import main
from distill.engine import checkpoint as checkpoint_module
from distill.engine import checkpoint_writer as writer_module
from distill.engine.checkpoint_writer import CheckpointWriter, snapshot
from distill.engine.resume import differing_keys
from distill.engine.signals import EXIT_STOPPED
from distill.errors import CheckpointError
from distill.recipe.load import load_recipe
from distill.recipe.serialize import recipe_to_dict

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
CRD_RECIPE = REPO / "recipes/cifar100/crd/resnet32x4-resnet8x4.yaml"
FAULT_PLUGIN = TESTS / "fault_plugin.py"
STEP_LOSSES = TESTS / "step_losses.py"


def held_back(monkeypatch) -> threading.Event:
    """Make every background write wait for the returned event before it writes (the real atomic_save then)."""
    release, real = threading.Event(), writer_module.atomic_save

    def late_save(obj, path):
        assert release.wait(timeout=60), "the test never released the write"
        real(obj, path)

    monkeypatch.setattr(writer_module, "atomic_save", late_save)
    return release


def full_disk(monkeypatch) -> None:
    """Every torch.save in atomic_save fails as on a full disk."""

    def no_space(obj, handle, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", no_space)


def test_the_background_write_holds_the_values_at_submit_time(tmp_path, monkeypatch):
    release = held_back(monkeypatch)
    weight, bank, momentum = torch.zeros(3), torch.arange(4.0), torch.ones(2)
    payload = {"model": {"w": weight}, "losses": [bank, (momentum, 7)], "epoch": 1}
    writer = CheckpointWriter(background=True)
    writer.submit(payload, [tmp_path / "last.pt", tmp_path / "best.pt"], "label")
    assert writer.in_flight == "label" and writer.written is None
    weight.add_(5), bank.mul_(-1), momentum.zero_()  # training goes on before the file is written
    payload["epoch"] = 2
    release.set()
    writer.wait()
    assert writer.written == "label" and writer.in_flight is None
    for name in ("last.pt", "best.pt"):
        saved = torch.load(tmp_path / name, weights_only=True)
        assert torch.equal(saved["model"]["w"], torch.zeros(3)) and torch.equal(saved["losses"][0], torch.arange(4.0))
        assert torch.equal(saved["losses"][1][0], torch.ones(2)) and saved["losses"][1][1] == 7 and saved["epoch"] == 1


def test_a_snapshot_copies_every_tensor_once_and_keeps_the_structure():
    shared = torch.ones(2, requires_grad=True)
    payload = {"a": shared, "b": [shared, ("x", None, 3.5)], "c": torch.tensor(5)}
    copy = snapshot(payload)
    assert copy["a"] is copy["b"][0] and copy["a"] is not shared and not copy["a"].requires_grad
    assert copy["a"].data_ptr() != shared.data_ptr() and copy["c"].data_ptr() != payload["c"].data_ptr()
    assert copy["b"][1] == ("x", None, 3.5) and isinstance(copy["b"], list) and torch.equal(copy["c"], torch.tensor(5))


def test_a_snapshot_keeps_dict_types_such_as_the_schedulers_counter():
    milestones = Counter({150: 1, 180: 1})
    copy = snapshot({"milestones": milestones, "ordered": OrderedDict(a=torch.zeros(1))})
    assert type(copy["milestones"]) is Counter and copy["milestones"] == milestones and copy["milestones"] is not milestones
    assert type(copy["ordered"]) is OrderedDict and list(copy["ordered"]) == ["a"]


def test_a_failed_background_write_is_raised_by_wait_with_atomic_saves_message(tmp_path, monkeypatch):
    full_disk(monkeypatch)
    path = tmp_path / "last.pt"
    with pytest.raises(CheckpointError) as inline:
        CheckpointWriter(background=False).submit({"epoch": 1}, [path])
    writer = CheckpointWriter(background=True)
    writer.submit({"epoch": 1}, [path], "first")  # returns: the error is the thread's
    with pytest.raises(CheckpointError) as background:
        writer.wait()
    assert str(background.value) == str(inline.value)
    assert "could not write checkpoint" in str(background.value) and "the disk is full" in str(background.value)
    assert writer.written is None
    writer.wait()  # raised once, then gone


def test_a_failed_background_write_is_raised_by_the_next_submit_which_writes_nothing(tmp_path, monkeypatch):
    full_disk(monkeypatch)
    failed, real = threading.Event(), writer_module.atomic_save

    def save_then_note(obj, path):
        try:
            real(obj, path)
        finally:
            failed.set()

    monkeypatch.setattr(writer_module, "atomic_save", save_then_note)
    writer = CheckpointWriter(background=True)
    writer.submit({"epoch": 1}, [tmp_path / "last.pt"], "first")
    assert failed.wait(timeout=60)
    monkeypatch.setattr(checkpoint_module.torch, "save", torch.serialization.save)  # the disk has room again
    with pytest.raises(CheckpointError, match="No space left on device"):
        writer.submit({"epoch": 2}, [tmp_path / "last.pt"], "second")
    assert not (tmp_path / "last.pt").exists() and writer.in_flight is None and writer.written is None


def test_one_write_at_a_time_and_the_synchronous_mode_writes_in_submit(tmp_path, monkeypatch):
    release = held_back(monkeypatch)
    writer = CheckpointWriter(background=True)
    writer.submit({"epoch": 1}, [tmp_path / "last.pt"], "first")
    second = threading.Thread(target=writer.submit, args=({"epoch": 2}, [tmp_path / "last.pt"], "second"))
    second.start()
    second.join(timeout=0.5)
    assert second.is_alive() and not (tmp_path / "last.pt").exists()  # waits for the first write, held back
    release.set()
    second.join(timeout=60)
    writer.wait()
    assert writer.written == "second" and torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 2

    monkeypatch.undo()
    inline = CheckpointWriter()
    inline.submit({"epoch": 3}, [tmp_path / "sync.pt"], "sync")
    assert inline.written == "sync" and inline.in_flight is None
    assert torch.load(tmp_path / "sync.pt", weights_only=True)["epoch"] == 3


def test_async_checkpoint_is_result_neutral_so_a_run_resumes_with_it_switched():
    off, on = (recipe_to_dict(load_recipe(CRD_RECIPE, [f"async_checkpoint={value}"])) for value in ("false", "true"))
    assert (off["async_checkpoint"], on["async_checkpoint"]) == (False, True)
    assert differing_keys(off, on) == []
    assert differing_keys(off, {**on, "seed": 1}) == ["seed"]


def crd_overrides(data_root: Path, teacher: Path, *extra: str) -> list[str]:
    """Two epochs of CRD resnet14 → resnet8 on the tiny CIFAR (four steps of 25 an epoch), a checkpoint every step."""
    return [
        f"data.root={data_root}", "data.verify=false", "data.num_workers=0", "data.batch_size=25",
        "schedule.epochs=2", "schedule.milestones=[1]", "log_every=1", "deterministic=true", "checkpoint_every_steps=1",
        "student.arch=resnet8", "teacher.name=null", "teacher.arch=resnet14", f"teacher.checkpoint={teacher}",
        "losses.crd.num_negatives=64", f"plugins=[{FAULT_PLUGIN}]", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def synchronous_run(tiny_cifar, tiny_teacher, tmp_path_factory) -> Path:
    """The CRD run with the option off (the default), uninterrupted."""
    run_dir = tmp_path_factory.mktemp("sync") / "run"
    assert main(["train", str(CRD_RECIPE), *crd_overrides(tiny_cifar, tiny_teacher), "--run-dir", str(run_dir), "--no-tensorboard"]) == 0
    return run_dir


@pytest.mark.slow
def test_a_run_with_async_checkpoint_ends_bit_identical_to_one_without(synchronous_run, tiny_cifar, tiny_teacher, tmp_path):
    run_dir = tmp_path / "run"
    overrides = crd_overrides(tiny_cifar, tiny_teacher, "async_checkpoint=true")
    assert main(["train", str(CRD_RECIPE), *overrides, "--run-dir", str(run_dir), "--no-tensorboard"]) == 0
    assert_same_run(synchronous_run, run_dir)
    assert final_state(run_dir)["recipe"]["async_checkpoint"] is True
    assert torch.equal(final_state(run_dir)["model"]["fc.weight"], final_state(synchronous_run)["model"]["fc.weight"])
    assert (run_dir / "checkpoints" / "best.pt").is_file()


def distill_process(*args: str, fault: str = "") -> subprocess.CompletedProcess:
    """``python -m distill ARGS`` as its own process (the fault plugin reads ``DISTILL_FAULT`` when it loads)."""
    env = {**os.environ, "DISTILL_FAULT": fault}
    return subprocess.run([sys.executable, "-m", "distill", *args, "--no-tensorboard"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=REPO)  # fmt: skip


@pytest.mark.slow
@pytest.mark.e2e
def test_an_async_run_stopped_by_sigterm_mid_epoch_resumes_bit_identical(tiny_cifar, tiny_teacher, tmp_path):
    baseline, run_dir = tmp_path / "baseline", tmp_path / "run"
    done = distill_process("train", str(CRD_RECIPE), *crd_overrides(tiny_cifar, tiny_teacher), "--run-dir", str(baseline))
    assert done.returncode == 0, done.stderr[-3000:]  # the option off, uninterrupted, in a process like the others

    overrides = crd_overrides(tiny_cifar, tiny_teacher, "async_checkpoint=true")
    stopped = distill_process("train", str(CRD_RECIPE), *overrides, "--run-dir", str(run_dir), fault="signal_after_step=TERM:5")
    assert stopped.returncode == EXIT_STOPPED, stopped.stderr[-3000:]
    assert "stopped by SIGTERM in epoch 2 after batch 2" in stopped.stderr  # agreed in step 6, mid-epoch
    assert f"checkpoint {run_dir / 'checkpoints' / 'last.pt'} (epoch 1, step 6)." in stopped.stderr  # waited for the write
    saved = final_state(run_dir)  # complete on disk when the process ended
    assert (saved["epoch"], saved["state"]["batch"], saved["state"]["step"]) == (1, 2, 6)

    resumed = distill_process("train", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(baseline, run_dir)


@pytest.mark.slow
def test_an_async_runs_failed_write_stops_it_with_atomic_saves_message(tiny_cifar, tiny_teacher, tmp_path, capsys, monkeypatch):
    full_disk(monkeypatch)  # the step-1 checkpoint fails in the background; the step-2 checkpoint raises it
    run_dir = tmp_path / "run"
    overrides = crd_overrides(tiny_cifar, tiny_teacher, "async_checkpoint=true")
    assert main(["train", str(CRD_RECIPE), *overrides, "--run-dir", str(run_dir), "--no-tensorboard"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"could not write checkpoint {run_dir / 'checkpoints' / 'last.pt'}" in err
    assert "No space left on device; no earlier last.pt existed" in err and "the disk is full: free space" in err
    assert not (run_dir / "checkpoints" / "last.pt").exists() and not (run_dir / "summary.json").exists()


@pytest.mark.slow
def test_a_run_that_fails_while_a_write_fails_reports_its_own_error_and_logs_the_write(
    tiny_cifar, tiny_teacher, tmp_path, capsys, monkeypatch
):
    full_disk(monkeypatch)  # the step-1 checkpoint fails in the background, then step 2 raises before the next one
    run_dir = tmp_path / "run"
    raising = "{type: raises_at_step, weight: 1.0, step: 2}"
    overrides = crd_overrides(tiny_cifar, tiny_teacher, "async_checkpoint=true", f"plugins=[{FAULT_PLUGIN},{STEP_LOSSES}]")
    assert main(["train", str(CRD_RECIPE), *overrides, f"losses.bad={raising}", "--run-dir", str(run_dir), "--no-tensorboard"]) == 2
    err = capsys.readouterr().err
    assert "IndexError: the plugin indexed past the batch" in err and "could not write checkpoint" not in err
    log = (run_dir / "log.txt").read_text()
    assert f"distill: could not write checkpoint {run_dir / 'checkpoints' / 'last.pt'}: No space left on device" in log
