"""The shared halves of the CUDA-vs-CPU comparisons in tests/test_cuda_paths.py.

Every comparison there runs the same function on two devices. The function is here,
so that its CPU half runs (and is tested) on machines without a GPU too:

* :func:`twin_steps` builds a shipped recipe's Trainer (resnet14 → resnet8, small
  sizes) and runs ``STEPS`` optimisation steps on fixed batches drawn from a CPU
  generator, on whatever device the Trainer picked (CUDA when torch sees one);
* :func:`cpu_twin` runs :func:`twin_steps` in a child process that sees no GPU
  (``CUDA_VISIBLE_DEVICES=""``), since Accelerate keeps the device in a process-wide
  singleton and one process cannot hold a CUDA and a CPU Trainer;
* :func:`crd_reference_step` is one CE + CRD step at the reference's sizes
  (resnet32x4 → resnet8x4, batch 64, K = 16384, 50 000 bank entries) on a device.

CRD's negatives are drawn by a generator on the training device, and a CPU and a CUDA
generator draw different numbers from one seed. So that a CRD (or ML-CPC) step is the
same computation on both, the twins' fake CIFAR-100 has exactly two images per class
(``TWIN_TRAIN_SIZE = 200``) and K is every eligible entry (198): each anchor's
negatives are then the same *set* on both devices, in another order, and the NCE
losses are sums over that set.

    python tests/cuda_twins.py OUT.pt METHOD DATA_ROOT TEACHER [override ...]   # the child
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
TWIN_TRAIN_SIZE = 200
ALL_NEGATIVES = TWIN_TRAIN_SIZE - TWIN_TRAIN_SIZE // 100
"""Every other-class entry of a 200-image pool with two images per class."""
BATCH, STEPS = 16, 2
METHODS = ("kd", "crd", "ml_cpc", "dkd")
NEGATIVES_KEY = {"crd": "losses.crd.num_negatives", "ml_cpc": "losses.ml_cpc.num_negatives"}


def twin_overrides(method: str, data_root: Path, teacher: Path, *extra: str) -> list[str]:
    """The method's shipped recipe on resnet14 → resnet8, batch 16, deterministic, K = every eligible entry."""
    overrides = [
        f"data.root={data_root}", "data.verify=false", "data.download=false", "data.num_workers=0",
        f"data.batch_size={BATCH}", "deterministic=true", "seed=0", "student.arch=resnet8",
        "teacher.name=null", "teacher.arch=resnet14", f"teacher.checkpoint={teacher}",
    ]  # fmt: skip
    if method in NEGATIVES_KEY:
        overrides.append(f"{NEGATIVES_KEY[method]}={ALL_NEGATIVES}")
    return [*overrides, *extra]


def build_trainer(method: str, data_root: Path, teacher: Path, *extra: str):
    """A Trainer of ``recipes/cifar100/METHOD/resnet32x4-resnet8x4.yaml`` with :func:`twin_overrides`, no run directory."""
    from distill.engine.trainer import Trainer
    from distill.recipe.load import load_recipe
    from distill.recipe.resolve import resolve_recipe

    recipe_file = REPO / "recipes" / "cifar100" / method / "resnet32x4-resnet8x4.yaml"
    recipe = load_recipe(recipe_file, twin_overrides(method, data_root, teacher, *extra))
    return Trainer(resolve_recipe(recipe), tensorboard=False, echo=lambda line: None, dry_run=True)


def fixed_batches(train_size: int, steps: int = STEPS, batch: int = BATCH) -> list[tuple[torch.Tensor, ...]]:
    """``steps`` batches (inputs, labels, indices) from a seeded CPU generator: the same on every device."""
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(steps):
        inputs = torch.randn(batch, 3, 32, 32, generator=generator)
        labels = torch.randint(0, 100, (batch,), generator=generator)
        indices = torch.randperm(train_size, generator=generator)[:batch]
        batches.append((inputs, labels, indices))
    return batches


def run_steps(trainer, steps: int = STEPS) -> dict[str, Any]:
    """Run the fixed batches through ``trainer.train_step`` on its device; everything returned is on the CPU.

    ``rows``: per step, each loss term and the weighted total (floats); ``dtypes``: each
    term's dtype; ``student``: the student's weights after the steps; ``buffers``: the
    floating-point buffers of the loss modules (memory banks) and their dtypes;
    ``device``: where the steps ran.
    """
    device = trainer.accelerator.device
    rows, dtypes = [], {}
    for batch in fixed_batches(trainer.built.train_size, steps):
        inputs, labels, indices = (t.to(device) for t in batch)
        terms, total = trainer.train_step(inputs, labels, indices)
        dtypes.update({name: str(value.dtype) for name, value in terms.items()})
        rows.append({**{name: value.item() for name, value in terms.items()}, "total": total.item()})
    unwrapped = trainer.unwrapped
    student = {name: value.detach().cpu() for name, value in unwrapped.student.state_dict().items()}
    buffers = {
        name: str(value.dtype) for name, value in unwrapped.losses.named_buffers() if value.is_floating_point()
    }
    return {"rows": rows, "dtypes": dtypes, "student": student, "buffers": buffers, "device": str(device)}


def twin_steps(method: str, data_root: Path, teacher: Path, *extra: str) -> dict[str, Any]:
    """:func:`run_steps` of a freshly built Trainer (see :func:`build_trainer`)."""
    trainer = build_trainer(method, data_root, teacher, *extra)
    try:
        return run_steps(trainer)
    finally:
        trainer.accelerator.free_memory()


def cpu_twin(method: str, data_root: Path, teacher: Path, out_file: Path, *extra: str) -> dict[str, Any]:
    """:func:`twin_steps` in a child process that sees no GPU; fails with the child's stderr if it fails."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}
    command = [sys.executable, str(Path(__file__)), str(out_file), method, str(data_root), str(teacher), *extra]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert result.returncode == 0, f"the CPU twin failed ({result.returncode}):\n{result.stderr[-3000:]}"
    return torch.load(out_file, weights_only=True)


def assert_rows_close(ours: list[dict], reference: list[dict], rel: float, abs_: float) -> None:
    """Every loss term of every step within ``rel`` (relative) or ``abs_`` (absolute) of the reference's."""
    assert len(ours) == len(reference)
    for step, (a, b) in enumerate(zip(ours, reference), start=1):
        assert a.keys() == b.keys(), f"step {step}: terms {sorted(a)} vs {sorted(b)}"
        for name in b:
            assert abs(a[name] - b[name]) <= max(abs_, rel * abs(b[name])), f"step {step} {name}: {a[name]} vs {b[name]}"


def max_weight_difference(ours: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    """The largest absolute difference between two state dicts' floating-point entries (same keys required)."""
    assert ours.keys() == reference.keys()
    return max(
        (float((ours[k].double() - reference[k].double()).abs().max()) for k in ours if ours[k].is_floating_point()),
        default=0.0,
    )


def crd_reference_step(device: torch.device, batch_size: int = 64, dataset_size: int = 50000) -> dict[str, Any]:
    """One CE + 0.8·CRD step of resnet32x4 → resnet8x4 at the reference's sizes on ``device``; its loss and peak memory.

    The CRD benchmark's setting: batch 64, K = 16384 negatives, 128-d embeddings, a
    momentum memory of ``dataset_size`` rows per side, SGD. On CUDA ``peak_bytes`` is
    ``torch.cuda.max_memory_allocated`` during the step minus what was allocated
    before the networks were built; elsewhere it is ``None``.
    """
    from distill.losses import Batch, LossContext, build_loss
    from distill.models import create_model, probe_feature_shapes

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    torch.manual_seed(0)
    teacher, student = create_model("resnet32x4").eval(), create_model("resnet8x4")
    context = LossContext(
        student=probe_feature_shapes(student, (3, 32, 32)), teacher=probe_feature_shapes(teacher, (3, 32, 32)),
        num_classes=100, dataset_size=dataset_size, labels=torch.arange(dataset_size) % 100, batch_size=batch_size,
    )  # fmt: skip
    crd = build_loss("crd", context, {"num_negatives": 16384, "feat_dim": 128}).to(device)
    teacher, student = teacher.to(device), student.to(device)
    optimizer = torch.optim.SGD([*student.parameters(), *crd.parameters()], lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(batch_size, 3, 32, 32, generator=generator).to(device)
    indices = torch.randperm(dataset_size, generator=generator)[:batch_size].to(device)
    labels = indices % 100
    with torch.no_grad():
        teacher_record = teacher(inputs, features=True)
    student_record = student(inputs, features=True)
    crd_term = crd(student_record, teacher_record, Batch(inputs, labels, indices))
    total = F.cross_entropy(student_record.logits, labels) + 0.8 * crd_term
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    peak = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
    return {"total": total.item(), "crd": crd_term.item(), "crd_dtype": str(crd_term.dtype), "peak_bytes": peak}


def main(argv: list[str]) -> None:
    """The child of :func:`cpu_twin`: run :func:`twin_steps` and save its result to ``argv[0]``."""
    out_file, method, data_root, teacher, *extra = argv
    torch.save(twin_steps(method, Path(data_root), Path(teacher), *extra), out_file)


if __name__ == "__main__":
    main(sys.argv[1:])
