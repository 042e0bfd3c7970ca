"""Bad input through the real CLI: exit code 2, no traceback, an actionable message, nothing written.

Every test drives ``distill train`` in-process, as a user would run it, with one thing
wrong: the recipe, the data, the teacher checkpoint, the loss/pair combination, the
batch size or the run directory. For each it pins that

1. the exit code is 2 (``EXIT_USER_ERROR``);
2. stderr holds no traceback;
3. the message names what was wrong (the file, the key, the expected thing) and says
   what to do about it;
4. nothing that could pass for a result was written: no ``summary.json``, no ``*.pt``,
   no ``metrics.jsonl``; and since the trainer builds data, models and losses before it
   creates the run directory, the run directory does not exist at all.
"""

from __future__ import annotations

import os
import random
import shlex
import textwrap
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from distill.cli.main import EXIT_USER_ERROR, main
from distill.models import create_model

pytestmark = pytest.mark.e2e

RESULT_PATTERNS = ("summary.json", "*.pt", "metrics.jsonl")
"""Files that a reader of a run directory takes for (part of) a result."""


@dataclass(frozen=True)
class Workspace:
    """Where one test's run may write: ``run_dir`` (``--run-dir``) and ``output_dir`` (the recipe's default)."""

    root: Path
    run_dir: Path
    output_dir: Path


@dataclass(frozen=True)
class Outcome:
    """What the CLI gave back: its exit code and everything it printed to stderr."""

    code: int
    err: str


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    """A fresh place for one run, with neither output directory created yet."""
    return Workspace(root=tmp_path, run_dir=tmp_path / "run", output_dir=tmp_path / "runs")


def tiny_recipe(data_root: Path, teacher: Path | None, output_dir: Path, teacher_arch: str = "resnet14") -> dict[str, Any]:
    """A KD recipe small enough to build in a second: resnet8 student, fake CIFAR-100, one epoch.

    With ``teacher=None`` the recipe trains the student alone with cross-entropy.
    """
    recipe: dict[str, Any] = {
        "description": "bad-input test recipe",
        "student": {"arch": "resnet8"},
        "losses": {"ce": {"weight": 1.0}},
        "data": {
            "dataset": "cifar100",
            "root": str(data_root),
            "download": False,
            "verify": False,
            "batch_size": 64,
            "test_batch_size": 50,
            "num_workers": 0,
        },
        "schedule": {"epochs": 1, "milestones": []},
        "log_every": 2,
        "output_dir": str(output_dir),
    }
    if teacher is not None:
        recipe["teacher"] = {"arch": teacher_arch, "checkpoint": str(teacher)}
        recipe["losses"] = {"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "temperature": 4}}
    return recipe


def write_recipe(path: Path, recipe: dict[str, Any] | str) -> Path:
    """Write a recipe mapping (or raw YAML text, dedented) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = recipe if isinstance(recipe, str) else yaml.safe_dump(recipe, sort_keys=False)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


UNCAUGHT_EXIT_CODE = 1
"""What Python exits with when an exception escapes ``main`` (after printing its traceback)."""


def train(recipe: Path, run_dir: Path, overrides: list[str], capsys: pytest.CaptureFixture[str]) -> Outcome:
    """``distill train RECIPE OVERRIDES --run-dir RUN_DIR`` in-process; stderr captured.

    An exception escaping ``main`` is turned into what the user of the installed
    command would see (a traceback and exit code 1), so that the assertions, rather
    than the exception, report it.
    """
    capsys.readouterr()  # drop anything printed before this run
    try:
        code = main(["train", str(recipe), *overrides, "--run-dir", str(run_dir), "--no-tensorboard"])
    except Exception:  # an escaping exception is itself the failure under test
        return Outcome(code=UNCAUGHT_EXIT_CODE, err=capsys.readouterr().err + traceback.format_exc())
    return Outcome(code=code, err=capsys.readouterr().err)


def assert_user_error(outcome: Outcome, *phrases: str) -> None:
    """Exit code 2, no traceback, and every phrase (what was wrong, what to do) in the message."""
    assert outcome.code == EXIT_USER_ERROR, outcome.err
    assert "Traceback" not in outcome.err, outcome.err
    assert outcome.err.startswith("distill train: error: "), outcome.err
    for phrase in phrases:
        assert phrase in outcome.err, f"{phrase!r} not in the message:\n{outcome.err}"


def assert_names_recipe_key(outcome: Outcome, key: str) -> None:
    """The message opens with the recipe key to change, as every recipe-level error does.

    A checkpoint that exists but cannot be used is reported by ``create_model``, which
    knows the file but not which recipe entry named it; the trainer must add the key.
    """
    assert f"distill train: error: {key}: " in outcome.err, (
        f"the message names the file but not the recipe key {key!r} that chose it; the trainer "
        f"(distill/engine/trainer.py, Trainer._build) should prefix a CheckpointError from create_model "
        f"with '{key}: ', as Trainer._check_files does for a missing file:\n{outcome.err}"
    )


def result_files(directory: Path) -> list[Path]:
    """Everything under ``directory`` that could be mistaken for a training result."""
    if not directory.is_dir():
        return []
    return sorted(path for pattern in RESULT_PATTERNS for path in directory.rglob(pattern))


def assert_nothing_written(space: Workspace) -> None:
    """No result file anywhere, and neither the run directory nor the default output directory exists."""
    for directory in (space.run_dir, space.output_dir):
        assert result_files(directory) == [], f"result files written under {directory}"
        assert not directory.exists(), f"{directory} was created although the run failed before training"


def save_reference_checkpoint(arch: str, path: Path) -> Path:
    """A checkpoint of ``arch`` (random weights) in the RepDistiller teacher format."""
    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 240, "model": create_model(arch).state_dict(), "accuracy": 1.0}, path)
    return path


# --- the recipe itself ------------------------------------------------------------------


def test_malformed_yaml_gives_file_line_and_column(fake_cifar100, workspace, capsys):
    recipe = write_recipe(
        workspace.root / "broken.yaml",
        """\
        student: {arch: resnet8
        losses: [
        """,
    )
    outcome = train(recipe, workspace.run_dir, [], capsys)
    assert_user_error(
        outcome,
        f"{recipe}:2:7: invalid YAML: expected ',' or '}}', but got ':'",
        "while parsing a flow mapping started at line 1, column 10",
        "Fix the YAML syntax there",
    )
    assert_nothing_written(workspace)


def with_key(recipe: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """``recipe`` with ``value`` set at the dotted key path (intermediate mappings created as needed)."""
    *parents, leaf = dotted.split(".")
    node = recipe
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return recipe


@pytest.mark.parametrize(
    ("key", "value", "phrases"),
    [
        pytest.param(
            "colour",
            "red",
            ["colour: unknown key", "Rename it to one of the valid keys here or remove it:", "student, losses"],
            id="unknown-key",
        ),
        pytest.param(
            "schedul",
            {"epochs": 1},
            ["schedul: unknown key", "Did you mean 'schedule'", "Rename it to one of the valid keys"],
            id="mistyped-key",
        ),
        pytest.param(
            "losses.ce.wieght",
            2,
            ["losses.ce.wieght: loss 'ce' has no option 'wieght'.", "Did you mean 'weight'?", "Remove it."],
            id="mistyped-loss-parameter",
        ),
        pytest.param(
            "data.batch_size",
            "big",
            ["data.batch_size: expected int, got 'big' (str)"],
            id="wrong-typed-value",
        ),
    ],
)
def test_recipe_key_and_type_errors_name_file_key_and_fix(key, value, phrases, fake_cifar100, workspace, capsys):
    recipe = with_key(tiny_recipe(fake_cifar100, None, workspace.output_dir), key, value)
    path = write_recipe(workspace.root / "recipe.yaml", recipe)
    outcome = train(path, workspace.run_dir, [], capsys)
    assert_user_error(outcome, f"{path}: ", *phrases)
    assert_nothing_written(workspace)


def test_base_cycle_shows_the_chain(fake_cifar100, workspace, capsys):
    first = write_recipe(workspace.root / "first.yaml", "_base_: [second.yaml]\n")
    write_recipe(workspace.root / "second.yaml", "_base_: [first.yaml]\n")
    outcome = train(first, workspace.run_dir, [], capsys)
    assert_user_error(
        outcome,
        "_base_ inclusion cycle",
        f"{first.resolve()} -> {(workspace.root / 'second.yaml').resolve()} -> {first.resolve()}",
        "remove one of these _base_ entries to break the cycle",
    )
    assert_nothing_written(workspace)


def test_missing_base_says_where_it_looked(fake_cifar100, workspace, capsys):
    recipe = tiny_recipe(fake_cifar100, None, workspace.output_dir)
    path = write_recipe(workspace.root / "child.yaml", {"_base_": ["bases/absent.yaml"], **recipe})
    outcome = train(path, workspace.run_dir, [], capsys)
    assert_user_error(
        outcome,
        f"{path}: _base_ entry 'bases/absent.yaml' not found",
        f"looked for {workspace.root / 'bases' / 'absent.yaml'}",
        f"relative to the directory of the file that names them ({workspace.root})",
        "correct the entry or create the file",
    )
    assert_nothing_written(workspace)


# --- the data -----------------------------------------------------------------------------


def test_missing_dataset_says_where_it_looked_and_how_to_get_it(workspace, capsys):
    empty = workspace.root / "no-data"
    empty.mkdir()
    recipe = write_recipe(workspace.root / "recipe.yaml", tiny_recipe(empty, None, workspace.output_dir))
    outcome = train(recipe, workspace.run_dir, [], capsys)
    assert_user_error(
        outcome,
        "CIFAR-100 not found",
        f"searched {empty / 'cifar-100-python'}",
        "data.download: true",
        f"extract it into {empty} (it unpacks to cifar-100-python/)",
    )
    assert_nothing_written(workspace)


def test_dataset_with_a_bad_checksum_names_the_file_and_the_fix(fake_cifar100, workspace, capsys):
    recipe = write_recipe(workspace.root / "recipe.yaml", tiny_recipe(fake_cifar100, None, workspace.output_dir))
    outcome = train(recipe, workspace.run_dir, ["data.verify=true"], capsys)
    assert_user_error(
        outcome,
        f"CIFAR-100 in {fake_cifar100 / 'cifar-100-python'}",
        "train, test, meta failed the MD5 checksum",
        "data.download: true",
        "data.verify: false",
    )
    assert_nothing_written(workspace)


def test_batch_size_larger_than_the_dataset(fake_cifar100, workspace, capsys):
    recipe = write_recipe(workspace.root / "recipe.yaml", tiny_recipe(fake_cifar100, None, workspace.output_dir))
    outcome = train(recipe, workspace.run_dir, ["data.batch_size=512"], capsys)
    assert_user_error(
        outcome, "data.batch_size 512 is larger than the training set (256 samples)", "lower data.batch_size"
    )
    assert_nothing_written(workspace)


# --- the teacher checkpoint ---------------------------------------------------------------


def missing_file(tiny_teacher: Path, target: Path) -> Path:
    """No file at all."""
    return target


def random_bytes(tiny_teacher: Path, target: Path) -> Path:
    """A file of the right name holding noise (seeded: the same noise every run)."""
    target.write_bytes(random.Random(0).randbytes(4096))
    return target


def cut_in_half(tiny_teacher: Path, target: Path) -> Path:
    """A real teacher checkpoint, its second half lost (an interrupted copy)."""
    data = tiny_teacher.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


@pytest.mark.parametrize(
    ("make", "phrases"),
    [
        pytest.param(
            missing_file,
            ["teacher.checkpoint: file", "does not exist", "distill teachers fetch", "distill train recipes/cifar100/teachers/"],
            id="missing",
        ),
        pytest.param(
            random_bytes,
            ["could not be read", "it is not a torch checkpoint", "Re-download or re-copy it, or point to the right file"],
            id="corrupted",
        ),
        pytest.param(
            cut_in_half,
            ["could not be read", "truncated or corrupted", "Re-download or re-copy it, or point to the right file"],
            id="truncated",
        ),
    ],
)
def test_unusable_teacher_checkpoint(
    make: Callable[[Path, Path], Path], phrases, fake_cifar100, tiny_teacher, workspace, capsys
):
    (workspace.root / "teacher").mkdir()
    checkpoint = make(tiny_teacher, workspace.root / "teacher" / "ckpt_epoch_240.pth")
    recipe = write_recipe(workspace.root / "recipe.yaml", tiny_recipe(fake_cifar100, checkpoint, workspace.output_dir))
    outcome = train(recipe, workspace.run_dir, [], capsys)
    assert_user_error(outcome, str(checkpoint), *phrases)
    assert_nothing_written(workspace)
    assert_names_recipe_key(outcome, "teacher.checkpoint")


def test_checkpoint_of_another_architecture_names_keys_and_shapes(fake_cifar100, workspace, capsys):
    checkpoint = save_reference_checkpoint("resnet8", workspace.root / "teacher" / "resnet8.pth")
    recipe = write_recipe(
        workspace.root / "recipe.yaml",
        tiny_recipe(fake_cifar100, checkpoint, workspace.output_dir, teacher_arch="resnet8x4"),
    )
    outcome = train(recipe, workspace.run_dir, [], capsys)
    assert_user_error(
        outcome,
        f"checkpoint {checkpoint} does not fit resnet8x4",
        "wrong shape keys: conv1.weight: checkpoint (16, 3, 3, 3) vs model (32, 3, 3, 3)",
        "set the arch to the architecture the checkpoint was trained as, or use a checkpoint of resnet8x4",
    )
    assert_nothing_written(workspace)
    assert_names_recipe_key(outcome, "teacher.checkpoint")


class RunsShellCommand:
    """Pickles as a call to ``os.system``: loading it without ``weights_only`` runs the command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Callable[[str], int], tuple[str]]:
        return os.system, (self.command,)


def test_checkpoint_with_pickled_code_is_refused_and_never_run(fake_cifar100, workspace, capsys):
    marker = workspace.root / "code-ran"
    checkpoint = workspace.root / "teacher" / "ckpt_epoch_240.pth"
    checkpoint.parent.mkdir()
    torch.save({"epoch": 240, "model": RunsShellCommand(f"touch {shlex.quote(str(marker))}")}, checkpoint)
    recipe = write_recipe(workspace.root / "recipe.yaml", tiny_recipe(fake_cifar100, checkpoint, workspace.output_dir))
    outcome = train(recipe, workspace.run_dir, [], capsys)
    assert_user_error(
        outcome,
        f"checkpoint {checkpoint} was refused by safe loading (weights_only=True)",
        f"it asks to call or build {os.system.__module__}.system",
        "nothing in it was executed",
        "re-save only its state_dict",
    )
    assert not marker.exists(), "loading the checkpoint ran the code pickled in it"
    assert_nothing_written(workspace)
    torch.load(checkpoint, weights_only=False)  # the control: unsafe loading does run it
    assert marker.exists()
    assert_names_recipe_key(outcome, "teacher.checkpoint")


# --- the loss and the pair ----------------------------------------------------------------


def test_loss_needing_a_teacher_without_one(fake_cifar100, workspace, capsys):
    recipe = tiny_recipe(fake_cifar100, None, workspace.output_dir)
    recipe["losses"]["kd"] = {"weight": 0.9}
    path = write_recipe(workspace.root / "recipe.yaml", recipe)
    outcome = train(path, workspace.run_dir, [], capsys)
    assert_user_error(
        outcome,
        f"{path}: losses.kd: loss 'kd' needs a teacher",
        "add one (teacher.name, or teacher.arch and teacher.checkpoint) or remove this term",
    )
    assert_nothing_written(workspace)


def test_loss_that_cannot_pair_the_two_architectures(fake_cifar100, workspace, capsys):
    checkpoint = save_reference_checkpoint("wrn_16_2", workspace.root / "teacher" / "wrn_16_2.pth")
    recipe = tiny_recipe(fake_cifar100, checkpoint, workspace.output_dir, teacher_arch="wrn_16_2")
    recipe["losses"] = {"ce": {"weight": 1.0}, "fsp": {"weight": 50}}
    path = write_recipe(workspace.root / "recipe.yaml", recipe)
    outcome = train(path, workspace.run_dir, [], capsys)
    assert_user_error(
        outcome,
        "losses.fsp: cannot build loss 'fsp'",
        "FSP is not applicable to resnet8 ← wrn_16_2",
        "student channels [16, 16, 32, 64], teacher channels [16, 32, 64, 128]",
        "use another loss for this pair, or remove the fsp term",
    )
    assert_nothing_written(workspace)


# --- the run directory --------------------------------------------------------------------


def test_run_dir_under_a_regular_file(fake_cifar100, workspace, capsys):
    blocker = workspace.root / "not-a-directory"
    blocker.write_text("a file where a directory was expected\n")
    space = Workspace(root=workspace.root, run_dir=blocker / "run", output_dir=workspace.output_dir)
    recipe = write_recipe(workspace.root / "recipe.yaml", tiny_recipe(fake_cifar100, None, workspace.output_dir))
    outcome = train(recipe, space.run_dir, [], capsys)
    assert_user_error(outcome, f"run directory {space.run_dir}", "Not a directory", "choose a writable --run-dir")
    assert blocker.read_text() == "a file where a directory was expected\n"
    assert_nothing_written(space)
