"""How many operators one training step dispatches: the launches a CUDA graph would replace.

At batch 64 a GPU finishes resnet32x4 → resnet8x4's arithmetic in a few milliseconds,
so a step's time is set by how many kernels the host launches (a few microseconds of
Python, dispatcher and driver time each) unless ``cuda_graph: true`` replays them as one
graph. This counts them for the shipped recipe's step (``tools/benchmark.py``'s fast
path: the toolkit's Trainer), under ``torch.profiler``, on whatever device torch picks:

* **operators:** aten operators that call no other aten operator (the ones that run a
  kernel), minus those that only make views or metadata (``view``, ``t``, ``empty`` …).
  On a CPU this approximates what a GPU step launches: some operators launch several
  kernels or none, and the optimiser runs per parameter there (PyTorch's multi-tensor
  ``foreach`` kernels are a GPU default), so the CPU count overstates its share;
* **kernel launches** (CUDA only): the ``cudaLaunchKernel`` calls themselves.

    python tools/count_step_ops.py [--methods crd_kd,kd] [--batch-size 64] [--steps 3] [-o key=value]
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

import benchmark
import torch
from torch.profiler import ProfilerActivity

NO_KERNEL = frozenset({
    "aten::view", "aten::_unsafe_view", "aten::reshape", "aten::_reshape_alias", "aten::as_strided", "aten::expand",
    "aten::t", "aten::transpose", "aten::permute", "aten::unsqueeze", "aten::squeeze", "aten::select", "aten::slice",
    "aten::detach", "aten::detach_", "aten::alias", "aten::empty", "aten::empty_strided", "aten::empty_like",
    "aten::resolve_conj", "aten::resolve_neg", "aten::lift_fresh", "aten::split", "aten::unbind", "aten::chunk",
    "aten::narrow", "aten::flatten", "aten::expand_as", "aten::view_as", "aten::result_type", "aten::is_nonzero",
    "aten::set_", "aten::_has_compatible_shallow_copy_type", "aten::_to_copy", "aten::to", "aten::contiguous",
    "aten::resize_", "aten::as_strided_", "aten::zeros_like", "aten::ones_like",
})  # fmt: skip
"""Operators that run no kernel of their own (``to``/``contiguous`` count through the ``copy_`` they call, if any)."""

LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cudaGraphLaunch")


def leaf_operators(events) -> Counter:
    """Per name, the aten operators that call no other aten operator and are not in :data:`NO_KERNEL`."""
    counts: Counter = Counter()
    for event in events:
        if not event.name.startswith("aten::") or event.name in NO_KERNEL:
            continue
        if any(child.name.startswith("aten::") for child in event.cpu_children):
            continue
        counts[event.name] += 1
    return counts


def count(method: str, args: argparse.Namespace, scratch: Path) -> dict:
    bench_args = benchmark.parse_args(
        ["--methods", method, "--workers", "0", "--batch-size", str(args.batch_size), "--train-size", str(args.train_size),
         "--teacher", args.teacher, "--student", args.student, *[f"--override={override}" for override in args.override],
         *(["--data-root", args.data_root] if args.data_root else [])]
    )  # fmt: skip
    data_root, _ = benchmark.prepare_data(bench_args, scratch)
    teacher = benchmark.write_random_teacher(bench_args.teacher, scratch)
    path = benchmark.build_fast(method, bench_args, data_root, teacher, scratch)
    stream = benchmark.BatchStream(path.loader)
    for _ in range(args.warmup):
        path.step(stream.next())
    batches = [stream.next() for _ in range(args.steps)]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch.profiler.profile(activities=activities) as profile:
        for batch in batches:
            path.step(batch)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    events = profile.events()
    operators = leaf_operators(events)
    launches = sum(1 for event in events if event.name in LAUNCHES)
    path.close()
    return {
        "operators_per_step": sum(operators.values()) / args.steps,
        "kernel_launches_per_step": launches / args.steps if torch.cuda.is_available() else None,
        "most_frequent": [(name, n / args.steps) for name, n in operators.most_common(8)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="crd_kd,kd", help="comma-separated shipped recipe families")
    parser.add_argument("--teacher", default="resnet32x4", help="teacher architecture (random weights)")
    parser.add_argument("--student", default="resnet8x4", help="student architecture")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-size", type=int, default=50000, help="fake CIFAR-100 images (CRD's bank rows)")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=4, help="steps before profiling (a cuda_graph step captures in them)")
    parser.add_argument("--data-root", help="reuse (or write once) the fake CIFAR-100 here instead of a temp dir")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="key.path=value")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"torch {torch.__version__} on {device}; {args.teacher} -> {args.student}, batch {args.batch_size}; "
          f"{args.steps} profiled steps after {args.warmup}; overrides {args.override or 'none'}")  # fmt: skip
    with tempfile.TemporaryDirectory() as scratch:
        for method in args.methods.split(","):
            found = count(method, args, Path(scratch))
            launches = found["kernel_launches_per_step"]
            print(f"{method}: {found['operators_per_step']:.0f} operators per step"
                  + (f", {launches:.0f} kernel launches" if launches is not None else " (kernel launches: CUDA only)"))  # fmt: skip
            print("   most frequent: " + ", ".join(f"{name.removeprefix('aten::')} {n:.0f}" for name, n in found["most_frequent"]))


if __name__ == "__main__":
    main()
