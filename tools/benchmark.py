"""Time this toolkit's training step against a straightforward reference-style loop.

Both run in this process, one after the other, on the same device, the same fake
CIFAR-100 and the same teacher/student pair:

* ``fast``: the toolkit itself. A :class:`~distill.engine.trainer.Trainer` built from
  the shipped recipe (``recipes/cifar100/<method>/<teacher>-<student>.yaml``), fed by
  ``trainer.train_loader`` and stepped with ``trainer.train_step``: whatever data path,
  precision and loss implementation the toolkit currently uses.
* ``reference``: the loop the CRD benchmark's reference code runs, written here:
  torchvision's ``CIFAR100`` with per-sample PIL transforms (RandomCrop(32, padding=4),
  RandomHorizontalFlip, ToTensor, Normalize) in DataLoader workers, fp32, plain SGD
  (lr 0.05, momentum 0.9, weight decay 5e-4). For CRD the dataset draws the K=16384
  negatives of every sample with numpy in ``__getitem__`` and the loss gathers the
  B×(K+1)×d memory rows before a batched product. That gather is the toolkit's own
  ``scoring: gather`` (the formulation ``tools/bench_contrastive.py`` times), fed with
  the dataset's negatives: one implementation of the memory bank, not two.

For each (path, method) it reports images/s over the timed steps, the median step
time, the data-wait fraction (time blocked fetching the next batch ÷ step time) and
the peak memory the path adds, then the fast ÷ reference throughput ratio per method
and the CRD ÷ KD step-time ratio per path. On a GPU every step is synchronised, so
the figures are real device times (this removes some CPU/GPU overlap from both paths
alike). Nothing here asserts on speed.

    python tools/benchmark.py [--teacher resnet32x4 --student resnet8x4] [--methods kd,crd]
        [--steps 20] [--warmup 3] [--batch-size 64] [--train-size 50000] [--workers 2]
        [--precision fp32|bf16|fp16] [--channels-last] [--compile] [-o key=value]
        [--data-root DIR] [--json PATH]
    python tools/benchmark.py --data-only        # the data paths alone, images/s
    python tools/benchmark.py --teacher-forward  # the teacher's forward, fp32 vs bf16 autocast
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import CIFAR100, VisionDataset
from tqdm.auto import tqdm

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
sys.path[:0] = [str(REPO), str(TOOLS)]

from bench_contrastive import peak, reset_peak, synchronize  # noqa: E402

from distill.benchmark.tasks import SMALL_LR_STUDENTS  # noqa: E402
from distill.data import write_fake_cifar  # noqa: E402
from distill.data.cifar import CIFAR100Dataset  # noqa: E402
from distill.data.transforms import CIFAR100_MEAN, CIFAR100_STD  # noqa: E402
from distill.engine.trainer import Trainer  # noqa: E402
from distill.losses import Batch, LossContext  # noqa: E402
from distill.losses.contrastive.loss import CRDLoss  # noqa: E402
from distill.models import FeatureRecord, create_model, probe_feature_shapes  # noqa: E402
from distill.recipe.load import load_recipe  # noqa: E402
from distill.recipe.resolve import resolve_recipe  # noqa: E402

REFERENCE_METHODS = ("kd", "crd", "crd_kd")
"""The methods that also have a reference-style loop here; any other shipped method is timed on the fast path only."""
DEFAULT_PAIR = "resnet32x4-resnet8x4"
NUM_CLASSES = 100
FAKE_TEST_SIZE = 100
"""The test split is built by the trainer but never read here: the smallest valid one."""


@dataclass(frozen=True)
class ReferenceSettings:
    """The reference's training settings for one method (CRD benchmark, RepDistiller scripts)."""

    ce_weight: float
    kd_weight: float
    crd_weight: float
    kd_temperature: float = 4.0
    num_negatives: int = 16384
    feat_dim: int = 128
    nce_temperature: float = 0.07
    nce_momentum: float = 0.5
    momentum: float = 0.9
    weight_decay: float = 5e-4


REFERENCE = {
    "kd": ReferenceSettings(ce_weight=0.1, kd_weight=0.9, crd_weight=0.0),
    "crd": ReferenceSettings(ce_weight=1.0, kd_weight=0.0, crd_weight=0.8),
    "crd_kd": ReferenceSettings(ce_weight=1.0, kd_weight=1.0, crd_weight=0.8),
}
REFERENCE_EPOCHS = 240


# ----------------------------------------------------------------------------- measuring


@dataclass
class Measurement:
    """Figures of one (path, method): throughput, step times, data wait and memory."""

    path: str
    method: str
    images: int
    seconds: float
    step_seconds: list[float]
    wait_seconds: list[float]
    peak_memory_bytes: int | None
    data_path: str

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    @property
    def median_step_s(self) -> float:
        return statistics.median(self.step_seconds)

    @property
    def data_wait_fraction(self) -> float:
        return sum(self.wait_seconds) / sum(self.step_seconds)

    def projected_hours(self, train_size: int, epochs: int = REFERENCE_EPOCHS) -> float:
        """Hours for ``epochs`` epochs of ``train_size`` images at this throughput (evaluation excluded)."""
        return epochs * train_size / self.images_per_s / 3600

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record.update(
            images_per_s=self.images_per_s,
            median_step_s=self.median_step_s,
            data_wait_fraction=self.data_wait_fraction,
        )
        return record


class MemoryProbe:
    """Peak memory a path adds: GPU bytes allocated, or on CPU the main process's peak RSS.

    The CPU figure resets the kernel's resident-set high-water mark (Linux
    ``/proc/self/clear_refs``); it excludes DataLoader worker processes and, since
    freed memory stays with the allocator, can miss memory reused from an earlier
    measurement. Where the mark cannot be reset the figure is ``None`` (n/a).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.baseline: int | None = None

    @property
    def label(self) -> str:
        if self.device.type == "cuda":
            return "peak GPU memory allocated (added by the path)"
        return "peak RSS increase, main process only (workers excluded)"

    def start(self) -> None:
        try:
            self.baseline = reset_peak(self.device)
        except OSError:
            self.baseline = None

    def stop(self) -> int | None:
        return None if self.baseline is None else peak(self.device) - self.baseline


class BatchStream:
    """Endless batches from a loader: a finished epoch starts the next (that restart counts as data wait)."""

    def __init__(self, loader: Iterable) -> None:
        self.loader = loader
        self.epoch = 0
        self.iterator: Iterator | None = None

    def _restart(self) -> None:
        self.epoch += 1
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(self.epoch)
        self.iterator = iter(self.loader)

    def next(self) -> Any:
        if self.iterator is None:
            self._restart()
        try:
            return next(self.iterator)
        except StopIteration:
            self._restart()
            return next(self.iterator)


@dataclass
class PathUnderTest:
    """A built training path: its batches, one optimisation step, and how to release it."""

    loader: Iterable
    step: Callable[[Any], None]
    data_path: str
    close: Callable[[], None] = lambda: None


def batch_images(batch: Any) -> int:
    """Number of images in a batch: the length of its labels (always its second item)."""
    return int(batch[1].shape[0])


def time_steps(
    stream: BatchStream,
    step: Callable[[Any], None],
    *,
    warmup: int,
    steps: int,
    device: torch.device,
    description: str,
) -> tuple[int, float, list[float], list[float]]:
    """Run ``warmup`` untimed steps, then time ``steps``; returns images, seconds, step and wait times.

    The device is synchronised before and after each fetch and after each step, so the
    fetch time is the real wait for data and each step time is the real step time.
    """
    progress = tqdm(total=warmup + steps, desc=description, leave=False, disable=None, file=sys.stderr)
    for _ in range(warmup):
        step(stream.next())
        progress.update(1)
    synchronize(device)
    images, step_times, wait_times = 0, [], []
    started = time.perf_counter()
    for _ in range(steps):
        synchronize(device)
        fetch_started = time.perf_counter()
        batch = stream.next()
        synchronize(device)
        fetched = time.perf_counter()
        step(batch)
        synchronize(device)
        done = time.perf_counter()
        wait_times.append(fetched - fetch_started)
        step_times.append(done - fetch_started)
        images += batch_images(batch)
        progress.update(1)
    seconds = time.perf_counter() - started
    progress.close()
    return images, seconds, step_times, wait_times


def measure(
    name: str, method: str, build: Callable[[], PathUnderTest], args: argparse.Namespace, device: torch.device
) -> Measurement:
    """Build one path, warm it up, time it, release it; memory is counted from before the build."""
    release_memory(device)
    probe = MemoryProbe(device)
    probe.start()
    print(f"[{name} {method}] building …", file=sys.stderr, flush=True)
    path = build()
    data_path = path.data_path
    stream = BatchStream(path.loader)
    try:
        print(f"[{name} {method}] {args.warmup} warm-up + {args.steps} timed steps …", file=sys.stderr, flush=True)
        images, seconds, step_times, wait_times = time_steps(
            stream, path.step, warmup=args.warmup, steps=args.steps, device=device, description=f"{name} {method}"
        )
        memory = probe.stop()
    finally:
        del stream
        path.close()
        del path
        release_memory(device)
    result = Measurement(name, method, images, seconds, step_times, wait_times, memory, data_path)
    print(
        f"[{name} {method}] {result.images_per_s:.1f} img/s, median step {1000 * result.median_step_s:.1f} ms",
        file=sys.stderr,
        flush=True,
    )
    return result


def release_memory(device: torch.device) -> None:
    """Free what the previous measurement left, so the next one starts from the same place."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- device


def pick_device() -> torch.device:
    """The device the trainer will use too: the accelerator when torch sees one, else the CPU."""
    if hasattr(torch, "accelerator") and torch.accelerator.is_available():
        return torch.device(torch.accelerator.current_accelerator().type)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def describe_device(device: torch.device) -> str:
    """The device in words, e.g. ``CPU: 2 cores, torch 2.15.0, 2 threads`` or the GPU's name."""
    if device.type == "cuda":
        return f"GPU: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    if device.type == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return f"CPU: {cores} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    return f"{device.type.upper()}, torch {torch.__version__}"


def one_minute_load() -> float | None:
    """The system's 1-minute load average: well above this run's own threads, other processes competed for the CPU."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


# ----------------------------------------------------------------------------- shared inputs


def prepare_data(args: argparse.Namespace, scratch: Path) -> tuple[Path, int]:
    """The fake CIFAR-100 both paths read: reused from ``--data-root`` when there, else written.

    Returns its root and its training-set size (the memory bank and the negatives pool
    depend on it).
    """
    root = Path(args.data_root) if args.data_root else scratch / "data"
    train_file = root / "cifar-100-python" / "train"
    if not train_file.is_file():
        print(f"writing a fake CIFAR-100 with {args.train_size} training images to {root} …", file=sys.stderr, flush=True)
        write_fake_cifar(root, num_classes=NUM_CLASSES, train_size=args.train_size, test_size=FAKE_TEST_SIZE, seed=0)
    size = len(ReferenceCIFAR100(root))
    if size != args.train_size:
        print(f"note: reusing {root} with {size} training images (not --train-size {args.train_size})", file=sys.stderr)
    return root, size


def write_random_teacher(arch: str, scratch: Path) -> Path:
    """A teacher checkpoint with random weights: the speed of a step does not depend on them."""
    torch.manual_seed(0)
    path = scratch / f"teacher-{arch}.pt"
    torch.save({"model": create_model(arch, NUM_CLASSES).state_dict()}, path)
    return path


# ----------------------------------------------------------------------------- fast path


def recipe_path(method: str, teacher: str, student: str) -> Path:
    """The shipped recipe of the pair, or the resnet32x4 → resnet8x4 one (the pair is overridden anyway)."""
    pair = REPO / "recipes" / "cifar100" / method / f"{teacher}-{student}.yaml"
    return pair if pair.is_file() else REPO / "recipes" / "cifar100" / method / f"{DEFAULT_PAIR}.yaml"


def build_fast(
    method: str, args: argparse.Namespace, data_root: Path, teacher_checkpoint: Path, scratch: Path
) -> PathUnderTest:
    """The toolkit's trainer for the method's shipped recipe, with the benchmark's data and settings."""
    overrides = [
        f"data.root={data_root}",
        "data.verify=false",
        "data.download=false",
        f"data.batch_size={args.batch_size}",
        f"data.num_workers={args.workers}",
        f"precision={args.precision}",
        f"student.arch={args.student}",
        "teacher.name=null",
        f"teacher.arch={args.teacher}",
        f"teacher.checkpoint={teacher_checkpoint}",
        f"channels_last={str(args.channels_last).lower()}",
        f"compile={str(args.compile).lower()}",
        *args.override,
    ]
    recipe = load_recipe(recipe_path(method, args.teacher, args.student), overrides)
    trainer = Trainer(resolve_recipe(recipe), tensorboard=False, echo=lambda line: None, dry_run=True)  # no run directory
    trainer.distiller.train()

    def step(batch: Any) -> None:
        inputs, labels, indices = batch
        trainer.train_step(inputs, labels, indices)

    return PathUnderTest(trainer.train_loader, step, trainer.built.data_path, close=trainer.accelerator.free_memory)


# ----------------------------------------------------------------------------- reference-style loop


def reference_transform() -> transforms.Compose:
    """The reference's training transform, applied to one PIL image at a time."""
    return transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(CIFAR100_MEAN, CIFAR100_STD),
        ]
    )


class ReferenceCIFAR100(CIFAR100):
    """torchvision's CIFAR-100 training split with the reference's transform; items ``(img, target, index)``.

    The arrays are read once by distill's own CIFAR reader, whose restricted unpickler
    refuses a file that would run code (torchvision's plain ``pickle.load`` would run
    it), without the md5 check so a fake copy loads. Items are then made exactly as
    torchvision makes them: PIL image, the reference's transform, in DataLoader workers.
    """

    def __init__(self, root: str | Path) -> None:
        VisionDataset.__init__(self, str(root), transform=reference_transform())
        arrays = CIFAR100Dataset(root, train=True, download=False, verify=False, augment=False)
        self.train, self.data, self.targets = True, arrays.data, list(arrays.targets)
        self.classes, self.class_to_idx = arrays.classes, arrays.class_to_idx

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        image, target = super().__getitem__(index)
        return image, target, index


class ReferenceCIFAR100Sample(ReferenceCIFAR100):
    """The reference's CRD dataset: each item also carries its own index and K negatives of other classes.

    Items are ``(img, target, index, sample_idx)``; ``sample_idx[0]`` is the sample itself
    and ``sample_idx[1:]`` are drawn with ``np.random.choice`` from the indices of every
    other class, without replacement unless K exceeds that pool.
    """

    def __init__(self, root: str | Path, num_negatives: int) -> None:
        super().__init__(root)
        self.num_negatives = num_negatives
        targets = np.asarray(self.targets)
        self.negatives = [np.flatnonzero(targets != label) for label in range(len(self.classes))]

    def __getitem__(self, index: int) -> tuple[Tensor, int, int, np.ndarray]:
        image, target, index = super().__getitem__(index)
        pool = self.negatives[target]
        drawn = np.random.choice(pool, self.num_negatives, replace=self.num_negatives > len(pool))
        return image, target, index, np.hstack(([index], drawn))


@dataclass
class SampledBatch(Batch):
    """A batch that brings its own contrast indices (``[B, K+1]``, positive first), as the reference's loader does."""

    contrast_indices: Tensor | None = None


class DatasetSampledCRD(CRDLoss):
    """The CRD loss in the reference's formulation: gather-then-bmm, negatives from the dataset."""

    def candidates(self, batch: SampledBatch, memory: nn.Module) -> Tensor:
        return batch.contrast_indices


def kd_divergence(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton's term as the reference computes it: T²·KL(softmax(t/T) ‖ softmax(s/T)), averaged over the batch."""
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    teacher = F.softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_student, teacher, reduction="batchmean") * temperature**2


@dataclass
class ReferenceLoop:
    """One reference-style training step: frozen teacher under no_grad, student, γ·CE + α·KD + β·CRD, SGD."""

    student: nn.Module
    teacher: nn.Module
    crd: DatasetSampledCRD | None
    optimizer: torch.optim.Optimizer
    settings: ReferenceSettings
    device: torch.device

    def __call__(self, batch: Any) -> None:
        inputs, labels, indices, *contrast = (item.to(self.device) for item in batch)
        with torch.no_grad():
            teacher = self.teacher(inputs, features=True)
        student: FeatureRecord = self.student(inputs, features=True)
        loss = self.settings.ce_weight * F.cross_entropy(student.logits, labels)
        loss = loss + self.settings.kd_weight * kd_divergence(student.logits, teacher.logits, self.settings.kd_temperature)
        if self.crd is not None:
            sampled = SampledBatch(inputs, labels, indices, contrast_indices=contrast[0])
            loss = loss + self.settings.crd_weight * self.crd(student, teacher, sampled)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()


def build_reference(
    method: str, args: argparse.Namespace, data_root: Path, teacher_checkpoint: Path, device: torch.device
) -> PathUnderTest:
    """The reference-style loop: torchvision dataset + PIL transforms in workers, fp32, plain SGD."""
    settings = REFERENCE[method]
    torch.backends.cudnn.benchmark = True
    if settings.crd_weight:
        dataset: ReferenceCIFAR100 = ReferenceCIFAR100Sample(data_root, settings.num_negatives)
    else:
        dataset = ReferenceCIFAR100(data_root)
    loader = DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=False,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
    )
    torch.manual_seed(0)
    teacher = create_model(args.teacher, NUM_CLASSES, teacher_checkpoint).to(device).eval()
    teacher.requires_grad_(False)
    student = create_model(args.student, NUM_CLASSES).to(device).train()
    trainable = list(student.parameters())
    crd = None
    if settings.crd_weight:
        crd = reference_crd(student, teacher, dataset, settings, args.batch_size).to(device).train()
        trainable += list(crd.trainable_parameters())
    lr = 0.01 if args.student in SMALL_LR_STUDENTS else 0.05
    optimizer = torch.optim.SGD(trainable, lr=lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    step = ReferenceLoop(student, teacher, crd, optimizer, settings, device)
    description = f"torchvision CIFAR100 + per-sample PIL transforms, {args.workers} DataLoader workers, fp32"
    return PathUnderTest(loader, step, description)


def reference_crd(
    student: nn.Module, teacher: nn.Module, dataset: ReferenceCIFAR100, settings: ReferenceSettings, batch_size: int
) -> DatasetSampledCRD:
    """CRD's heads, two N×d momentum memories and NCE, scoring by gathering B×(K+1)×d rows."""
    context = LossContext(
        student=probe_feature_shapes(student, (3, 32, 32)),
        teacher=probe_feature_shapes(teacher, (3, 32, 32)),
        num_classes=NUM_CLASSES,
        dataset_size=len(dataset),
        labels=torch.as_tensor(dataset.targets),
        batch_size=batch_size,
    )
    return DatasetSampledCRD(
        context,
        feat_dim=settings.feat_dim,
        num_negatives=settings.num_negatives,
        temperature=settings.nce_temperature,
        momentum=settings.nce_momentum,
        mode="exact",
        scoring="gather",
    )


# ----------------------------------------------------------------------------- report


def shipped_methods() -> list[str]:
    """Every method folder of ``recipes/cifar100`` (each holds the 13 tasks' recipes)."""
    return sorted(p.name for p in (REPO / "recipes" / "cifar100").iterdir() if p.is_dir() and p.name not in ("_base_", "teachers"))


def summarise(measurements: dict[str, dict[str, Measurement]], methods: list[str]) -> dict[str, Any]:
    """Fast ÷ reference throughput per method that has a reference loop, and each method ÷ KD median step time.

    The reference ÷ fast median step time is given beside the throughput ratio: on a
    shared machine a burst of foreign load moves the wall-time figure, not the median.
    """
    compared = [m for m in methods if "reference" in measurements[m]]
    speedup = {
        m: measurements[m]["fast"].images_per_s / measurements[m]["reference"].images_per_s for m in compared
    }
    median_speedup = {
        m: measurements[m]["reference"].median_step_s / measurements[m]["fast"].median_step_s for m in compared
    }
    over_kd = {}
    if "kd" in methods:
        over_kd = {
            m: {path: x.median_step_s / measurements["kd"][path].median_step_s for path, x in measurements[m].items()}
            for m in methods
            if m != "kd"
        }
    crd_kd = {}
    if "kd" in methods and "crd" in methods:
        crd_kd = {
            path: measurements["crd"][path].median_step_s / measurements["kd"][path].median_step_s
            for path in ("fast", "reference")
            if path in measurements["crd"] and path in measurements["kd"]
        }
    return {
        "fast_over_reference_images_per_s": speedup,
        "reference_over_fast_median_step": median_speedup,
        "crd_over_kd_step_time": crd_kd,
        "over_kd_step_time": over_kd,
    }


def format_memory(value: int | None) -> str:
    return "n/a" if value is None else f"+{value / 2**20:.0f} MiB"


def print_report(report: dict[str, Any], measurements: dict[str, dict[str, Measurement]]) -> None:
    """The table: per method fast vs reference, their ratio, then the CRD/KD step-time ratios."""
    s = report["settings"]
    print("Training step: this toolkit (fast) vs a reference-style loop, same process")
    print(f"device: {report['device']['description']} (ran on {report['device']['ran_on']})")
    load = report["load_average_1min"]
    if load["start"] is not None:
        print(f"load average (1 min): {load['start']:.2f} at start, {load['end']:.2f} at end (this run's threads included)")
    print(
        f"pair: {s['teacher']} → {s['student']} | batch {s['batch_size']} | {s['train_size']} training images | "
        f"{s['warmup']} warm-up + {s['steps']} timed steps | {s['workers']} workers"
    )
    for method, paths in measurements.items():
        extras = "".join(
            [", channels_last" if s["channels_last"] else "", ", compiled" if s["compile"] else ""]
            + [f", {override}" for override in s["override"]]
        )
        print(f"{method} fast path: precision {s['precision']}{extras}, data: {paths['fast'].data_path}")
    references = [paths["reference"] for paths in measurements.values() if "reference" in paths]
    if references:
        print(f"reference path: {references[0].data_path}")
    print(f"memory: {report['memory_label']}")
    print()
    width = max(7, *(len(method) + 1 for method in measurements))
    header = (
        f"{'method':<{width}}{'path':<11}{'images/s':>10}{'median step':>14}{'data wait':>11}{'peak memory':>14}"
        f"{'epoch':>9}{f'{REFERENCE_EPOCHS} epochs':>12}"
    )
    print(header)
    print("-" * len(header))
    for method, paths in measurements.items():
        for name in [p for p in ("fast", "reference") if p in paths]:
            m = paths[name]
            print(
                f"{method:<{width}}{name:<11}{m.images_per_s:>10.1f}{1000 * m.median_step_s:>11.1f} ms"
                f"{100 * m.data_wait_fraction:>10.1f}%{format_memory(m.peak_memory_bytes):>14}"
                f"{3600 * m.projected_hours(s['train_size'], 1):>8.0f}s{m.projected_hours(s['train_size']):>11.2f}h"
            )
        if method not in report["summary"]["fast_over_reference_images_per_s"]:
            why = "reference not timed: --no-reference" if s["no_reference"] else f"no reference-style loop for {method}"
            print(f"{method:<{width}}{'fast/ref':<11}{'n/a':>10}   ({why})")
            continue
        ratio = report["summary"]["fast_over_reference_images_per_s"][method]
        median_ratio = report["summary"]["reference_over_fast_median_step"][method]
        print(f"{method:<{width}}{'fast/ref':<11}{ratio:>9.2f}×   (by median step: {median_ratio:.2f}×)")
    crd_kd = report["summary"]["crd_over_kd_step_time"]
    if crd_kd:
        print()
        print("CRD/KD step-time ratio (median): " + ", ".join(f"{path} {ratio:.2f}" for path, ratio in crd_kd.items()))
    over_kd = report["summary"]["over_kd_step_time"]
    if over_kd:
        print()
        print("step time ÷ KD's (median, same path):")
        for method, ratios in over_kd.items():
            print(f"  {method:<10}" + ", ".join(f"{path} {ratio:.2f}" for path, ratio in ratios.items()))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="resnet32x4", help="teacher architecture (random weights)")
    parser.add_argument("--student", default="resnet8x4", help="student architecture")
    parser.add_argument(
        "--methods",
        default="kd,crd",
        help="comma-separated recipe folders of recipes/cifar100 (e.g. kd,crd,dist,wttm); "
        + ", ".join(REFERENCE_METHODS)
        + " are also timed in a reference-style loop (crd_kd: CE + KD + 0.8·CRD)",
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps per path and method")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size (the reference: 64)")
    parser.add_argument(
        "--train-size", type=int, default=50000, help="fake training images; memory bank and negatives pool scale with it"
    )
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes, both paths")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="fast path only")
    parser.add_argument("--channels-last", action="store_true", help="fast path: channels_last networks and inputs")
    parser.add_argument("--compile", action="store_true", help="fast path: torch.compile student and teacher (compiles in the warm-up)")
    parser.add_argument(
        "-o", "--override", action="append", default=[], metavar="key.path=value",
        help="fast path: any other recipe override (repeatable), e.g. -o data.loader=workers",
    )
    parser.add_argument(
        "--no-reference", action="store_true",
        help="time the fast path only (the reference-style loop is fp32 whatever --precision says: time it once, "
        "not for every precision setting, as tools/device_check.sh does)",
    )
    parser.add_argument("--data-only", action="store_true", help="only time the data paths (no training step)")
    parser.add_argument(
        "--teacher-forward", action="store_true", help="only time the teacher's forward pass, fp32 vs bf16 autocast"
    )
    parser.add_argument("--data-root", help="reuse (or write once) the fake CIFAR-100 here instead of a temp dir")
    parser.add_argument("--json", help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(args.methods) - set(shipped_methods()))
    if unknown or not args.methods:
        parser.error(f"--methods: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(shipped_methods())}")
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1 or args.workers < 0:
        parser.error("--steps and --batch-size must be ≥ 1, --warmup and --workers ≥ 0")
    return args


def loader_images_per_s(loader: Iterable, batches: int, device: torch.device, description: str) -> float:
    """Images per second delivered by ``loader`` alone (a no-op step) over ``batches`` batches, after one warm-up."""
    images, seconds, _, _ = time_steps(
        BatchStream(loader), lambda batch: None, warmup=1, steps=batches, device=device, description=description
    )
    return images / seconds


def data_throughput(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """Images/s of the data paths alone: the device-resident loader vs the reference's DataLoaders.

    The fast path must never show in the step (the goal is ≥ 20 000 images/s on the
    2-core development CPU); the reference's KD and CRD datasets are timed with the
    same number of workers as the step benchmark. MLKD's two views (the standard one and
    ``fixmatch_strong``, drawn image by image) are timed on both paths: the strong view
    is what two-view training adds to the data side of an epoch.
    """
    from distill.data.placement import Placement
    from distill.data.views import build_views
    from distill.engine.loaders import build_datasets, build_loaders
    from distill.recipe.schema import DataSpec, ViewSpec, ViewsSpec

    device = pick_device()
    data_root, train_size = prepare_data(args, scratch)
    spec = DataSpec(root=str(data_root), verify=False, batch_size=args.batch_size, num_workers=args.workers)
    train_set, test_set = build_datasets(spec)
    fast = build_loaders(spec, train_set, test_set, Placement(device=device, seed=0))
    epoch = len(fast.train_loader)
    reference_batches = min(epoch, args.steps * 10)
    rates = {"fast": loader_images_per_s(fast.train_loader, epoch, device, "[data] fast")}
    for name, dataset in (
        ("reference_kd", ReferenceCIFAR100(data_root)),
        ("reference_crd", ReferenceCIFAR100Sample(data_root, REFERENCE["crd"].num_negatives)),
    ):
        loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers)
        rates[name] = loader_images_per_s(loader, reference_batches, device, f"[data] {name}")
    two_views = build_views(ViewsSpec(shared=[ViewSpec("standard"), ViewSpec("fixmatch_strong")]), 32, seed=0)
    for name, loader_kind in (("two_views_device", "device"), ("two_views_workers", "workers")):
        two_view_spec = DataSpec(root=str(data_root), verify=False, batch_size=args.batch_size,
                                 num_workers=args.workers, loader=loader_kind)
        loaders = build_loaders(two_view_spec, train_set, test_set, Placement(device=device, seed=0), views=two_views)
        rates[name] = loader_images_per_s(loaders.train_loader, reference_batches, device, f"[data] {name}")
    report = {
        "device": describe_device(device),
        "train_size": train_size,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "fast_path": fast.description,
        "images_per_s": rates,
    }
    print(f"data path alone, batch {args.batch_size}, {train_size} images, {report['device']}")
    print(f"  fast ({fast.description}): {rates['fast']:,.0f} images/s over {epoch} batches")
    for name in ("reference_kd", "reference_crd"):
        print(f"  {name} (PIL in {args.workers} workers): {rates[name]:,.0f} images/s over {reference_batches} batches")
    for name, where in (("two_views_device", "device path"), ("two_views_workers", f"{args.workers} workers")):
        print(f"  {name} (standard + fixmatch_strong, {where}): {rates[name]:,.0f} images/s over {reference_batches} batches")
    return report


def teacher_forward(args: argparse.Namespace) -> dict[str, Any]:
    """Median time of the teacher's forward pass (features, inference mode) in fp32 and under bf16 autocast.

    What ``precision: bf16`` changes for the frozen teacher, measured alone: the gain
    depends on bf16 units (AVX-512 BF16 / AMX on CPUs, tensor cores on GPUs); without
    them autocast can be far slower than fp32.
    """
    device = pick_device()
    torch.manual_seed(0)
    model = create_model(args.teacher).to(device).eval()
    inputs = torch.randn(args.batch_size, 3, 32, 32, device=device)
    medians = {}
    for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        times = []
        for index in range(args.warmup + args.steps):
            synchronize(device)
            started = time.perf_counter()
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                model(inputs, features=True)
            synchronize(device)
            if index >= args.warmup:
                times.append(time.perf_counter() - started)
        medians[precision] = statistics.median(times)
    report = {
        "device": describe_device(device),
        "teacher": args.teacher,
        "batch_size": args.batch_size,
        "median_forward_s": medians,
        "bf16_speedup": medians["fp32"] / medians["bf16"],
    }
    print(f"teacher forward, {args.teacher}, batch {args.batch_size}, {report['device']}")
    for precision, seconds in medians.items():
        print(f"  {precision}: {1000 * seconds:.1f} ms (median of {args.steps})")
    print(f"  bf16 speed-up: {report['bf16_speedup']:.2f}×")
    return report


def run(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """Measure every (method, path) and assemble the report."""
    device = pick_device()
    load_at_start = one_minute_load()
    data_root, train_size = prepare_data(args, scratch)
    teacher_checkpoint = write_random_teacher(args.teacher, scratch)
    measurements: dict[str, dict[str, Measurement]] = {}
    for method in args.methods:
        fast = functools.partial(build_fast, method, args, data_root, teacher_checkpoint, scratch)
        reference = functools.partial(build_reference, method, args, data_root, teacher_checkpoint, device)
        measurements[method] = {"fast": measure("fast", method, fast, args, device)}
        if method in REFERENCE_METHODS and not args.no_reference:
            measurements[method]["reference"] = measure("reference", method, reference, args, device)
    settings = {**vars(args), "train_size": train_size, "data_root": str(data_root)}
    report = {
        "device": {"description": describe_device(device), "ran_on": str(device)},
        "load_average_1min": {"start": load_at_start, "end": one_minute_load()},
        "settings": settings,
        "memory_label": MemoryProbe(device).label,
        "results": {
            m: {
                name: {**x.to_json(), f"projected_{REFERENCE_EPOCHS}_epochs_h": x.projected_hours(train_size)}
                for name, x in paths.items()
            }
            for m, paths in measurements.items()
        },
    }
    report["summary"] = summarise(measurements, args.methods)
    print_report(report, measurements)
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse the command line, run the benchmark, print the table; returns (and optionally writes) the figures."""
    args = parse_args(argv)
    if args.teacher_forward:
        report = teacher_forward(args)
    elif args.data_only:
        with tempfile.TemporaryDirectory(prefix="distill-benchmark-") as scratch:
            report = data_throughput(args, Path(scratch))
    else:
        with tempfile.TemporaryDirectory(prefix="distill-benchmark-") as scratch:
            report = run(args, Path(scratch))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
