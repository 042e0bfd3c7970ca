"""Start-up cost: the commands that need no network never import torch (nor Accelerate, torchvision, timm).

Each case runs the real CLI in a fresh interpreter and reports which heavy modules
ended up in ``sys.modules``: a fact about imports, not a timing, so the test holds
on a loaded machine. A recipe with a wrong model name is the positive control: its
check needs the model registry, hence torch, so the probe must see torch there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

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


@pytest.mark.slow
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


THREADS_PROBE = """
import json, os, sys
from distill.cli.main import main
status = main(["recipes"])
import torch
from distill.engine.threads import cpu_threads_description
print("PROBE" + json.dumps({"status": status, "policy": os.environ.get("OMP_WAIT_POLICY"),
      "threads": torch.get_num_threads(), "line": cpu_threads_description()}), file=sys.stderr)
"""


def threads_probe(**variables: str) -> dict:
    """The CLI's thread choice in a fresh interpreter whose environment holds only ``variables`` of these."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "DISTILL_CPU_THREADS")}
    env.update(variables)
    result = subprocess.run(
        [sys.executable, "-c", THREADS_PROBE], check=False, capture_output=True, text=True, timeout=120, cwd=REPO, env=env
    )
    lines = [line for line in result.stderr.splitlines() if line.startswith("PROBE")]
    assert lines, result.stderr[-2000:]
    return json.loads(lines[-1][len("PROBE"):])


@pytest.mark.slow
def test_the_cli_makes_waiting_threads_sleep_before_torch_loads():
    outcome = threads_probe()
    assert outcome["policy"] == "PASSIVE"
    assert "OMP_WAIT_POLICY=PASSIVE (distill's default)" in outcome["line"]
    assert outcome["threads"] == torch_default_threads()
    assert outcome["line"].startswith(f"CPU threads: {outcome['threads']} (torch's default: one per core)")


@pytest.mark.slow
def test_the_users_variables_win():
    outcome = threads_probe(OMP_WAIT_POLICY="ACTIVE", OMP_NUM_THREADS="1")
    assert outcome["policy"] == "ACTIVE" and outcome["threads"] == 1
    assert outcome["line"].startswith("CPU threads: 1 (OMP_NUM_THREADS), OMP_WAIT_POLICY=ACTIVE (your environment)")
    outcome = threads_probe(DISTILL_CPU_THREADS="1", OMP_NUM_THREADS="2")  # distill's own variable replaces OpenMP's
    assert outcome["threads"] == 1
    assert outcome["line"].startswith("CPU threads: 1 (DISTILL_CPU_THREADS)")


def test_a_bad_thread_count_is_one_line_and_status_2():
    env = {**os.environ, "DISTILL_CPU_THREADS": "two"}
    result = subprocess.run(
        [sys.executable, "-m", "distill", "recipes"], check=False, capture_output=True, text=True, timeout=120, cwd=REPO, env=env
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "distill: error: DISTILL_CPU_THREADS='two': expected a positive number of threads, e.g. DISTILL_CPU_THREADS=2"
    ]


def torch_default_threads() -> int:
    """torch's own default thread count, asked of a fresh interpreter without the variables."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "DISTILL_CPU_THREADS")}
    result = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        check=True, capture_output=True, text=True, timeout=120, env=env,
    )
    return int(result.stdout.strip())
