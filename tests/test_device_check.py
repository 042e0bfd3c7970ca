"""tools/device_check.sh end to end on this machine, and the summary it writes.

Without CUDA every CUDA part must say "skipped: no CUDA" and the script exit 0; a
part made to fail (``DISTILL_DEVICE_CHECK_FAIL``) is reported and the parts after it
still run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tools" / "device_check.sh"
CUDA_PARTS = ["bench_fp32", "bench_bf16", "bench_bf16_channels_last", "bench_bf16_cuda_graph", "profile", "launches_cuda_graph",
              "bench_bf16_compile"]

sys.path.insert(0, str(REPO / "tools"))
import device_check  # noqa: E402


def run_check(out: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True, timeout=300, env=environment)


def statuses(out: Path) -> dict[str, str]:
    return {p["part"]: p["status"] for p in json.loads((out / "summary.json").read_text())["parts"]}


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-CUDA path: on a GPU machine the script runs the real check")
def test_without_cuda_every_cuda_part_says_skipped_and_the_check_exits_0(tmp_path):
    result = run_check(tmp_path / "out")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = tmp_path / "out"
    assert statuses(out) == {"environment": "passed", "cuda_suite": "skipped: no CUDA", **dict.fromkeys(CUDA_PARTS, "skipped: no CUDA")}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == [] and summary["benchmarks"] == [] and summary["profile"] is None
    assert summary["suite"]["skipped"] == summary["suite"]["tests"] > 0 and summary["suite"]["passed"] == 0
    assert summary["environment"]["cuda_available"] is False
    assert "skipped: no CUDA" in (out / "summary.md").read_text()
    assert "cuda_suite: skipped: no CUDA" in result.stdout and "[device_check " in result.stdout  # progress lines


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("failing", ["environment", "cuda_suite"])
def test_a_failing_part_is_reported_and_the_others_still_run(failing, tmp_path):
    result = run_check(tmp_path / "out", DISTILL_DEVICE_CHECK_FAIL=failing)
    assert result.returncode == 1
    parts = statuses(tmp_path / "out")
    assert parts[failing] == "failed"
    assert list(parts) == ["environment", "cuda_suite", *CUDA_PARTS], "every part after the failing one ran or said why not"
    assert f"{failing}: FAILED" in result.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["failed"] == [failing]


def test_a_missing_out_dir_argument_is_a_usage_error():
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "usage: tools/device_check.sh OUT_DIR" in result.stderr


def test_the_summary_tables_every_benchmark_figure_with_its_device(tmp_path):
    """A benchmark JSON in tools/benchmark.py's shape becomes one row per (config, method, path), device named."""
    result = {"images_per_s": 12800.0, "median_step_s": 0.005, "data_wait_fraction": 0.01,
              "peak_memory_bytes": 2**30, "projected_240_epochs_h": 0.26}  # fmt: skip
    report = {"device": {"description": "GPU: NVIDIA H200", "ran_on": "cuda"}, "results": {"crd": {"fast": result}}}
    (tmp_path / "bench_bf16.json").write_text(json.dumps(report))
    (tmp_path / "parts.tsv").write_text("bench_bf16\tpassed\t42\t\nprofile\tfailed\t3\texit 1; profile.log\n")
    (tmp_path / "profile.json").write_text(json.dumps({"what": "w", "steps": 5, "table": "t.txt", "per_step": {
        "wall_ms": 6.0, "kernel_ms": 2.5, "kernel_launches": 400, "host_and_idle_ms": 3.5}}))  # fmt: skip
    summary = device_check.summarise(tmp_path)
    assert summary["failed"] == ["profile"] and summary["skipped"] == []
    assert summary["benchmarks"] == [{"config": "bf16", "method": "crd", "path": "fast", "device": "GPU: NVIDIA H200",
                                      "images_per_s": 12800.0, "median_step_ms": 5.0, "data_wait_fraction": 0.01,
                                      "peak_memory_bytes": 2**30, "projected_240_epochs_h": 0.26}]  # fmt: skip
    text = (tmp_path / "summary.md").read_text()
    assert "| bf16 | crd | fast | GPU: NVIDIA H200 | 12800 | 5.0 ms | 1% | 0.26 h |" in text
    assert "kernels 2.50 ms, 400 kernel launches, host and idle 3.50 ms" in text
