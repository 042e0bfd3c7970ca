"""tools/benchmark.py end to end at toy sizes: every figure is there, positive, finite and consistent.

Speed itself is never asserted: the point is that the tool runs and reports honestly.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def benchmark_tool():
    spec = importlib.util.spec_from_file_location("benchmark_tool", REPO / "tools" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the tool's annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.mark.slow
def test_benchmark_reports_every_figure(benchmark_tool, tmp_path, capsys):
    json_path = tmp_path / "bench.json"
    argv = [
        "--student", "resnet8", "--teacher", "resnet14", "--train-size", "200", "--steps", "2",
        "--warmup", "1", "--batch-size", "16", "--workers", "0", "--data-root", str(tmp_path / "data"),
        "--json", str(json_path),
    ]
    returned = benchmark_tool.main(argv)
    printed = capsys.readouterr().out
    report = json.loads(json_path.read_text())
    assert report == json.loads(json.dumps(returned))

    description = report["device"]["description"]
    assert description.startswith(("CPU:", "GPU:")) and "torch" in description
    assert f"device: {description}" in printed and f"ran on {report['device']['ran_on']}" in printed
    assert report["settings"]["train_size"] == 200

    for method in ("kd", "crd"):
        for path in ("fast", "reference"):
            figures = report["results"][method][path]
            assert figures["images"] == 2 * 16
            for key in ("images_per_s", "median_step_s", "seconds"):
                assert math.isfinite(figures[key]) and figures[key] > 0, (method, path, key)
            assert 0 <= figures["data_wait_fraction"] < 1
            assert len(figures["step_seconds"]) == len(figures["wait_seconds"]) == 2
            assert figures["data_path"]
            memory = figures["peak_memory_bytes"]
            assert memory is None or isinstance(memory, int)
        fast, reference = (report["results"][method][p]["images_per_s"] for p in ("fast", "reference"))
        ratio = report["summary"]["fast_over_reference_images_per_s"][method]
        assert ratio == pytest.approx(fast / reference)
        assert f"{ratio:.2f}×" in printed
        by_median = report["summary"]["reference_over_fast_median_step"][method]
        assert by_median == pytest.approx(
            report["results"][method]["reference"]["median_step_s"] / report["results"][method]["fast"]["median_step_s"]
        )

    crd_kd = report["summary"]["crd_over_kd_step_time"]
    for path in ("fast", "reference"):
        expected = report["results"]["crd"][path]["median_step_s"] / report["results"]["kd"][path]["median_step_s"]
        assert crd_kd[path] == pytest.approx(expected) and crd_kd[path] > 0
    assert "CRD/KD step-time ratio" in printed
    assert (tmp_path / "data" / "cifar-100-python" / "train").is_file()  # --data-root is written once, then reused


def test_rejects_unknown_method(benchmark_tool):
    with pytest.raises(SystemExit):
        benchmark_tool.parse_args(["--methods", "kd,fitnet"])


@pytest.mark.slow
def test_data_only_and_teacher_forward_modes(benchmark_tool, tmp_path, capsys):
    common = ["--steps", "2", "--warmup", "1", "--batch-size", "16", "--workers", "0"]
    data = benchmark_tool.main([*common, "--data-only", "--train-size", "200", "--data-root", str(tmp_path / "data")])
    assert set(data["images_per_s"]) == {"fast", "reference_kd", "reference_crd", "two_views_device", "two_views_workers"}
    assert all(math.isfinite(rate) and rate > 0 for rate in data["images_per_s"].values())
    assert "device-resident" in data["fast_path"]
    forward = benchmark_tool.main([*common, "--teacher-forward", "--teacher", "resnet8"])
    medians = forward["median_forward_s"]
    assert set(medians) == {"fp32", "bf16"} and all(value > 0 for value in medians.values())
    assert forward["bf16_speedup"] == pytest.approx(medians["fp32"] / medians["bf16"])
    assert "bf16 speed-up" in capsys.readouterr().out


@pytest.mark.slow
def test_crd_kd_and_the_projected_schedule(benchmark_tool, tmp_path, capsys):
    argv = [
        "--student", "resnet8", "--teacher", "resnet14", "--train-size", "200", "--steps", "1", "--warmup", "1",
        "--batch-size", "16", "--workers", "0", "--methods", "crd_kd", "--data-root", str(tmp_path / "data"),
    ]  # fmt: skip
    report = benchmark_tool.main(argv)
    for path in ("fast", "reference"):
        result = report["results"]["crd_kd"][path]
        expected = 240 * 200 / result["images_per_s"] / 3600
        assert result["projected_240_epochs_h"] == pytest.approx(expected)
    assert "240 epochs" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.e2e
def test_the_step_guard_benchmark_reports_both_times():
    import re
    import subprocess

    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "bench_step_guard.py"), "--steps", "1",
         "-o", "losses.crd.num_negatives=64", "-o", "student.arch=resnet8", "-o", "teacher.arch=resnet14"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    step = re.search(r"median training step ([\d.]+) ms over 1 steps", result.stdout)
    flags = re.search(r"median StepGuard.flags ([\d.]+) ms = ([\d.]+)% of a step", result.stdout)
    assert step and flags and float(step.group(1)) > 0 and float(flags.group(1)) > 0


@pytest.mark.slow
def test_a_method_without_a_reference_loop_is_timed_on_the_fast_path_against_kd(benchmark_tool, tmp_path, capsys):
    argv = [
        "--student", "resnet8", "--teacher", "resnet14", "--train-size", "200", "--steps", "2", "--warmup", "1",
        "--batch-size", "16", "--workers", "0", "--methods", "kd,kd_ls", "--data-root", str(tmp_path / "data"),
    ]
    report = benchmark_tool.main(argv)
    printed = capsys.readouterr().out
    assert set(report["results"]["kd_ls"]) == {"fast"} and set(report["results"]["kd"]) == {"fast", "reference"}
    expected = report["results"]["kd_ls"]["fast"]["median_step_s"] / report["results"]["kd"]["fast"]["median_step_s"]
    assert report["summary"]["over_kd_step_time"]["kd_ls"] == {"fast": pytest.approx(expected)}
    assert "kd_ls" not in report["summary"]["fast_over_reference_images_per_s"]
    assert "no reference-style loop for kd_ls" in printed and "step time ÷ KD's" in printed


@pytest.mark.slow
def test_no_reference_times_the_fast_path_only(benchmark_tool, tmp_path, capsys):
    """``--no-reference`` (the device check's bf16 and compile parts): no reference loop, the ratios say why."""
    argv = [
        "--student", "resnet8", "--teacher", "resnet14", "--train-size", "200", "--steps", "2", "--warmup", "1",
        "--batch-size", "16", "--workers", "0", "--methods", "kd,crd", "--no-reference", "--data-root", str(tmp_path / "data"),
    ]
    report = benchmark_tool.main(argv)
    printed = capsys.readouterr().out
    assert set(report["results"]["kd"]) == {"fast"} and set(report["results"]["crd"]) == {"fast"}
    assert report["summary"]["fast_over_reference_images_per_s"] == {}
    assert set(report["summary"]["crd_over_kd_step_time"]) == {"fast"}
    assert "reference not timed: --no-reference" in printed and "CRD/KD step-time ratio (median): fast" in printed


@pytest.mark.slow
@pytest.mark.e2e
def test_the_operator_count_reports_each_method():
    import re
    import subprocess

    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "count_step_ops.py"), "--methods", "crd,crd_kd", "--teacher", "resnet14",
         "--student", "resnet8", "--train-size", "256", "--batch-size", "16", "--steps", "1", "--warmup", "1",
         "-o", "losses.crd.num_negatives=64"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    counts = dict(re.findall(r"^(\w+): (\d+) operators per step \(kernel launches: CUDA only\)$", result.stdout, re.M))
    assert set(counts) == {"crd", "crd_kd"}
    assert 50 < int(counts["crd"]) < int(counts["crd_kd"])  # the KD term adds its softmaxes and their backward


def test_leaf_operators_count_what_runs_a_kernel():
    import importlib
    from types import SimpleNamespace

    sys.path.insert(0, str(REPO / "tools"))
    count_step_ops = importlib.import_module("count_step_ops")

    def op(name, *children):
        return SimpleNamespace(name=name, cpu_children=list(children))

    mm = op("aten::mm")
    linear = op("aten::linear", op("aten::t"), op("aten::addmm"))
    events = [linear, *linear.cpu_children, mm, op("aten::view"), op("aten::add_"), op("aten::add_"), op("cudaLaunchKernel")]
    assert count_step_ops.leaf_operators(events) == {"aten::addmm": 1, "aten::mm": 1, "aten::add_": 2}
