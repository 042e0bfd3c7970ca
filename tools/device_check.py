"""The Python parts of ``tools/device_check.sh``: the environment, the profiler summary, and the final summary.

    python tools/device_check.py env OUT_DIR          # torch / CUDA / device → OUT_DIR/environment.json
    python tools/device_check.py profile OUT_DIR      # one CRD+KD step under torch.profiler (CUDA only)
    python tools/device_check.py summary OUT_DIR      # OUT_DIR/parts.tsv + figures → summary.json, summary.md

``DISTILL_DEVICE_CHECK_FAIL=PART`` makes part PART fail on purpose (the script's test
uses it to show that a failing part does not stop the others). Nothing here installs
anything or reaches the network.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
sys.path[:0] = [str(REPO), str(TOOLS)]

FAIL_ENV = "DISTILL_DEVICE_CHECK_FAIL"
PROFILE_WARMUP, PROFILE_STEPS = 5, 5


def fail_if_asked(part: str) -> None:
    """Exit 1 when ``DISTILL_DEVICE_CHECK_FAIL`` names this part (a deliberate failure, for the script's test)."""
    if os.environ.get(FAIL_ENV) == part:
        print(f"{part}: failing on purpose ({FAIL_ENV}={part})", file=sys.stderr)
        raise SystemExit(1)


def environment(out: Path) -> dict[str, Any]:
    """Versions and the device, written to ``environment.json``: what every figure of the check ran on."""
    fail_if_asked("environment")
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }
    for module in ("accelerate", "timm", "torchvision"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = None
    if info["cuda_available"]:
        info["device"] = torch.cuda.get_device_name(0)
        info["device_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
        info["cudnn"] = torch.backends.cudnn.version()
    (out / "environment.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))
    return info


def profile(out: Path, scratch: Path) -> dict[str, Any]:
    """Where the time of a CRD+KD step goes on CUDA (resnet32x4 → resnet8x4, batch 64, bf16 off, eager).

    The step is tools/benchmark.py's fast path (the toolkit's Trainer). After
    ``PROFILE_WARMUP`` steps, ``PROFILE_STEPS`` steps run under ``torch.profiler``; per
    step it reports the wall time, the summed device time of the kernels, the number of
    kernel launches and the host-side rest (wall − kernels: Python, launches, waits).
    The operator table sorted by CUDA time goes to ``profile_crd_kd.txt``.
    """
    fail_if_asked("profile")
    import benchmark
    import torch
    from torch.profiler import ProfilerActivity

    if not torch.cuda.is_available():
        raise SystemExit("profile: needs CUDA")
    args = benchmark.parse_args(["--methods", "crd_kd", "--workers", "0", "--data-root", str(scratch / "data")])
    data_root, _ = benchmark.prepare_data(args, scratch)
    teacher = benchmark.write_random_teacher(args.teacher, scratch)
    path = benchmark.build_fast("crd_kd", args, data_root, teacher, scratch)
    stream = benchmark.BatchStream(path.loader)
    device = torch.device("cuda")
    batches = [stream.next() for _ in range(PROFILE_WARMUP + PROFILE_STEPS)]
    for batch in batches[:PROFILE_WARMUP]:
        path.step(batch)
    torch.cuda.synchronize(device)
    with torch.profiler.profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        started = time.perf_counter()
        for batch in batches[PROFILE_WARMUP:]:
            path.step(batch)
        torch.cuda.synchronize(device)
        wall = time.perf_counter() - started
    events = prof.key_averages()
    table = events.table(sort_by="cuda_time_total", row_limit=30)
    (out / "profile_crd_kd.txt").write_text(table + "\n")
    kernels = [e for e in events if str(e.device_type).endswith("CUDA")]  # the kernels themselves, not the ops above them
    kernel_us = sum(e.self_device_time_total for e in kernels)
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    per_step = {
        "wall_ms": 1000 * wall / PROFILE_STEPS,
        "kernel_ms": kernel_us / 1000 / PROFILE_STEPS,
        "kernel_launches": launches / PROFILE_STEPS,
    }
    per_step["host_and_idle_ms"] = per_step["wall_ms"] - per_step["kernel_ms"]
    summary = {"what": "CRD+KD step, resnet32x4 -> resnet8x4, batch 64, fp32, eager, under torch.profiler",
               "steps": PROFILE_STEPS, "per_step": per_step, "table": "profile_crd_kd.txt"}  # fmt: skip
    (out / "profile.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table)
    print(json.dumps(summary, indent=2))
    path.close()
    return summary


# ----------------------------------------------------------------------------- summary


def read_parts(out: Path) -> list[dict[str, Any]]:
    """``parts.tsv`` rows (part, status, seconds, note) as the shell script wrote them."""
    rows = []
    table = out / "parts.tsv"
    for line in table.read_text().splitlines() if table.is_file() else []:
        name, status, seconds, note = (line.split("\t") + ["", "", ""])[:4]
        rows.append({"part": name, "status": status, "seconds": float(seconds or 0), "note": note})
    return rows


def read_junit(path: Path) -> dict[str, int] | None:
    """Test counts of a pytest JUnit XML file: tests, failures, errors, skipped, passed."""
    if not path.is_file():
        return None
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def benchmark_rows(out: Path) -> list[dict[str, Any]]:
    """One row per (configuration, method, path) of every ``bench_*.json`` the benchmark parts wrote."""
    rows = []
    for file in sorted(out.glob("bench_*.json")):
        report = json.loads(file.read_text())
        config = file.stem.removeprefix("bench_")
        for method, paths in report["results"].items():
            for name, result in paths.items():
                rows.append({
                    "config": config, "method": method, "path": name, "device": report["device"]["description"],
                    "images_per_s": result["images_per_s"], "median_step_ms": 1000 * result["median_step_s"],
                    "data_wait_fraction": result["data_wait_fraction"], "peak_memory_bytes": result["peak_memory_bytes"],
                    "projected_240_epochs_h": result["projected_240_epochs_h"],
                })  # fmt: skip
    return rows


def summarise(out: Path) -> dict[str, Any]:
    """Gather every part's status and figure into ``summary.json`` and ``summary.md``."""
    parts = read_parts(out)
    summary: dict[str, Any] = {
        "written": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "parts": parts,
        "failed": [p["part"] for p in parts if p["status"] == "failed"],
        "skipped": [p["part"] for p in parts if p["status"].startswith("skipped")],
        "environment": json.loads((out / "environment.json").read_text()) if (out / "environment.json").is_file() else None,
        "suite": read_junit(out / "cuda_suite.xml"),
        "cuda_figures": json.loads((out / "cuda_figures.json").read_text()) if (out / "cuda_figures.json").is_file() else None,
        "benchmarks": benchmark_rows(out),
        "profile": json.loads((out / "profile.json").read_text()) if (out / "profile.json").is_file() else None,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(markdown(summary))
    print(markdown(summary))
    return summary


def markdown(summary: dict[str, Any]) -> str:
    """The summary as Markdown: parts, environment, suite counts, memory, benchmark table, profile."""
    lines = [f"# Device check, {summary['written']}", "", "| part | status | seconds | note |", "|---|---|---:|---|"]
    lines += [f"| {p['part']} | {p['status']} | {p['seconds']:.0f} | {p['note']} |" for p in summary["parts"]]
    env = summary["environment"]
    if env:
        lines += ["", f"torch {env['torch']}, CUDA {env['cuda_version']}, device: {env.get('device', 'none (CPU only)')}"]
    if summary["suite"]:
        s = summary["suite"]
        lines += ["", f"GPU suite: {s['passed']} passed, {s['failures']} failed, {s['errors']} errors, {s['skipped']} skipped"]
    figures = summary["cuda_figures"] or {}
    if "crd_step_peak_bytes_reference_sizes" in figures:
        peak = figures["crd_step_peak_bytes_reference_sizes"] / 2**20
        lines += ["", f"Peak memory of a CE + CRD step (resnet32x4 → resnet8x4, batch 64, K=16384, N=50000): {peak:.0f} MiB"]
    if summary["benchmarks"]:
        lines += ["", "| config | method | path | device | images/s | median step | data wait | 240 epochs |",
                  "|---|---|---|---|---:|---:|---:|---:|"]  # fmt: skip
        for r in summary["benchmarks"]:
            lines.append(
                f"| {r['config']} | {r['method']} | {r['path']} | {r['device']} | {r['images_per_s']:.0f} | "
                f"{r['median_step_ms']:.1f} ms | {100 * r['data_wait_fraction']:.0f}% | {r['projected_240_epochs_h']:.2f} h |"
            )
    if summary["profile"]:
        step = summary["profile"]["per_step"]
        lines += ["", f"Profile ({summary['profile']['what']}), per step: wall {step['wall_ms']:.2f} ms, "
                      f"kernels {step['kernel_ms']:.2f} ms, {step['kernel_launches']:.0f} kernel launches, "
                      f"host and idle {step['host_and_idle_ms']:.2f} ms; operator table: {summary['profile']['table']}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("env", "profile", "summary"))
    parser.add_argument("out", type=Path)
    parser.add_argument("--scratch", type=Path, help="profile: where the fake CIFAR-100 and the teacher live")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.command == "env":
        environment(args.out)
    elif args.command == "profile":
        profile(args.out, args.scratch or args.out)
    else:
        summarise(args.out)


if __name__ == "__main__":
    main()
