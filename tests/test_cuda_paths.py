"""Every CUDA path against its CPU twin (issue 18): skipped, as a whole, where torch sees no CUDA device.

Run on a GPU machine with ``pytest -m cuda`` (``tools/device_check.sh`` does). Sizes are
small so that the module takes about a minute or two on one H100/H200. The CPU half of
each comparison is in tests/cuda_twins.py and is exercised without a GPU by
tests/test_cuda_twins.py. Where CUDA exists, nothing here skips: a broken path fails.

fp32 comparisons turn TF32 off (``torch.backends.cudnn.allow_tf32``,
``torch.backends.cuda.matmul.allow_tf32``) for the CUDA side: TF32 keeps 10 mantissa
bits, and the comparison is of the code, not of that setting.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cuda_twins import (
    TWIN_TRAIN_SIZE,
    assert_rows_close,
    build_trainer,
    cpu_twin,
    crd_reference_step,
    max_weight_difference,
    run_steps,
    twin_steps,
)
from resume_checks import assert_same_run
from test_device_loader import POSITIONS, cell_counts, decode_draws, homogeneity_p

from distill.data import write_fake_cifar
from distill.data.device_loader import DeviceLoader, InMemoryImages, augment_batch, draw_augmentation
from distill.data.placement import Placement
from distill.data.transforms import CIFAR100_MEAN, CIFAR100_STD, CROP_PADDING
from distill.losses.contrastive.negatives import draw_candidates, fewest_eligible

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="skipped: no CUDA (torch.cuda.is_available() is False)"),
]

REPO = Path(__file__).resolve().parent.parent
CUDA = torch.device("cuda")
FIGURES_ENV = "DISTILL_CUDA_FIGURES"
"""A JSON file the peak-memory test writes its figure to (tools/device_check.sh sets it)."""


@pytest.fixture(scope="module")
def twin_cifar(tmp_path_factory) -> Path:
    """200 training images, two per class: see tests/cuda_twins.py."""
    root = tmp_path_factory.mktemp("twin_cifar")
    write_fake_cifar(root, num_classes=100, train_size=TWIN_TRAIN_SIZE, test_size=100, seed=0)
    return root


@pytest.fixture
def no_tf32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# --- the device loader ----------------------------------------------------------------------------


def loader_on(device: str, images: np.ndarray, augment: bool, seed: int = 5) -> DeviceLoader:
    labels = torch.arange(len(images)) % 100
    source = InMemoryImages(images, labels, CIFAR100_MEAN, CIFAR100_STD, augment)
    return DeviceLoader(source, 64, shuffle=True, placement=Placement(device=device, seed=seed))


def test_device_loader_on_cuda_gives_the_cpu_order_and_exact_unaugmented_batches():
    """Same indices and labels batch by batch (the order does not depend on the device); without augmentation the
    inputs are bit-identical; augment_batch on CUDA with given draws equals the CPU's exactly."""
    images = np.random.default_rng(0).integers(0, 256, size=(203, 32, 32, 3), dtype=np.uint8)
    for augment in (False, True):
        cpu, gpu = loader_on("cpu", images, augment), loader_on("cuda", images, augment)
        for loader in (cpu, gpu):
            loader.set_epoch(2)
        for (x_cpu, y_cpu, i_cpu), (x_gpu, y_gpu, i_gpu) in zip(cpu, gpu, strict=True):
            assert x_gpu.device.type == y_gpu.device.type == i_gpu.device.type == "cuda"
            assert torch.equal(i_gpu.cpu(), i_cpu) and torch.equal(y_gpu.cpu(), y_cpu)
            if not augment:
                assert torch.equal(x_gpu.cpu(), x_cpu)
    offsets_y, offsets_x, flips = draw_augmentation(64, CROP_PADDING, torch.Generator().manual_seed(3))
    batch = torch.from_numpy(images[:64]).permute(0, 3, 1, 2)
    for channels_last in (False, True):
        expected = augment_batch(batch, offsets_y, offsets_x, flips, CIFAR100_MEAN, CIFAR100_STD, channels_last=channels_last)
        got = augment_batch(batch.to(CUDA), offsets_y, offsets_x, flips, CIFAR100_MEAN, CIFAR100_STD, channels_last=channels_last)
        assert torch.equal(got.cpu(), expected)


def test_device_loader_crops_and_flips_on_cuda_are_distributed_as_on_cpu():
    """A CUDA generator draws other numbers than a CPU one from the same seed, so the draws are compared in
    distribution: chi-square homogeneity of the 9×9×2 (top, left, flip) cells over 8192 draws each, p > 1e-4
    (fixed seeds: the outcome is fixed; tests/test_device_loader.py shows the test rejects a wrong distribution)."""
    positions = np.repeat(POSITIONS[None], 512, axis=0)
    draws = {}
    for device in ("cpu", "cuda"):
        loader = loader_on(device, positions, augment=True)
        batches = []
        for epoch in range(16):
            loader.set_epoch(epoch)
            batches += [inputs.cpu() for inputs, _, _ in loader]
        draws[device] = decode_draws(torch.cat(batches))
    assert homogeneity_p(cell_counts(draws["cuda"]), cell_counts(draws["cpu"])) > 1e-4
    assert abs(draws["cuda"][:, 2].double().mean() - 0.5) < 0.04


# --- negatives ------------------------------------------------------------------------------------


def test_negatives_drawn_on_cuda_follow_the_class_rules_and_repeat_under_a_seed():
    """Exact mode on CUDA: column 0 is the anchor, the K negatives of a row are distinct and all of other classes;
    the same generator seed repeats the draw, another seed changes it. The draw's distribution is uniform:
    chi-square of the negatives' pool positions over 64 rows × 1024 draws against uniform over the eligible
    entries, p > 1e-4 (fixed seed)."""
    pool_labels = (torch.arange(2000) % 100).to(CUDA)
    anchors = torch.arange(0, 2000, 31)[:64].to(CUDA)
    labels = pool_labels[anchors]
    fewest = fewest_eligible(pool_labels, "exact", 2000)

    def draw(seed: int, k: int = 1024) -> torch.Tensor:
        generator = torch.Generator(device=CUDA).manual_seed(seed)
        return draw_candidates(anchors, labels, k, "exact", pool_labels, 2000, generator, fewest)

    candidates = draw(0)
    assert candidates.device.type == "cuda" and candidates.shape == (64, 1025)
    assert torch.equal(candidates[:, 0], anchors)
    negatives = candidates[:, 1:]
    assert (pool_labels[negatives] != labels.unsqueeze(1)).all()
    assert (negatives.sort(dim=1).values.diff(dim=1) > 0).all(), "distinct within a row"
    assert torch.equal(draw(0), candidates) and not torch.equal(draw(1), candidates)
    counts = torch.bincount(negatives.flatten().cpu(), minlength=2000).double()
    eligible = (pool_labels.unsqueeze(0) != labels.unsqueeze(1)).sum(0).double().cpu()
    expected = eligible * (1024 / (2000 - 20))
    keep = expected > 0
    statistic = ((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    p = float(torch.special.gammaincc(torch.tensor((int(keep.sum()) - 1) / 2, dtype=torch.float64), statistic / 2))
    assert p > 1e-4, p


# --- one training step per method -----------------------------------------------------------------


@pytest.mark.parametrize("method", ["kd", "crd", "ml_cpc", "dkd"])
def test_fp32_steps_on_cuda_equal_the_cpu_twin(method, twin_cifar, tiny_teacher, tmp_path, no_tf32):
    """Two fp32 steps (batch 16, resnet14 → resnet8, deterministic) on CUDA and in a CPU-only child process: every
    loss term within 1e-3 relative or 1e-4 absolute, the student's weights after the steps within 1e-4. CRD and
    ML-CPC take K = every eligible entry (tests/cuda_twins.py): the same negatives set on both devices."""
    gpu = twin_steps(method, twin_cifar, tiny_teacher)
    assert gpu["device"].startswith("cuda")
    cpu = cpu_twin(method, twin_cifar, tiny_teacher, tmp_path / "cpu.pt")
    assert cpu["device"] == "cpu"
    assert_rows_close(gpu["rows"], cpu["rows"], rel=1e-3, abs_=1e-4)
    assert max_weight_difference(gpu["student"], cpu["student"]) < 1e-4
    assert set(gpu["dtypes"].values()) == {"torch.float32"}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_agree_with_fp32_and_keep_losses_and_banks_float32(precision, twin_cifar, tiny_teacher):
    """CE + CRD on CUDA: the first step's terms within 5e-2 (relative or absolute) of fp32's (bf16 has 8
    mantissa bits, fp16 11; later steps drift), every step finite, every loss term and memory-bank buffer float32,
    the trained weights float32, and fp16 runs with a gradient scaler."""
    reference = twin_steps("crd", twin_cifar, tiny_teacher)
    trainer = build_trainer("crd", twin_cifar, tiny_teacher, f"precision={precision}")
    assert (trainer.accelerator.scaler is not None) == (precision == "fp16")
    ours = run_steps(trainer)
    assert_rows_close(ours["rows"][:1], reference["rows"][:1], rel=5e-2, abs_=5e-2)
    assert all(np.isfinite(list(row.values())).all() for row in ours["rows"])
    assert set(ours["dtypes"].values()) == {"torch.float32"}
    assert ours["buffers"] and set(ours["buffers"].values()) == {"torch.float32"}
    assert all(p.dtype == torch.float32 for p in trainer.unwrapped.parameters())
    trainer.accelerator.free_memory()


def test_compile_on_cuda_agrees_with_eager(twin_cifar, tiny_teacher, no_tf32):
    """``compile: true`` (inductor) against eager on CUDA, CE + CRD, two steps: terms within 1e-3 relative or
    absolute (fused kernels reorder float sums), weights within 1e-3."""
    eager = twin_steps("crd", twin_cifar, tiny_teacher)
    compiled = twin_steps("crd", twin_cifar, tiny_teacher, "compile=true")
    assert_rows_close(compiled["rows"], eager["rows"], rel=1e-3, abs_=1e-3)
    assert max_weight_difference(compiled["student"], eager["student"]) < 1e-3


# --- exact resume ---------------------------------------------------------------------------------


def resume_overrides(data_root: Path, teacher: Path) -> list[str]:
    return [
        f"data.root={data_root}", "data.verify=false", "data.num_workers=0", "data.batch_size=64",
        "schedule.epochs=2", "schedule.milestones=[1]", "log_every=1", "deterministic=true", "seed=0",
        "student.arch=resnet8", "teacher.name=null", "teacher.arch=resnet14", f"teacher.checkpoint={teacher}",
        "losses.crd.num_negatives=64", "checkpoint_every_steps=2", f"plugins=[{REPO / 'tests' / 'fault_plugin.py'}]",
    ]  # fmt: skip


def distill(*args: str, fault: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "DISTILL_FAULT": fault}
    return subprocess.run([sys.executable, "-m", "distill", *args], capture_output=True, text=True, timeout=300, env=env, cwd=REPO)


@pytest.mark.parametrize("graphed", [False, True], ids=["plain", "cuda_graph"])
def test_a_run_killed_and_resumed_on_cuda_ends_bit_identical(graphed, fake_cifar100, tiny_teacher, tmp_path):
    """CE + CRD, 2 epochs of 4 steps, ``deterministic: true``, device loader, CUDA generators: SIGKILL after step 3,
    ``--resume``, and the final checkpoint (weights, banks, optimiser, RNG states) and metrics equal an
    uninterrupted run's bit for bit. With ``cuda_graph: true`` (batch 32: 8 steps an epoch, the graph captured
    at step 4, killed after step 6): the resumed run warms up again on steps the uninterrupted one replayed, so
    this also holds the replayed step to the plain one, bit for bit."""
    recipe = str(REPO / "recipes/cifar100/crd/resnet32x4-resnet8x4.yaml")
    overrides = resume_overrides(fake_cifar100, tiny_teacher)
    if graphed:
        overrides += ["cuda_graph=true", "data.batch_size=32"]
    baseline = distill("train", recipe, *overrides, "--run-dir", str(tmp_path / "baseline"), "--no-tensorboard")
    assert baseline.returncode == 0, baseline.stderr[-3000:]
    killed = distill("train", recipe, *overrides, "--run-dir", str(tmp_path / "killed"), "--no-tensorboard",
                     fault=f"kill_after_step={6 if graphed else 3}")  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = distill("train", "--resume", str(tmp_path / "killed"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # The child processes see the GPU, so the Trainer picks it (distill.engine.accelerator.has_accelerator_device).
    assert_same_run(tmp_path / "baseline", tmp_path / "killed")


# --- the whole step as one CUDA graph -----------------------------------------------------------


GRAPH_SETTINGS = {
    "fp32": ([], 1e-5),
    "bf16": (["precision=bf16"], 1e-3),
    "adamw-fused": (["optimizer.name=adamw", "optimizer.lr=1e-3", "optimizer.fused=true"], 1e-5),
}  # fmt: skip


def graphed_trainer(data_root: Path, teacher: Path, run_dir: Path, *extra: str):
    from distill.engine.trainer import Trainer
    from distill.recipe.load import load_recipe
    from distill.recipe.resolve import resolve_recipe

    overrides = [
        *resume_overrides(data_root, teacher)[:-2], "data.batch_size=48", "losses.kd={weight: 0.9}", *extra,
    ]  # fmt: skip
    recipe = load_recipe(REPO / "recipes/cifar100/crd/resnet32x4-resnet8x4.yaml", overrides)
    return Trainer(resolve_recipe(recipe), run_dir, tensorboard=False, echo=lambda line: None)


@pytest.mark.parametrize("setting", list(GRAPH_SETTINGS))
def test_a_run_with_cuda_graph_matches_the_plain_step_on_cuda(setting, fake_cifar100, tiny_teacher, tmp_path, no_tf32):
    """CE + KD + CRD, 2 epochs of 6 steps (256 images, batch 48: the 6th partial, run plainly), the lr dropping
    after epoch 1: ``cuda_graph: true`` against the plain step. The graph was captured each epoch and replayed;
    the final weights, banks and optimiser state are within the setting's tolerance of the plain run's (the same
    kernels, so normally equal), and the negatives' generator is where the plain run's is (its draws replayed)."""
    from distill.files.rundir import LAST_CHECKPOINT

    extra, tolerance = GRAPH_SETTINGS[setting]
    plain = graphed_trainer(fake_cifar100, tiny_teacher, tmp_path / "plain", *extra)
    plain.fit()
    graphed = graphed_trainer(fake_cifar100, tiny_teacher, tmp_path / "graph", *extra, "cuda_graph=true")
    graphed.fit()
    assert graphed.step_graph.captures == 2 and graphed.step_graph.replays == 2 + 4
    ours = torch.load(tmp_path / "graph" / LAST_CHECKPOINT, weights_only=False)
    theirs = torch.load(tmp_path / "plain" / LAST_CHECKPOINT, weights_only=False)
    for part in ("model", "losses"):
        for key, value in theirs[part].items():
            torch.testing.assert_close(ours[part][key], value, rtol=tolerance, atol=tolerance, msg=f"{part}.{key}")
    for key, value in theirs["optimizer"]["state"].items():
        for name, tensor in value.items():
            torch.testing.assert_close(ours["optimizer"]["state"][key][name].cpu(), tensor.cpu(), rtol=tolerance, atol=tolerance)
    assert torch.equal(ours["processes"][0]["losses"]["crd"]["generator"], theirs["processes"][0]["losses"]["crd"]["generator"])


# --- memory ---------------------------------------------------------------------------------------


def test_peak_memory_of_a_crd_step_at_the_reference_sizes():
    """CE + CRD, resnet32x4 → resnet8x4, batch 64, K = 16384, 50 000-row banks, fp32: the step is finite, its terms
    float32, and its peak allocation is recorded (``DISTILL_CUDA_FIGURES``) and under 8 GiB, a bound far above
    what it needs (banks 2 × 25.6 MB, scores 2 × 64 × 16385 floats) that catches a B×N or B×K×d blow-up past it."""
    result = crd_reference_step(CUDA)
    assert np.isfinite(result["total"]) and result["crd_dtype"] == "torch.float32"
    assert result["peak_bytes"] is not None and 0 < result["peak_bytes"] < 8 * 2**30
    if os.environ.get(FIGURES_ENV):
        figures = Path(os.environ[FIGURES_ENV])
        existing = json.loads(figures.read_text()) if figures.is_file() else {}
        existing["crd_step_peak_bytes_reference_sizes"] = result["peak_bytes"]
        figures.write_text(json.dumps(existing, indent=2) + "\n")
    print(f"peak memory of a CE + CRD step at the reference sizes: {result['peak_bytes'] / 2**20:.0f} MiB")

