"""Start-up cost: the commands that need no network never import torch (nor Accelerate, torchvision, timm).

Each case runs the real CLI in a fresh interpreter and reports which heavy modules
ended up in ``sys.modules``: a fact about imports, not a timing, so the test holds
on a loaded machine. A recipe with a wrong model name is the positive control: its
check needs the model registry, hence torch, so the probe must see torch there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes/cifar100/kd/resnet32x4-resnet8x4.yaml"
HEAVY = ("torch", "accelerate", "torchvision", "timm", "tensorboard", "numpy")

PROBE = f"""
import json, sys
from distill.cli.main import main
try:
    status = main(sys.argv[1:])
except SystemExit as stop:
    status = stop.code
heavy = sorted(name for name in {HEAVY!r} if name in sys.modules)
print("PROBE" + json.dumps({{"status": status, "heavy": heavy}}), file=sys.stderr)
"""


def probe(*args: str, cwd: Path = REPO) -> dict:
    """Run ``distill ARGS`` in a fresh interpreter; its exit status and the heavy modules it imported."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args], check=False, capture_output=True, text=True, timeout=120, cwd=cwd
    )
    lines = [line for line in result.stderr.splitlines() if line.startswith("PROBE")]
    assert lines, result.stderr[-2000:]
    return json.loads(lines[-1][len("PROBE"):])


@pytest.fixture(scope="module")
def malformed_recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipes") / "broken.yaml"
    path.write_text("name: broken\nstudent: {arch: resnet8x4\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "args",
    [
        ("--help",),
        ("train", "--help"),
        ("recipes",),
        ("train", str(RECIPE), "bogus.key=1"),
        ("train", str(RECIPE), "studnt.arch=resnet8"),
        ("train", str(RECIPE), "schedule.epochs=ten"),
    ],
    ids=["help", "train-help", "recipes", "unknown-top-key", "misspelt-section", "wrong-type"],
)
def test_commands_that_need_no_torch_do_not_import_it(args):
    outcome = probe(*args)
    assert outcome["status"] in (0, 2)
    assert outcome["heavy"] == []


def test_malformed_yaml_fails_without_importing_torch(malformed_recipe):
    outcome = probe("train", str(malformed_recipe))
    assert outcome == {"status": 2, "heavy": []}


def test_the_probe_sees_torch_when_a_check_needs_the_registries():
    outcome = probe("train", str(RECIPE), "student.arch=resnet8x5")
    assert outcome["status"] == 2
    assert "torch" in outcome["heavy"]
    assert "accelerate" not in outcome["heavy"]  # the trainer is imported only after the recipe is valid


def test_mi_bench_options_are_complete_when_it_is_used():
    result = subprocess.run(
        [sys.executable, "-m", "distill", "mi-bench", "--help"], check=False, capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    for text in ("--steps", "--paper", "--estimators", "Estimators: NAME or NAME:ALPHA", "quick: 2000"):
        assert text in result.stdout
