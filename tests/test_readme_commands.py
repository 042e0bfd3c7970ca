"""Every command in README.md's ```bash blocks runs, for real, at tiny sizes: the README cannot drift.

The README's commands are read from its ```bash blocks (a line may chain commands
with ``&&``; a ``# comment`` ends a line). Each one is either

* in :data:`RUN`, which says how it runs here: in a sandbox that looks like a
  checkout (``recipes/``, ``teachers/cifar100.yaml``, a fake CIFAR-100 in ``data/``),
  with arguments appended to make it tiny (one epoch, fake data) or words replaced
  (a placeholder such as ``RECIPE`` by a real one), the exit status it must end with,
  and text its output must contain; or
* in :data:`NOT_RUN`, with the reason it cannot run in a test (an install, a GPU).

A README command in neither, or an entry here that the README no longer shows, fails
:func:`test_every_readme_command_is_run_or_listed`. Adding a command is one line in
one of the two tables. The commands run in README order, in this process
(``distill.cli.main.main``), each after what its section set up before it (the
teacher is trained before the student, the sweep before the report).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from distill.cli.main import main
from distill.engine.signals import EXIT_STOPPED

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"

TRAIN_SIZE, TEST_SIZE = 128, 100
"""The fake CIFAR-100 of the sandbox: two training steps of batch 64 per epoch."""

TINY = ("data.verify=false", "data.download=false", "data.num_workers=0", "schedule.epochs=1")
"""Recipe overrides that make a training run tiny: one epoch on the sandbox's fake CIFAR-100."""

SMALL_TEACHER = "resnet8x4"
"""What the sandbox's teacher resnet32x4 really is: a sixth of resnet32x4's arithmetic per image."""

UNREACHABLE = "http://127.0.0.1:9"
"""The sandbox manifest's download sources point here (nothing listens): no test ever downloads."""


# --- reading the README ---------------------------------------------------------------------------


def bash_blocks(text: str) -> list[str]:
    """The bodies of the ```bash fenced blocks."""
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def block_commands(block: str) -> list[str]:
    """The commands of one block: continuation lines joined, comments dropped, ``&&`` chains split, spaces collapsed."""
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        line = re.sub(r"(^|\s)#\s.*$", "", line).strip()
        for part in line.split("&&"):
            command = " ".join(part.split())
            if command:
                commands.append(command)
    return commands


def readme_commands(text: str) -> list[str]:
    """Every command of the README's bash blocks, in order, each once."""
    return list(dict.fromkeys(command for block in bash_blocks(text) for command in block_commands(block)))


# --- the sandbox ----------------------------------------------------------------------------------


@dataclass
class Sandbox:
    """A folder laid out like a checkout, and the values that earlier commands' set-ups left for later ones."""

    root: Path
    values: dict[str, str] = field(default_factory=dict)


def sandbox_manifest(text: str) -> str:
    """The shipped manifest, its sources made unreachable and its resnet32x4 teacher made a small network."""
    text = re.sub(r"https?://[^/\"']+", UNREACHABLE, text)
    text, count = re.subn(r"(\n  resnet32x4:\n    arch: )resnet32x4\n", rf"\g<1>{SMALL_TEACHER}\n", text)
    assert count == 1, "teachers/cifar100.yaml changed shape: update sandbox_manifest"
    return text


def make_sandbox(root: Path) -> Sandbox:
    """``recipes/`` (the repository's), ``teachers/`` (the manifest; resnet32x4 present), ``data/`` (a fake CIFAR-100).

    The teacher called resnet32x4 is a :data:`SMALL_TEACHER` with random weights: every
    recipe that names it runs as written, at a fraction of the cost. The other five
    teachers are missing, as on a fresh checkout.
    """
    from distill.data import write_fake_cifar
    from distill.models import create_model

    (root / "recipes").symlink_to(REPO / "recipes")
    teachers = root / "teachers"
    teachers.mkdir()
    manifest = (REPO / "teachers" / "cifar100.yaml").read_text(encoding="utf-8")
    (teachers / "cifar100.yaml").write_text(sandbox_manifest(manifest), encoding="utf-8")
    published = teachers / "resnet32x4_vanilla" / "ckpt_epoch_240.pth"
    published.parent.mkdir()
    torch.manual_seed(0)
    torch.save({"epoch": 240, "model": create_model(SMALL_TEACHER).state_dict(), "accuracy": 1.0}, published)
    write_fake_cifar(root / "data", num_classes=100, train_size=TRAIN_SIZE, test_size=TEST_SIZE, seed=0)
    return Sandbox(root)


# --- set-ups: what a command needs that an earlier README command does not leave ------------------

STOPPED_RECIPE = "recipes/cifar100/crd/resnet32x4-resnet8x4.yaml"
STOPPED_OVERRIDES = (*TINY, "data.batch_size=32", "losses.crd.num_negatives=64")
"""Four steps an epoch (a stop is taken one step after the signal), and a cheap CRD."""
STOPPED_AT_STEP = 1


def stop_a_run(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, run_dir: str | None = None) -> Path:
    """Start a CRD run and SIGTERM it after its first step: it checkpoints and exits 75, unfinished."""
    from distill.engine.trainer import Trainer

    original = Trainer.train_step

    def step_then_signal(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if self.state.step == STOPPED_AT_STEP:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "train_step", step_then_signal)
        where = ["--run-dir", run_dir] if run_dir else []
        assert main(["train", STOPPED_RECIPE, *STOPPED_OVERRIDES, *where]) == EXIT_STOPPED
    if run_dir:
        return sandbox.root / run_dir
    (found,) = (sandbox.root / "runs").glob("cifar100-crd-resnet32x4-resnet8x4-*")
    return found


def unfinished_run(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """``{unfinished}``: a stopped run, where ``distill train`` puts a run by default (runs/<recipe>-<time>)."""
    sandbox.values["unfinished"] = str(stop_a_run(sandbox, monkeypatch).relative_to(sandbox.root))


def unfinished_run_dir(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """``{recipe}``, ``{dir}``: a run stopped in a folder of our choosing, and the recipe (with overrides) it ran."""
    stop_a_run(sandbox, monkeypatch, run_dir="runs/stopped")
    sandbox.values.update(recipe=" ".join([STOPPED_RECIPE, *STOPPED_OVERRIDES]), dir="runs/stopped")


# --- how each README command runs -----------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """How one README command runs here.

    ``replace``: (README text, what runs instead), applied in order; ``{name}`` in the
    replacement is a value a set-up left. ``append``: arguments added at the end.
    ``status``: the exit status it must end with. ``expect``: text its output must hold.
    ``creates``: glob patterns (in the sandbox) that must each match a file afterwards.
    ``before``: a set-up that runs first (gets the sandbox and pytest's monkeypatch).
    """

    append: tuple[str, ...] = ()
    replace: tuple[tuple[str, str], ...] = ()
    status: int = 0
    expect: tuple[str, ...] = ()
    creates: tuple[str, ...] = ()
    before: Callable[[Sandbox, pytest.MonkeyPatch], None] | None = None

    def argv(self, command: str, values: dict[str, str]) -> list[str]:
        for old, new in self.replace:
            assert old in command, f"{command!r} no longer contains {old!r}: update its entry in RUN"
            command = command.replace(old, new.format(**values))
        words = shlex.split(command) + list(self.append)
        assert words[0] == "distill", f"{command!r}: only distill commands run in-process; list it in NOT_RUN"
        return words[1:]


SWEEP_SMALL = (
    ("--tasks all", "--tasks resnet32x4-resnet8x4"),  # one task of the 13,
    ("--methods kd,crd,ml_cpc", "--methods kd"),  # one method (CRD's 16384 negatives cost minutes on a CPU),
    ("--seeds 0,1,2", "--seeds 0"),  # one seed: 1 run of the 117 (the dry run above plans all of them)
)
SWEEP_TINY = tuple(word for override in TINY for word in ("-o", override))
MI_TINY = ("--steps", "10", "--batch-size", "8")
MI_NO_FIGURE = (*MI_TINY, "--no-figure")  # the first mi-bench command draws the figure; once is enough

RUN: dict[str, Run] = {
    "distill quickstart": Run(append=("--reduced",)),
    "distill teachers list": Run(expect=("resnet32x4", "present", "missing")),
    "distill teachers fetch all": Run(status=2, expect=("Download it by hand",)),  # offline: what to get, where
    "distill teachers verify resnet32x4 --data-root data": Run(
        append=("--no-verify-data",), status=1, expect=("FAILED: resnet32x4",)  # random weights fall short
    ),
    "distill train recipes/cifar100/teachers/resnet32x4.yaml": Run(
        append=(*TINY, f"student.arch={SMALL_TEACHER}"), creates=("teachers/trained/resnet32x4/*/summary.json",)
    ),
    "distill train recipes/cifar100/kd/resnet32x4-resnet8x4.yaml": Run(
        append=TINY, creates=("runs/cifar100-kd-resnet32x4-resnet8x4-*/checkpoints/last.pt",)
    ),
    # The sandbox holds one of the six teachers: the dry run lists the grid, names each missing teacher and exits 2.
    "distill sweep --tasks all --methods kd,crd,ml_cpc --seeds 0,1,2 --dry-run": Run(
        status=2, expect=("resnet32x4-resnet8x4", "no checkpoint for teacher 'wrn_40_2'", "runs have problems")
    ),
    "distill sweep --tasks all --methods kd,crd,ml_cpc --seeds 0,1,2": Run(
        replace=SWEEP_SMALL, append=SWEEP_TINY, creates=("runs/sweep/kd/resnet32x4-resnet8x4/seed0/summary.json",)
    ),
    "distill report runs/sweep --output report/": Run(
        creates=("report/report.md", "report/report.csv", "report/figures/*.png")  # a task named by its archs
    ),
    "distill sweep --status runs/sweep": Run(expect=("finished", "cells:")),
    "distill train --resume runs/cifar100-crd-...-20261122-140000": Run(
        before=unfinished_run,
        replace=(("runs/cifar100-crd-...-20261122-140000", "{unfinished}"),),
        expect=("resuming from",),
        creates=("runs/cifar100-crd-resnet32x4-resnet8x4-*/summary.json",),
    ),
    "distill train RECIPE --run-dir DIR": Run(
        before=unfinished_run_dir,
        replace=(("RECIPE", "{recipe}"), ("DIR", "{dir}")),
        expect=("resuming from",),
        creates=("runs/stopped/summary.json",),
    ),
    "distill mi-bench --output mi_bench/": Run(
        append=MI_TINY, creates=("mi_bench/mi_bench.csv", "mi_bench/mi_bench.json", "mi_bench/mi_bench.png")
    ),
    "distill mi-bench --paper --device cuda": Run(  # no GPU in a test: the paper's settings on the CPU
        replace=(("--device cuda", "--device cpu"),), append=(*MI_NO_FIGURE, "--output", "mi_paper"), expect=("joint",)
    ),
    "distill mi-bench --estimators cpc,ml-cpc:0.01,nwj": Run(
        append=(*MI_NO_FIGURE, "--output", "mi_estimators"), expect=("NWJ",)
    ),
}
"""README command → how it runs here (in README order, in one sandbox)."""

NOT_RUN: dict[str, str] = {
    "python3 -m venv .venv": "creates a virtual environment; the tests already run in one",
    ". .venv/bin/activate": "a shell built-in that activates that environment",
    "pip install -e .": "installs the package (network, and it would change the environment under test)",
    'pip install -e ".[dev]"': "installs the package and its test dependencies (same)",
    "python -m pytest -q": "runs the whole test suite, this test included",
    "distill sweep --tasks all --methods crd --seeds 0-4 --jobs 4 --devices 0,1,2,3": "needs four GPUs",
    "distill sweep --tasks all --methods kd,crd,ml_cpc --seeds 0,1,2 --launcher slurm --cluster-profile my-cluster.yaml": (
        "needs a Slurm cluster; tests/test_cluster_sweep.py runs the same path through submitit's local executor "
        "and checks the sbatch file against a fake sbatch"
    ),
    "distill sweep --output runs/sweep --retry-failed --launcher slurm --cluster-profile my-cluster.yaml": (
        "needs a Slurm cluster; tests/test_cluster_sweep.py runs --retry-failed through submitit's local executor"
    ),
}
"""README command → why it does not run in a test."""


# --- the tests ------------------------------------------------------------------------------------


def test_readme_commands_are_read_from_bash_blocks_only():
    text = "x\n```bash\na --b c   # note\n# only a comment\nd && e \\\n  f\n```\n```python\nimport os\n```\n```bash\na --b c\n```\n"
    assert readme_commands(text) == ["a --b c", "d", "e f"]


def test_every_readme_command_is_run_or_listed():
    commands = readme_commands(README.read_text(encoding="utf-8"))
    unmapped = [command for command in commands if command not in RUN and command not in NOT_RUN]
    stale = [command for command in [*RUN, *NOT_RUN] if command not in commands]
    assert not set(RUN) & set(NOT_RUN), "a command is both run and listed as not run"
    assert not unmapped, f"README commands that {__name__} neither runs (RUN) nor lists with a reason (NOT_RUN): {unmapped}"
    assert not stale, f"entries in RUN/NOT_RUN that README.md no longer shows (remove or update them): {stale}"


@pytest.mark.slow
@pytest.mark.e2e
def test_readme_commands_run(tmp_path, monkeypatch, capsys):
    sandbox = make_sandbox(tmp_path)
    monkeypatch.chdir(sandbox.root)
    monkeypatch.setenv("DISTILL_TEACHER_MANIFEST", str(sandbox.root / "teachers" / "cifar100.yaml"))
    failures = []
    for command in readme_commands(README.read_text(encoding="utf-8")):
        if command not in RUN:
            continue
        entry = RUN[command]
        if entry.before is not None:
            entry.before(sandbox, monkeypatch)
        argv = entry.argv(command, sandbox.values)
        capsys.readouterr()
        status = main(argv)
        out, err = capsys.readouterr()
        missing = [text for text in entry.expect if text not in out + err]
        absent = [pattern for pattern in entry.creates if not any(sandbox.root.glob(pattern))]
        if status != entry.status or missing or absent:
            failures.append(
                f"$ distill {shlex.join(argv)}\nexit status {status} (expected {entry.status}); "
                f"missing from its output: {missing}; files it did not create: {absent}\n"
                f"--- stdout (end) ---\n{out[-2000:]}\n--- stderr (end) ---\n{err[-2000:]}"
            )
    assert not failures, "\n\n".join(failures)
