"""The device-resident CIFAR data path: exact augmentation, its statistics, the data order, sharding, evaluation."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from chi_square import homogeneity_p
from PIL import Image
from torch.utils.data import DataLoader

from distill.cli.main import main
from distill.data import build_dataset, write_fake_cifar
from distill.data.device_loader import (
    IGNORED_LABEL,
    DeviceLoader,
    InMemoryImages,
    augment_batch,
    device_loader_unsupported,
    draw_augmentation,
)
from distill.data.placement import Placement
from distill.data.transforms import CIFAR100_MEAN, CIFAR100_STD, CROP_PADDING, cifar_transform
from distill.data.worker_loader import WorkerLoader
from distill.engine.loaders import build_datasets, build_loaders
from distill.engine.metrics import read_metrics
from distill.errors import DataError
from distill.recipe.schema import DataSpec

REPO = Path(__file__).resolve().parent.parent
KD_RECIPE = REPO / "recipes/cifar100/kd/resnet32x4-resnet8x4.yaml"
TRAIN_SIZE, TEST_SIZE = 203, 101  # odd sizes: partial last batches and uneven shards


@pytest.fixture(scope="module")
def odd_cifar(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("odd_cifar")
    write_fake_cifar(root, num_classes=100, train_size=TRAIN_SIZE, test_size=TEST_SIZE, seed=1)
    return root


def spec_for(root: Path, **changes) -> DataSpec:
    return DataSpec(root=str(root), verify=False, download=False, num_workers=0, **changes)


def loader_over(images: np.ndarray, batch_size: int, *, augment: bool = True, shuffle: bool = True, **kwargs) -> DeviceLoader:
    source = InMemoryImages(images, torch.zeros(len(images), dtype=torch.long), CIFAR100_MEAN, CIFAR100_STD, augment)
    return DeviceLoader(source, batch_size, shuffle=shuffle, placement=Placement(**kwargs))


# --- exactness -----------------------------------------------------------------------------------


def torchvision_reference(image: np.ndarray, top: int, left: int, flip: bool) -> torch.Tensor:
    """torchvision's RandomCrop(32, padding=4) + flip + ToTensor + Normalize with the given draws."""
    picture = TF.pad(Image.fromarray(image), CROP_PADDING, fill=0)
    picture = TF.crop(picture, top, left, 32, 32)
    if flip:
        picture = TF.hflip(picture)
    return TF.normalize(TF.to_tensor(picture), CIFAR100_MEAN, CIFAR100_STD)


@pytest.mark.parametrize("channels_last", [False, True])
def test_augment_batch_equals_torchvision_on_the_same_draws(channels_last):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(48, 32, 32, 3), dtype=np.uint8)
    offsets_y, offsets_x, flips = draw_augmentation(48, CROP_PADDING, torch.Generator().manual_seed(3))
    assert 0 < int(flips.sum()) < 48 and 0 <= int(offsets_y.min()) and int(offsets_x.max()) <= 2 * CROP_PADDING
    batch = torch.from_numpy(images).permute(0, 3, 1, 2)
    out = augment_batch(batch, offsets_y, offsets_x, flips, CIFAR100_MEAN, CIFAR100_STD, channels_last=channels_last)
    assert out.dtype == torch.float32 and out.shape == (48, 3, 32, 32)
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    expected = torch.stack(
        [torchvision_reference(images[b], int(offsets_y[b]), int(offsets_x[b]), bool(flips[b])) for b in range(48)]
    )
    assert (out - expected).abs().max() <= 1e-6


def test_test_loader_equals_the_datasets_own_items(odd_cifar):
    train_set, test_set = build_datasets(spec_for(odd_cifar))
    plain_train = build_dataset("cifar100", odd_cifar, train=True, verify=False, augment=False)
    for dataset, reference in ((test_set, test_set), (plain_train, plain_train)):
        loader = DeviceLoader(dataset.in_memory_images(), 64, shuffle=False)
        inputs, labels, indices = (torch.cat(parts) for parts in zip(*loader))
        assert torch.equal(indices, torch.arange(len(dataset))) and torch.equal(labels, dataset.labels)
        expected = torch.stack([reference[i][0] for i in range(len(dataset))])
        assert (inputs - expected).abs().max() <= 1e-6


def test_channels_last_changes_the_memory_format_only(odd_cifar):
    train_set, test_set = build_datasets(spec_for(odd_cifar))
    for dataset, shuffle in ((train_set, True), (test_set, False)):
        plain, last = (DeviceLoader(dataset.in_memory_images(), 64, shuffle=shuffle, placement=Placement(seed=2, channels_last=c)) for c in (False, True))
        for (x1, y1, i1), (x2, y2, i2) in zip(plain, last, strict=True):
            assert x2.is_contiguous(memory_format=torch.channels_last) and x1.is_contiguous()
            assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(i1, i2)


# --- statistics of the draws ---------------------------------------------------------------------

DRAWS = 4096
#: A position-encoded image: red = row + 1, green = column + 1 (zero only in the padding).
POSITIONS = np.stack(
    [np.arange(1, 33)[:, None].repeat(32, 1), np.arange(1, 33)[None, :].repeat(32, 0), np.full((32, 32), 200)], axis=-1
).astype(np.uint8)


def decode_draws(inputs: torch.Tensor) -> torch.Tensor:
    """``LongTensor[B, 3]``: (top, left, flipped) of each augmented position-encoded image."""
    mean = torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR100_STD).view(1, 3, 1, 1)
    pixels = (inputs * std + mean).mul(255).round().long()
    # The centre is never padding: output (16, 16) is source row 12 + top, column 12 + left (11 + left flipped).
    flipped = (pixels[:, 1, 16, 15] > pixels[:, 1, 16, 16]).long()
    top = pixels[:, 0, 16, 16] - 13
    left = pixels[:, 1, 16, 16] - 13 + flipped
    return torch.stack([top, left, flipped], dim=1)


def cell_counts(draws: torch.Tensor) -> torch.Tensor:
    """Counts of each (top, left, flipped) over the 9 × 9 × 2 cells."""
    span = 2 * CROP_PADDING + 1
    assert draws[:, :2].min() >= 0 and draws[:, :2].max() < span
    cells = (draws[:, 0] * span + draws[:, 1]) * 2 + draws[:, 2]
    return torch.bincount(cells, minlength=span * span * 2)


@pytest.fixture(scope="module")
def torchvision_draws() -> torch.Tensor:
    transform = cifar_transform(CIFAR100_MEAN, CIFAR100_STD, augment=True)
    picture = Image.fromarray(POSITIONS)
    torch.manual_seed(0)
    return decode_draws(torch.stack([transform(picture) for _ in range(DRAWS)]))


@pytest.fixture(scope="module")
def loader_draws() -> torch.Tensor:
    loader = loader_over(np.repeat(POSITIONS[None], 512, axis=0), 256, seed=5)
    batches = []
    for epoch in range(DRAWS // 512):
        loader.set_epoch(epoch)
        batches += [inputs for inputs, _, _ in loader]
    return decode_draws(torch.cat(batches))


def p_values(draws: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Chi-square homogeneity p-values: joint (top, left, flip) cells, and each of the three on its own."""
    values = {"joint": homogeneity_p(cell_counts(draws), cell_counts(reference))}
    for column, name in enumerate(("top", "left", "flip")):
        values[name] = homogeneity_p(torch.bincount(draws[:, column], minlength=9), torch.bincount(reference[:, column], minlength=9))
    return values


def test_crop_offsets_and_flips_are_distributed_as_torchvisions(loader_draws, torchvision_draws):
    assert len(loader_draws) == len(torchvision_draws) == DRAWS
    assert (cell_counts(loader_draws) > 0).all() and (cell_counts(torchvision_draws) > 0).all(), "all 9 × 9 × 2 cells occur"
    assert min(p_values(loader_draws, torchvision_draws).values()) > 1e-4
    assert abs(loader_draws[:, 2].double().mean() - 0.5) < 0.04


@pytest.mark.parametrize("wrong", ["offsets 0..7", "flip rate 0.4"])
def test_the_same_test_rejects_a_wrong_distribution(wrong, torchvision_draws):
    generator = torch.Generator().manual_seed(1)
    span = 2 * CROP_PADDING if wrong == "offsets 0..7" else 2 * CROP_PADDING + 1
    offsets = torch.randint(0, span, (2, DRAWS), generator=generator)
    flips = torch.rand(DRAWS, generator=generator) < (0.4 if wrong == "flip rate 0.4" else 0.5)
    images = torch.from_numpy(POSITIONS).permute(2, 0, 1).expand(DRAWS, 3, 32, 32)
    draws = decode_draws(augment_batch(images, offsets[0], offsets[1], flips, CIFAR100_MEAN, CIFAR100_STD))
    assert torch.equal(draws[:, 0], offsets[0]) and torch.equal(draws[:, 1], offsets[1])  # the decoder is right
    assert torch.equal(draws[:, 2].bool(), flips)
    assert min(p_values(draws, torchvision_draws).values()) < 1e-4


# --- order, sharding, determinism ---------------------------------------------------------------


def test_every_index_once_per_epoch_with_a_kept_partial_batch(odd_cifar):
    train_set, _ = build_datasets(spec_for(odd_cifar))
    loader = DeviceLoader(train_set.in_memory_images(), 64, shuffle=True, placement=Placement(seed=0))
    assert len(loader) == math.ceil(TRAIN_SIZE / 64) == 4
    orders = []
    for epoch in (1, 2):
        loader.set_epoch(epoch)
        batches = list(loader)
        assert [len(labels) for _, labels, _ in batches] == [64, 64, 64, TRAIN_SIZE - 3 * 64]
        indices = torch.cat([i for _, _, i in batches])
        assert torch.equal(indices.sort().values, torch.arange(TRAIN_SIZE))
        assert torch.equal(torch.cat([y for _, y, _ in batches]), train_set.labels[indices])
        assert all(x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32) for x, _, _ in batches)
        assert all(y.dtype == i.dtype == torch.long for _, y, i in batches)
        orders.append(indices)
    assert not torch.equal(orders[0], orders[1]), "a new permutation each epoch"


def test_same_seed_same_batches_other_seed_other_order(odd_cifar):
    train_set, _ = build_datasets(spec_for(odd_cifar))
    source = train_set.in_memory_images()
    first, second, other = (DeviceLoader(source, 50, shuffle=True, placement=Placement(seed=s)) for s in (7, 7, 8))
    for loader in (first, second, other):
        loader.set_epoch(3)
    batches = list(first)
    for (x1, y1, i1), (x2, y2, i2) in zip(batches, second, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(i1, i2)
    for (x1, _, _), (x2, _, _) in zip(batches, first, strict=True):  # iterating again repeats the epoch
        assert torch.equal(x1, x2)
    assert not torch.equal(torch.cat([i for _, _, i in batches]), torch.cat([i for _, _, i in other]))


@pytest.mark.parametrize("num_processes", [2, 3])
def test_shards_are_disjoint_equal_and_cover_the_set(odd_cifar, num_processes):
    train_set, _ = build_datasets(spec_for(odd_cifar))
    source = train_set.in_memory_images()
    loaders = [
        DeviceLoader(source, 32, shuffle=True, placement=Placement(seed=0, process_index=r, num_processes=num_processes))
        for r in range(num_processes)
    ]
    for loader in loaders:
        loader.set_epoch(4)
    shards = [torch.cat([i for _, _, i in loader]) for loader in loaders]
    per_process = math.ceil(TRAIN_SIZE / num_processes)
    assert all(len(shard) == per_process for shard in shards)
    assert len({len(loader) for loader in loaders}) == 1 and len(loaders[0]) == math.ceil(per_process / 32)
    everything = torch.cat(shards)
    assert set(everything.tolist()) == set(range(TRAIN_SIZE))
    assert len(everything) - len(set(everything.tolist())) == per_process * num_processes - TRAIN_SIZE  # wrap-around only
    single = DeviceLoader(source, 32, shuffle=True, placement=Placement(seed=0))
    single.set_epoch(4)
    permutation = torch.cat([i for _, _, i in single])
    assert torch.equal(shards[0], permutation.repeat(2)[: per_process * num_processes][0::num_processes])
    # The augmentation draws differ across processes.
    firsts = [next(iter(loader))[0] for loader in loaders]
    assert not torch.equal(firsts[0][:5], firsts[1][:5])


def test_test_shards_pad_with_ignored_labels(odd_cifar):
    _, test_set = build_datasets(spec_for(odd_cifar))
    loaders = [DeviceLoader(test_set.in_memory_images(), 16, shuffle=False, placement=Placement(process_index=r, num_processes=3)) for r in range(3)]
    assert {len(loader) for loader in loaders} == {math.ceil(34 / 16)}
    labels = torch.cat([torch.cat([y for _, y, _ in loader]) for loader in loaders])
    indices = torch.cat([torch.cat([i for _, _, i in loader]) for loader in loaders])
    assert torch.equal(indices[:TEST_SIZE], torch.arange(TEST_SIZE)) and torch.equal(labels[:TEST_SIZE], test_set.labels)
    assert (labels[TEST_SIZE:] == IGNORED_LABEL).all() and (indices[TEST_SIZE:] == IGNORED_LABEL).all()


# --- choosing the data path ----------------------------------------------------------------------


def write_folder(root: Path) -> Path:
    for split, count in (("train", 4), ("test", 2)):
        for name, colour in (("cat", (200, 30, 30)), ("dog", (30, 30, 200))):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (32, 32), colour).save(root / split / name / f"{i}.png")
    return root


def test_auto_picks_the_device_for_cifar_and_workers_for_a_folder(fake_cifar100, tmp_path):
    spec = spec_for(fake_cifar100)
    assert spec.loader == "auto"
    data = build_loaders(spec, *build_datasets(spec), Placement())
    assert data.on_device and isinstance(data.train_loader, DeviceLoader) and isinstance(data.test_loader, DeviceLoader)
    assert "device" in data.description and "cpu" in data.description
    data = build_loaders(spec_for(fake_cifar100, loader="workers"), *build_datasets(spec), Placement())
    assert not data.on_device and isinstance(data.train_loader, WorkerLoader) and "DataLoader" in data.description
    assert isinstance(data.test_loader, DataLoader)

    folder = spec_for(write_folder(tmp_path / "images"), dataset="folder", batch_size=4, test_batch_size=4)
    data = build_loaders(folder, *build_datasets(folder), Placement())
    assert not data.on_device and isinstance(data.train_loader, WorkerLoader)
    synthetic = DataSpec(dataset="synthetic", root="unused", batch_size=8, options={"train_size": 20, "test_size": 10})
    assert not build_loaders(synthetic, *build_datasets(synthetic), Placement()).on_device


def test_device_on_an_unsupported_dataset_says_why_and_what_to_do(tmp_path):
    folder = spec_for(write_folder(tmp_path / "images"), dataset="folder", batch_size=4, loader="device")
    datasets = build_datasets(folder)
    assert device_loader_unsupported(datasets[0]) is not None
    with pytest.raises(DataError, match=r"'folder'.*in_memory_images.*data\.loader=workers"):
        build_loaders(folder, *datasets, Placement())


def test_batch_larger_than_the_training_set_is_still_refused(fake_cifar100):
    spec = spec_for(fake_cifar100, batch_size=1000)
    with pytest.raises(DataError, match="larger than the training set"):
        build_loaders(spec, *build_datasets(spec), Placement())


# --- end to end ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("loader", ["device", "workers"])
def test_distill_train_runs_on_both_data_paths(loader, fake_cifar100, tiny_teacher, tmp_path):
    run_dir = tmp_path / loader
    overrides = [
        f"data.root={fake_cifar100}", "data.verify=false", "data.download=false", "data.num_workers=0",
        f"data.loader={loader}", "schedule.epochs=1", "log_every=2", "student.arch=resnet8",
        "teacher.name=null", "teacher.arch=resnet14", f"teacher.checkpoint={tiny_teacher}",
    ]
    assert main(["train", str(KD_RECIPE), *overrides, "--run-dir", str(run_dir)]) == 0
    row = read_metrics(run_dir)[-1]
    assert row["epoch"] == 1 and row["step"] == math.ceil(256 / 64)
    for key in ("train/loss/ce", "train/loss/kd", "train/loss/total", "test/top1"):
        assert math.isfinite(row[key]), key


WORKER = r"""
import sys, torch
from accelerate import Accelerator
from distill.data.placement import Placement
from distill.engine.evaluate import evaluate
from distill.engine.loaders import build_datasets, build_loaders
from distill.models import create_model
from distill.recipe.schema import DataSpec
accelerator = Accelerator(cpu=True)
rank, world = accelerator.process_index, accelerator.num_processes
results = {}
for kind in ("device", "workers"):
    spec = DataSpec(root=sys.argv[2], verify=False, download=False, num_workers=0, batch_size=32, test_batch_size=16, loader=kind)
    train_set, test_set = build_datasets(spec)
    data = build_loaders(spec, train_set, test_set, Placement(device=accelerator.device, process_index=rank, num_processes=world, seed=0))
    assert data.on_device == (kind == "device")
    test_loader = data.test_loader if data.on_device else accelerator.prepare(data.test_loader)
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=100)
    accuracy = evaluate(model, test_loader, accelerator)
    results[kind] = (accuracy.top1, accuracy.top5, accuracy.count)
    if kind == "device":
        for epoch in (1, 2):
            data.train_loader.set_epoch(epoch)
            results[f"indices{epoch}"] = torch.cat([indices for _, _, indices in data.train_loader])
            results[f"batches{epoch}"] = len(data.train_loader)
torch.save(results, f"{sys.argv[1]}/rank{rank}.pt")
torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.e2e
def test_two_processes_see_disjoint_shards_and_evaluate_exactly(odd_cifar, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script), str(tmp_path), str(odd_cifar)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    per_process = math.ceil(TRAIN_SIZE / 2)
    for epoch in (1, 2):
        assert rank0[f"batches{epoch}"] == rank1[f"batches{epoch}"] == math.ceil(per_process / 32)
        first, second = rank0[f"indices{epoch}"], rank1[f"indices{epoch}"]
        assert len(first) == len(second) == per_process
        assert set(first.tolist()) | set(second.tolist()) == set(range(TRAIN_SIZE))
        assert len(set(first.tolist()) & set(second.tolist())) == 2 * per_process - TRAIN_SIZE  # the wrap-around pad
    assert not torch.equal(rank0["indices1"], rank0["indices2"])

    # One process, the same model: both data paths give the same exact counts.
    from accelerate import Accelerator

    from distill.engine.evaluate import evaluate
    from distill.models import create_model

    accelerator = Accelerator(cpu=True)
    spec = spec_for(odd_cifar, test_batch_size=16)
    data = build_loaders(spec, *build_datasets(spec), Placement())
    torch.manual_seed(0)
    single = evaluate(create_model("resnet8", num_classes=100), data.test_loader, accelerator)
    assert single.count == TEST_SIZE
    for rank in (rank0, rank1):
        assert rank["device"] == rank["workers"] == (single.top1, single.top5, TEST_SIZE)
