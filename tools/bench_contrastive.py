"""Time one CRD step (forward + backward + memory update) at the reference sizes, two ways.

* ``bank_product``: this toolkit's path: score every anchor against the whole memory
  with one B×N product, then pick the K+1 candidate columns.
* ``gather``: the straightforward path of the reference implementation: gather the
  B×(K+1)×d candidate rows, then a batched product.

Both run in this process on the same inputs, with the same negatives. Prints the
median step time of each, their ratio, the peak memory each adds, and what drawing
the negatives on the device costs, both ways: ``claim`` (index space, ∝ B×K; the
default on the CPU) and ``topk`` (a key per pool entry, ∝ B×N; the default elsewhere). Defaults: N=50000, K=16384, B=64, feat_dim=128,
embedding dims 256 (resnet32x4 → resnet8x4).

    python tools/bench_contrastive.py [--device cuda] [--repeats 7] [--loss crd]

``--state-memory`` instead prints the bytes of the loss's state (every parameter and
buffer of the module, the projection heads included) for ``bank: memory``, ``queue``
and ``batch`` at N = 50 000 (CIFAR) and N = 1 281 167 (ImageNet-1k): ``state`` counts
the loss's copy of the dataset's labels (a non-persistent buffer), ``in checkpoints``
does not:

    python tools/bench_contrastive.py --state-memory [--dataset-sizes 50000,1281167]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from distill.losses import Batch, LossContext, build_loss  # noqa: E402
from distill.losses.contrastive.negatives import draw_candidates  # noqa: E402
from distill.models.features import FeatureRecord, FeatureShapes  # noqa: E402


def reset_peak(device: torch.device) -> int:
    """Reset the peak-memory counter; returns the current usage in bytes."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the resident-set high-water mark
    return read_status("VmRSS")


def peak(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    return read_status("VmHWM")


def read_status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_loss(args: argparse.Namespace, scoring: str, device: torch.device):
    shapes = FeatureShapes(maps=[], preact_maps=[], pooled=(args.embed_dim,), logits=(100,))
    labels = torch.arange(args.dataset_size) % 100
    context = LossContext(
        student=shapes, teacher=shapes, num_classes=100, dataset_size=args.dataset_size, labels=labels, batch_size=args.batch_size
    )
    torch.manual_seed(0)
    params = {"num_negatives": args.negatives, "feat_dim": args.feat_dim, "scoring": scoring}
    return build_loss(args.loss, context, params).to(device)


def step_times(args: argparse.Namespace, scoring: str, device: torch.device) -> tuple[list[float], int]:
    loss = make_loss(args, scoring, device)
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(args.batch_size, args.embed_dim, generator=generator).to(device).requires_grad_(True)
    teacher = torch.randn(args.batch_size, args.embed_dim, generator=generator).to(device)
    record = lambda pooled: FeatureRecord(maps=[], preact_maps=[], pooled=pooled, logits=pooled.new_zeros(len(pooled), 100))  # noqa: E731
    indices = torch.randperm(args.dataset_size, generator=generator)[: args.batch_size].to(device)
    batch = Batch(student, indices % 100, indices)
    times = []
    baseline = reset_peak(device)
    for _ in range(args.repeats + 1):
        synchronize(device)
        started = time.perf_counter()
        loss(record(student), record(teacher), batch).backward()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return times[1:], peak(device) - baseline


def negatives_time(args: argparse.Namespace, device: torch.device, method: str) -> float:
    """Median time of one draw of the B×(K+1) candidates the loss makes, with ``method`` (claim or topk)."""
    loss = make_loss(args, "bank_product", device)
    indices = torch.randperm(args.dataset_size)[: args.batch_size].to(device)
    labels = loss.dataset_labels[indices]
    classes, generator = loss.class_order(), loss.generator(device)
    times = []
    for _ in range(args.repeats + 1):
        synchronize(device)
        started = time.perf_counter()
        draw_candidates(
            indices, labels, args.negatives, loss.mode, loss.dataset_labels, args.dataset_size, generator,
            loss._fewest_eligible, classes, method, loss._claim_table,
        )
        synchronize(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def state_bytes(module: torch.nn.Module) -> tuple[int, int]:
    """(bytes of all parameters and buffers, bytes of those a checkpoint holds)."""
    tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    saved = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    return total, saved


def state_memory(args: argparse.Namespace) -> None:
    """Print the loss module's state size per bank kind and dataset size (built on the CPU)."""
    sizes = [int(part) for part in args.dataset_sizes.split(",")]
    print(
        f"{args.loss} loss state (parameters + buffers), feat_dim={args.feat_dim}, embed={args.embed_dim}, "
        f"queue_size=16384, B={args.batch_size}; float32 banks, int64 labels"
    )
    for n in sizes:
        for bank in ("memory", "queue", "batch"):
            shapes = FeatureShapes(maps=[], preact_maps=[], pooled=(args.embed_dim,), logits=(100,))
            labels = torch.arange(n) % 100
            context = LossContext(
                student=shapes, teacher=shapes, num_classes=100, dataset_size=n, labels=labels, batch_size=args.batch_size
            )
            loss = build_loss(args.loss, context, {"feat_dim": args.feat_dim, "bank": bank})
            total, saved = state_bytes(loss)
            print(f"  N={n:>9}  bank {bank:<6}  state {total / 2**20:9.2f} MiB   in checkpoints {saved / 2**20:9.2f} MiB")
            del loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--loss", default="crd", choices=("crd", "cpc", "ml_cpc"))
    parser.add_argument("--dataset-size", type=int, default=50000)
    parser.add_argument("--negatives", type=int, default=16384)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--feat-dim", type=int, default=128)
    parser.add_argument("--embed-dim", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--state-memory", action="store_true", help="print the loss's state size per bank kind instead")
    parser.add_argument("--dataset-sizes", default="50000,1281167", help="N values for --state-memory")
    args = parser.parse_args()
    if args.state_memory:
        state_memory(args)
        return
    device = torch.device(args.device)
    print(
        f"{args.loss} step (forward+backward+update), N={args.dataset_size} K={args.negatives} B={args.batch_size} "
        f"feat_dim={args.feat_dim} embed={args.embed_dim}, device {device} ({torch.get_num_threads()} threads), "
        f"median of {args.repeats}"
    )
    results = {}
    for scoring in ("bank_product", "gather"):
        times, memory = step_times(args, scoring, device)
        results[scoring] = (statistics.median(times), memory)
        print(f"  {scoring:<13} {1000 * results[scoring][0]:9.1f} ms   peak memory +{memory / 2**20:8.1f} MiB")
    fast, slow = results["bank_product"], results["gather"]
    print(f"  speed-up {slow[0] / fast[0]:.1f}x, memory {slow[1] / max(fast[1], 1):.1f}x less")
    for method in ("claim", "topk"):  # the loss uses claim on the CPU, topk elsewhere (negatives.draw_candidates)
        draw = negatives_time(args, device, method)
        print(
            f"  drawing the B×K negatives (shared by both directions) on the device, {method:<5}: {1000 * draw:.1f} ms "
            f"({100 * draw / fast[0]:.0f}% of the fast step)"
        )


if __name__ == "__main__":
    main()
