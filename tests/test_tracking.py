"""Tracking: the recipe's trackers through Accelerate, per-step rows, tags, and TensorBoard across a resume."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
from accelerate.tracking import GeneralTracker, WandBTracker

from distill.cli.main import main
from distill.engine.metrics import read_metrics
from distill.engine.resume import differing_keys
from distill.engine.tracking import (
    TRACKERS,
    TrackerError,
    TrackerKind,
    TrackerRun,
    Trackers,
    check_trackers_available,
    parse_tags,
    scalars,
    tracker_config,
)
from distill.files.rundir import read_steps
from distill.recipe.schema import ModelSpec, Recipe, TrackerName
from distill.recipe.serialize import recipe_to_dict

REPO = Path(__file__).resolve().parent.parent
KD_RECIPE = REPO / "recipes/cifar100/kd/resnet32x4-resnet8x4.yaml"
FAULT_PLUGIN = Path(__file__).resolve().parent / "fault_plugin.py"
TAGS = ["--tag", "task=cifar100", "--tag", "method=kd", "--tag", "seed=0"]


def tiny_kd(data_root: Path, teacher: Path, *extra: str) -> list[str]:
    """KD on the fake CIFAR-100 (256 images, batch 64: 4 steps an epoch), 2 epochs, a row every 2 steps."""
    return [
        f"data.root={data_root}", "data.verify=false", "data.download=false", "data.num_workers=0",
        "schedule.epochs=2", "schedule.milestones=[1]", "log_every=2", "deterministic=true", "student.arch=resnet8",
        "teacher.name=null", "teacher.arch=resnet14", f"teacher.checkpoint={teacher}", *extra,
    ]  # fmt: skip


def scalar_events(tensorboard_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar event in every event file below ``tensorboard_dir``, duplicates kept (none purged)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    events: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(tensorboard_dir.rglob("events.out.tfevents*")):
        accumulator = EventAccumulator(str(path), size_guidance={SCALARS: 0}, purge_orphaned_data=False)
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            events.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    return {tag: sorted(values) for tag, values in events.items()}


def hparams(tensorboard_dir: Path) -> dict[str, object]:
    """The hyper-parameters (the tracker config) stored in TensorBoard's hparams plugin, by name."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    found: dict[str, object] = {}
    for path in sorted(tensorboard_dir.rglob("events.out.tfevents*")):
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        try:
            contents = accumulator.PluginTagToContent("hparams").values()
        except KeyError:  # an event file of scalars only
            continue
        for content in contents:
            data = plugin_data_pb2.HParamsPluginData.FromString(content)
            if data.HasField("session_start_info"):
                for name, value in data.session_start_info.hparams.items():
                    found[name] = getattr(value, value.WhichOneof("kind"))
    return found


def expected_events(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """What TensorBoard should hold, computed from the record: each finite number of each row at the row's step."""
    expected: dict[str, list[tuple[int, float]]] = {}
    rows = [(row, row.get("step", row.get("init/epoch", 0))) for row in read_metrics(run_dir)]
    rows += [(row, row["step"]) for row in read_steps(run_dir)]
    for row, step in rows:
        for key, value in row.items():
            if key not in ("epoch", "step", "batch") and isinstance(value, (int, float)) and not isinstance(value, bool):
                expected.setdefault(key, []).append((step, pytest.approx(value)))
    return {tag: sorted(values, key=lambda pair: pair[0]) for tag, values in expected.items()}


# --------------------------------------------------------------------------------------------
# The pieces


def test_every_tracker_name_of_the_recipe_has_a_kind():
    assert set(TRACKERS) == set(get_args(TrackerName))


def test_tracker_config_is_the_flat_recipe_with_tags():
    recipe = Recipe(student=ModelSpec("resnet8"), losses={})
    config = tracker_config(recipe, {"task": "cifar100", "seed": "0"})
    assert config["optimizer.lr"] == 0.05 and config["schedule.epochs"] == 240 and config["deterministic"] is False
    assert config["schedule.milestones"] == "[150, 180, 210]"  # TensorBoard's hparams take no lists
    assert config["teacher"] == "null" and config["tracking.log_with"] == '["tensorboard"]'
    assert config["tags/task"] == "cifar100" and config["tags/seed"] == "0"
    assert all(isinstance(value, (bool, int, float, str)) for value in config.values())
    assert {key for key in config if not key.startswith("tags/")} == set(_leaves(recipe_to_dict(recipe)))


def _leaves(data: object, prefix: str = "") -> list[str]:
    if isinstance(data, dict):
        return [leaf for key, value in data.items() for leaf in _leaves(value, f"{prefix}{key}.")]
    return [prefix.rstrip(".")]


def test_scalars_leave_out_placing_fields_text_flags_and_non_finite_values():
    row = {"epoch": 1, "step": 4, "batch": 2, "stage": "init", "flag": True, "a": 1, "b": 0.5,
           "nan": float("nan"), "inf": float("-inf")}  # fmt: skip
    assert scalars(row) == {"a": 1, "b": 0.5}


@pytest.mark.parametrize(
    ("items", "phrase"),
    [
        (["task"], "expected KEY=VALUE"),
        (["=cifar100"], "a tag's key is letters"),
        (["task="], "expected a non-empty text value"),
        (["my task=x"], "a tag's key is letters"),
        (["task=a", "task=b"], "--tag task is given twice"),
    ],
)
def test_bad_tags_are_refused(items, phrase):
    with pytest.raises(TrackerError, match=phrase):
        parse_tags(items)


def test_tags_parse_with_equals_signs_in_values():
    assert parse_tags(["task=cifar100", "note=a=b", "seed=0"]) == {"task": "cifar100", "note": "a=b", "seed": "0"}


def test_a_tracker_that_is_not_installed_is_refused_with_what_to_install(monkeypatch):
    monkeypatch.setitem(TRACKERS, "mlflow", TrackerKind("mlflow", lambda: False, lambda run: None))
    monkeypatch.setitem(TRACKERS, "aim", TrackerKind("'aim<4'", lambda: False, lambda run: None))
    check_trackers_available(["tensorboard"])
    with pytest.raises(TrackerError) as caught:
        check_trackers_available(["tensorboard", "mlflow", "aim"])
    assert str(caught.value) == (
        "tracking.log_with names mlflow, aim, which are not installed: pip install mlflow 'aim<4' "
        "(or leave them out of tracking.log_with)"
    )


def test_tracking_changes_no_result():
    recipe = Recipe(student=ModelSpec("resnet8"), losses={})
    other = recipe_to_dict(recipe)
    other["tracking"] = {"log_with": ["wandb", "mlflow"], "project": "grid"}
    assert differing_keys(recipe_to_dict(recipe), other) == []
    del other["tracking"]  # a run recorded before the tracking section existed
    assert differing_keys(recipe_to_dict(recipe), other) == []


def test_wandb_continues_the_run_it_was_given_and_carries_the_tags(tmp_path):
    run = TrackerRun(tmp_path / "run-1", "grid", {"task": "cifar100", "seed": "0"}, "abc123")
    tracker = TRACKERS["wandb"].make(run)
    assert isinstance(tracker, WandBTracker) and tracker.run_name == "grid"
    assert tracker.init_kwargs == {"id": "abc123", "resume": "allow", "name": "run-1", "tags": ["task=cifar100", "seed=0"]}
    fresh = TRACKERS["wandb"].make(TrackerRun(tmp_path / "run-1", "grid", {}, None))
    assert len(fresh.init_kwargs["id"]) == 32 and TRACKERS["wandb"].run_id(fresh) == fresh.init_kwargs["id"]
    mlflow = TRACKERS["mlflow"].make(run)
    assert (mlflow.run_id, mlflow.tags, mlflow.experiment_name) == ("abc123", {"task": "cifar100", "seed": "0"}, "grid")


class RecordingTracker(GeneralTracker):
    """A remote-like tracker: it is given an id and keeps what it was told."""

    name = "recording"
    requires_logging_directory = False
    events: list[tuple] = []

    def __init__(self, run: TrackerRun) -> None:
        super().__init__()
        self.run_id = run.run_id or f"new-{len(self.events)}"
        self.events.append(("make", run.run_id, dict(run.tags)))

    @property
    def tracker(self):
        return self

    def start(self):
        self.events.append(("start", self.run_id))

    def store_init_configuration(self, values):
        self.events.append(("config", values["tags/task"]))

    def log(self, values, step=None, **kwargs):
        self.events.append(("log", step, values))

    def finish(self):
        self.events.append(("finish",))


def test_a_resumed_run_continues_the_remote_tracker_run_and_replays_nothing_to_it(tmp_path, monkeypatch):
    RecordingTracker.events = []
    monkeypatch.setitem(TRACKERS, "wandb", TrackerKind("wandb", lambda: True, RecordingTracker, run_id=lambda t: t.run_id))
    first = Trackers(tmp_path, ["wandb"], config={"tags/task": "kd"}, tags={"task": "kd"})
    first.start(resumed=False)
    first.log({"epoch": 1, "step": 4, "loss": 1.5}, 4)
    first.finish()
    assert json.loads((tmp_path / "trackers.json").read_text()) == {"wandb": "new-0"}
    again = Trackers(tmp_path, ["wandb"], config={"tags/task": "kd"}, tags={"task": "kd"})
    again.start(resumed=True)
    again.replay([({"step": 4, "loss": 1.5}, 4)])  # TensorBoard's rebuild: a remote tracker already has these
    again.finish()
    assert RecordingTracker.events == [
        ("make", None, {"task": "kd"}), ("start", "new-0"), ("config", "kd"), ("log", 4, {"loss": 1.5}), ("finish",),
        ("make", "new-0", {"task": "kd"}), ("start", "new-0"), ("config", "kd"), ("finish",),
    ]  # fmt: skip


def test_a_tracker_that_fails_to_start_is_named_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(TRACKERS, "wandb", TrackerKind("wandb", lambda: True, lambda run: _Failing()))
    with pytest.raises(TrackerError, match=r"^tracker wandb could not start: RuntimeError: api_key not configured"):
        Trackers(tmp_path, ["wandb"]).start(resumed=False)


class _Failing(RecordingTracker):
    def __init__(self):
        GeneralTracker.__init__(self)

    def start(self):
        raise RuntimeError("api_key not configured (no-tty)")


# --------------------------------------------------------------------------------------------
# Through the CLI: refusals leave no run directory


@pytest.mark.e2e
def test_an_unknown_tracker_is_refused_naming_the_key_and_the_choices(tmp_path, capsys, fake_cifar100, tiny_teacher):
    run_dir = tmp_path / "run"
    code = main(["train", str(KD_RECIPE), *tiny_kd(fake_cifar100, tiny_teacher), "tracking.log_with=[tensorbord]", "--run-dir", str(run_dir)])
    err = capsys.readouterr().err
    assert code == 2 and not run_dir.exists()
    assert "tracking.log_with.0: expected one of 'tensorboard', 'wandb', 'mlflow', 'aim', 'comet_ml', got 'tensorbord'" in err
    assert "Did you mean 'tensorboard'?" in err and "Traceback" not in err


@pytest.mark.e2e
def test_an_uninstalled_tracker_is_refused_before_the_run_directory(tmp_path, capsys, fake_cifar100, tiny_teacher):
    assert importlib.util.find_spec("wandb") is None, "this test needs an environment without wandb"
    run_dir = tmp_path / "run"
    args = ["train", str(KD_RECIPE), *tiny_kd(fake_cifar100, tiny_teacher), "tracking.log_with=[tensorboard,wandb]", "--run-dir", str(run_dir)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "tracking.log_with names wandb, which is not installed: pip install wandb" in err
    assert not run_dir.exists()
    assert main([*args, "--dry-run"]) == 2 and "pip install wandb" in capsys.readouterr().err


@pytest.mark.e2e
@pytest.mark.parametrize("tag", ["task", "task=", "bad key=x"])
def test_a_bad_tag_is_refused_before_the_run_directory(tmp_path, capsys, fake_cifar100, tiny_teacher, tag):
    run_dir = tmp_path / "run"
    assert main(["train", str(KD_RECIPE), *tiny_kd(fake_cifar100, tiny_teacher), "--tag", tag, "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("distill train: error: ") and err.count("\n") == 1 and "tag" in err and "Traceback" not in err
    assert not run_dir.exists()


# --------------------------------------------------------------------------------------------
# Real runs


@pytest.mark.slow
@pytest.mark.e2e
def test_a_run_logs_steps_and_epochs_to_tensorboard_with_its_recipe_and_tags(tmp_path, fake_cifar100, tiny_teacher):
    run_dir = tmp_path / "run"
    assert main(["train", str(KD_RECIPE), *tiny_kd(fake_cifar100, tiny_teacher), *TAGS, "--run-dir", str(run_dir)]) == 0

    steps = read_steps(run_dir)
    assert [(row["epoch"], row["batch"], row["step"]) for row in steps] == [(1, 2, 2), (1, 4, 4), (2, 2, 6), (2, 4, 8)]
    epochs = [row for row in read_metrics(run_dir) if "test/top1" in row]
    assert [row["step"] for row in epochs] == [4, 8]
    for row, epoch_row in ((steps[1], epochs[0]), (steps[3], epochs[1])):  # one process: the epoch's last running mean is its mean
        for term in ("ce", "kd", "total"):
            assert row[f"step/loss/{term}"] == pytest.approx(epoch_row[f"train/loss/{term}"], rel=1e-6)
    assert [row["step/lr"] for row in steps] == [0.05, 0.05, pytest.approx(0.005), pytest.approx(0.005)]

    events = scalar_events(run_dir / "tensorboard")
    assert events == expected_events(run_dir)
    assert [step for step, _ in events["step/loss/kd"]] == [2, 4, 6, 8]
    assert [step for step, _ in events["train/loss/kd"]] == [4, 8] and [step for step, _ in events["teacher/top1"]] == [0]
    assert {"step/lr", "step/images_per_s", "step/loss/ce", "step/loss/total", "test/top1", "lr"} <= set(events)

    config = hparams(run_dir / "tensorboard")
    assert config["optimizer.lr"] == pytest.approx(0.05) and config["student.arch"] == "resnet8"
    assert config["schedule.milestones"] == "[1]" and config["log_every"] == 2
    assert (config["tags/task"], config["tags/method"], config["tags/seed"]) == ("cifar100", "kd", "0")

    info = json.loads((run_dir / "run.json").read_text())
    assert info["tags"] == {"task": "cifar100", "method": "kd", "seed": "0"}
    assert "git_commit" in info and "git_dirty" in info
    assert not (run_dir / "trackers.json").exists()  # TensorBoard has no id to keep


@pytest.mark.slow
@pytest.mark.e2e
def test_no_tensorboard_means_no_tracker_but_the_record_stays(tmp_path, fake_cifar100, tiny_teacher):
    run_dir = tmp_path / "run"
    assert main(["train", str(KD_RECIPE), *tiny_kd(fake_cifar100, tiny_teacher, "schedule.epochs=1"), "--run-dir", str(run_dir),
                 "--no-tensorboard"]) == 0  # fmt: skip
    assert not (run_dir / "tensorboard").exists()
    assert [row["step"] for row in read_steps(run_dir)] == [2, 4]


def run_distill(*args: str, fault: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "DISTILL_FAULT": fault, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "distill", *args], capture_output=True, text=True, timeout=300, env=env, cwd=REPO)


def without_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if "images_per_s" not in k and not k.startswith("time/")} for row in rows]


@pytest.mark.slow
@pytest.mark.e2e
def test_a_killed_and_resumed_run_holds_each_step_once_in_tensorboard(tmp_path, fake_cifar100, tiny_teacher):
    """Killed in step 4 (checkpoint at step 2, the row of step 3 already written), resumed with another tracking project."""
    overrides = tiny_kd(fake_cifar100, tiny_teacher, "log_every=1", "checkpoint_every_steps=2", f"plugins=[{FAULT_PLUGIN}]")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    done = run_distill("train", str(KD_RECIPE), *overrides, "--run-dir", str(straight))
    assert done.returncode == 0, done.stderr

    killed = run_distill("train", str(KD_RECIPE), *overrides, "--run-dir", str(resumed), fault="kill_after_step=4")
    assert killed.returncode == -9, killed.stderr
    assert [row["step"] for row in read_steps(resumed)] == [1, 2, 3]  # step 3's row came after the last checkpoint
    assert [step for step, _ in scalar_events(resumed / "tensorboard")["step/loss/kd"]] == [1, 2, 3]

    again = run_distill("train", "--resume", str(resumed), "tracking.project=elsewhere")  # tracking changes no result: no --force
    assert again.returncode == 0, again.stderr

    assert [row["step"] for row in read_steps(resumed)] == list(range(1, 9))
    assert without_timing(read_steps(resumed)) == without_timing(read_steps(straight))
    events = scalar_events(resumed / "tensorboard")
    for tag, values in events.items():
        steps = [step for step, _ in values]
        assert len(steps) == len(set(steps)), f"{tag} holds a step twice: {steps}"
    assert events == expected_events(resumed)
    assert [step for step, _ in events["step/loss/kd"]] == list(range(1, 9))
    assert {tag: values for tag, values in events.items() if "images_per_s" not in tag and not tag.startswith("time/")} == {
        tag: [(step, pytest.approx(value)) for step, value in values]
        for tag, values in scalar_events(straight / "tensorboard").items()
        if "images_per_s" not in tag and not tag.startswith("time/")
    }
