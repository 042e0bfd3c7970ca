"""Tests of distill.data: the registry, CIFAR on disk (through a fake copy), folders, synthetic."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image

import distill.data.registry as data_registry
from distill.data import build_dataset, dataset_options, list_datasets, register_dataset, write_fake_cifar
from distill.data.transforms import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, CROP_PADDING
from distill.errors import DataError, UnknownNameError
from distill.registry import Registry

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fake_cifar100(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_cifar(
        tmp_path_factory.mktemp("c100"), num_classes=100, train_size=300, test_size=100, seed=1
    )


@pytest.fixture(scope="module")
def fake_cifar10(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_cifar(
        tmp_path_factory.mktemp("c10"), num_classes=10, train_size=103, test_size=20, seed=2
    )


def unpickle(path: Path) -> dict:
    with path.open("rb") as file:
        return pickle.load(file, encoding="bytes")


def raw_images(data: np.ndarray) -> torch.Tensor:
    """The CIFAR ``N × 3072`` rows as ``N × 3 × 32 × 32`` floats in [0, 1]."""
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32) / 255)


def unnormalise(image: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    return image * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]


def check_item_format(dataset, num_classes: int, shape: tuple[int, int, int]) -> None:
    assert dataset.num_classes == num_classes == len(dataset.classes)
    assert dataset.input_shape == shape
    labels = dataset.labels
    assert labels.dtype == torch.long and labels.shape == (len(dataset),)
    for position in (0, len(dataset) - 1):
        image, label, index = dataset[position]
        assert isinstance(image, torch.Tensor) and image.dtype == torch.float32
        assert tuple(image.shape) == shape
        assert type(label) is int and label == int(labels[position])
        assert index == position


# --- the registry ------------------------------------------------------------------------


def test_registered_datasets() -> None:
    assert {"cifar100", "cifar10", "folder", "synthetic"} <= set(list_datasets())
    assert dataset_options("synthetic") == {
        "num_classes": 10,
        "train_size": 2000,
        "test_size": 1000,
        "seed": 0,
        "image_size": 32,
    }
    assert dataset_options("cifar100") == {}


def test_unknown_dataset_suggests_close_names(tmp_path: Path) -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'cifar100'"):
        build_dataset("cifar-100", tmp_path, train=True)


def test_unknown_option_names_option_dataset_and_valid_options(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        build_dataset("synthetic", tmp_path, train=True, num_clases=5)
    message = str(info.value)
    assert "'num_clases'" in message and "'synthetic'" in message and "num_classes" in message
    assert "image_size" in message and "train_size" in message
    with pytest.raises(DataError, match=r"^data\.options\.crop: dataset 'cifar100' has no option 'crop'\. It takes no options\."):
        build_dataset("cifar100", tmp_path, train=True, crop=24)


def test_register_dataset_adds_a_builder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(data_registry, "DATASETS", Registry("dataset"))
    calls = []

    @register_dataset("tiny")
    def build_tiny(root, train, *, download, verify, augment, size: int = 3):
        calls.append((root, train, download, verify, augment, size))
        return list(range(size))

    assert build_dataset("tiny", tmp_path, train=False, size=5) == [0, 1, 2, 3, 4]
    assert calls == [(tmp_path, False, False, True, False, 5)]
    build_dataset("tiny", str(tmp_path), train=True)
    assert calls[-1] == (tmp_path, True, False, True, True, 3), "augment defaults to train"
    with pytest.raises(DataError, match="'sise'.*Did you mean 'size'"):
        build_dataset("tiny", tmp_path, train=True, sise=2)


# --- the fake CIFAR writer ---------------------------------------------------------------


def test_fake_cifar100_has_the_official_layout_and_format(fake_cifar100: Path) -> None:
    directory = fake_cifar100 / "cifar-100-python"
    assert sorted(p.name for p in directory.iterdir()) == ["meta", "test", "train"]
    for name in ("train", "test", "meta"):
        assert (directory / name).read_bytes()[:2] == b"\x80\x02", "pickle protocol 2"
    train = unpickle(directory / "train")
    assert set(train) == {b"filenames", b"batch_label", b"fine_labels", b"coarse_labels", b"data"}
    assert train[b"data"].dtype == np.uint8 and train[b"data"].shape == (300, 3072)
    assert sorted(set(train[b"fine_labels"])) == list(range(100)), "every class appears"
    assert set(train[b"coarse_labels"]) == set(range(20))
    assert all(isinstance(name, bytes) for name in train[b"filenames"])
    meta = unpickle(directory / "meta")
    assert len(meta[b"fine_label_names"]) == 100 and len(meta[b"coarse_label_names"]) == 20
    with (directory / "meta").open("rb") as file:
        assert "fine_label_names" in pickle.load(file, encoding="latin1"), (
            "torchvision's decoding gives str keys"
        )


def test_fake_cifar10_has_the_official_layout(fake_cifar10: Path) -> None:
    directory = fake_cifar10 / "cifar-10-batches-py"
    expected = [f"data_batch_{i}" for i in range(1, 6)] + ["batches.meta", "test_batch"]
    assert sorted(p.name for p in directory.iterdir()) == sorted(expected)
    batches = [unpickle(directory / f"data_batch_{i}") for i in range(1, 6)]
    assert sum(len(b[b"labels"]) for b in batches) == 103
    assert set(batches[0]) == {b"filenames", b"batch_label", b"labels", b"data"}
    assert unpickle(directory / "batches.meta")[b"label_names"][0] == b"fake_class_0"


def test_fake_cifar_is_deterministic_and_validates(tmp_path: Path) -> None:
    first = write_fake_cifar(tmp_path / "a", num_classes=10, train_size=20, test_size=10, seed=5)
    second = write_fake_cifar(tmp_path / "b", num_classes=10, train_size=20, test_size=10, seed=5)
    name = "cifar-10-batches-py/test_batch"
    assert (first / name).read_bytes() == (second / name).read_bytes()
    with pytest.raises(ValueError, match="10.*100"):
        write_fake_cifar(tmp_path / "c", num_classes=20)
    with pytest.raises(ValueError, match="every class"):
        write_fake_cifar(tmp_path / "c", num_classes=100, test_size=50)


@pytest.mark.slow
@pytest.mark.e2e
def test_make_fake_cifar100_tool(tmp_path: Path) -> None:
    tool = REPO / "tools" / "make_fake_cifar100.py"
    args = [sys.executable, str(tool), str(tmp_path), "--train", "40", "--test", "10", "--classes", "10"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "cifar-10-batches-py" in result.stdout and "data_batch_5" in result.stdout
    assert "data.verify=false" in result.stdout
    assert len(build_dataset("cifar10", tmp_path, train=False, verify=False)) == 10
    too_small = subprocess.run([*args[:2], str(tmp_path / "x"), "--test", "5", "--classes", "10"], capture_output=True, text=True, timeout=120)
    assert too_small.returncode == 2 and "every class" in too_small.stderr


# --- CIFAR on disk -------------------------------------------------------------------------


def test_cifar100_loads_a_fake_copy_with_verify_false(fake_cifar100: Path) -> None:
    train = build_dataset("cifar100", fake_cifar100, train=True, verify=False)
    test = build_dataset("cifar100", fake_cifar100, train=False, verify=False)
    assert (len(train), len(test)) == (300, 100)
    check_item_format(train, 100, (3, 32, 32))
    check_item_format(test, 100, (3, 32, 32))
    written = unpickle(fake_cifar100 / "cifar-100-python" / "train")[b"fine_labels"]
    assert train.labels.tolist() == written
    assert train.classes[:2] == ["fake_class_00", "fake_class_01"]


def test_cifar10_loads_a_fake_copy_with_verify_false(fake_cifar10: Path) -> None:
    train = build_dataset("cifar10", fake_cifar10, train=True, verify=False)
    test = build_dataset("cifar10", fake_cifar10, train=False, verify=False)
    assert (len(train), len(test)) == (103, 20)
    check_item_format(train, 10, (3, 32, 32))
    assert torch.bincount(test.labels, minlength=10).min() == 2


@pytest.mark.parametrize(
    ("name", "folder", "mean", "std"),
    [
        ("cifar100", "cifar-100-python/test", CIFAR100_MEAN, CIFAR100_STD),
        ("cifar10", "cifar-10-batches-py/test_batch", CIFAR10_MEAN, CIFAR10_STD),
    ],
)
def test_cifar_pixels_round_trip(name, folder, mean, std, fake_cifar100: Path, fake_cifar10: Path) -> None:
    root = fake_cifar100 if name == "cifar100" else fake_cifar10
    dataset = build_dataset(name, root, train=False, verify=False, augment=False)
    raw = raw_images(unpickle(root / folder)[b"data"])
    loaded = torch.stack([unnormalise(dataset[i][0], mean, std) for i in range(len(dataset))])
    assert torch.allclose(loaded, raw, atol=1e-5)
    assert raw.std() > 0.05, "images are not constant"


@pytest.mark.parametrize("name", ["cifar100", "cifar10"])
def test_verify_rejects_a_fake_copy_naming_the_checksum(
    name: str, fake_cifar100: Path, fake_cifar10: Path
) -> None:
    root = fake_cifar100 if name == "cifar100" else fake_cifar10
    with pytest.raises(DataError, match="checksum") as info:
        build_dataset(name, root, train=True)
    assert "data.verify: false" in str(info.value) and "data.download: true" in str(info.value)


def test_missing_cifar_says_where_and_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        build_dataset("cifar100", tmp_path, train=True)
    message = str(info.value)
    assert str(tmp_path / "cifar-100-python") in message
    assert "train, test, meta" in message
    assert "data.download: true" in message and "cifar-100-python.tar.gz" in message


def test_datasets_on_disk_need_a_root_generated_ones_do_not() -> None:
    for name in ("cifar100", "cifar10", "folder"):
        with pytest.raises(DataError, match=f"'{name}'.*data.root"):
            build_dataset(name, None, train=True)
    assert len(build_dataset("synthetic", None, train=False, test_size=10)) == 10


def test_partly_missing_cifar_lists_the_missing_files(tmp_path: Path) -> None:
    write_fake_cifar(tmp_path, num_classes=10, train_size=10, test_size=10)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"\(data_batch_3 missing\)"):
        build_dataset("cifar10", tmp_path, train=False, verify=False)


def test_root_pointing_inside_the_cifar_folder_gets_a_hint(fake_cifar100: Path) -> None:
    with pytest.raises(DataError, match="data.root should be the directory containing cifar-100-python/"):
        build_dataset("cifar100", fake_cifar100 / "cifar-100-python", train=True, verify=False)


def test_unreadable_cifar_file_is_a_data_error(tmp_path: Path) -> None:
    write_fake_cifar(tmp_path, num_classes=100, train_size=100, test_size=100)
    (tmp_path / "cifar-100-python" / "test").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="could not be read"):
        build_dataset("cifar100", tmp_path, train=False, verify=False)


def test_failed_download_is_a_data_error_with_instructions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def offline(url, download_root, filename, md5):
        calls.append((url, download_root, filename, md5))
        raise URLError("no network")

    monkeypatch.setattr("distill.data.cifar.download_and_extract_archive", offline)
    with pytest.raises(DataError, match="could not download CIFAR-100.*cifar-100-python.tar.gz"):
        build_dataset("cifar100", tmp_path, train=True, download=True)
    assert calls and calls[0][0].endswith("cifar-100-python.tar.gz") and calls[0][3], (
        "torchvision's URL and MD5"
    )


def test_download_skips_a_present_local_copy_when_not_verifying(
    fake_cifar10: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("distill.data.cifar.download_and_extract_archive", pytest.fail)
    assert len(build_dataset("cifar10", fake_cifar10, train=False, download=True, verify=False)) == 20


# --- augmentation --------------------------------------------------------------------------


def crop_and_flip_of(drawn: torch.Tensor, windows: torch.Tensor) -> tuple[int, int, bool] | None:
    """The (top, left, flipped) crop window equal to ``drawn``, if any (``windows``: C, top, left, H, W)."""
    span = windows.shape[1]
    for flipped in (False, True):
        candidate = drawn.flip(-1) if flipped else drawn
        error = (windows - candidate[:, None, None]).abs().amax(dim=(0, 3, 4))  # top, left
        best = int(error.argmin())
        if error.flatten()[best] < 1e-5:
            return best // span, best % span, flipped
    return None


def check_random_crops_and_flips(
    draws: list[torch.Tensor], original: torch.Tensor, pad_value: float = 0.0
) -> None:
    """Every draw is a window of the padded original, maybe flipped; flips occur and crops shift."""
    size = original.shape[-1]
    padded = torch.nn.functional.pad(original, [CROP_PADDING] * 4, value=pad_value)
    windows = padded.unfold(1, size, 1).unfold(2, size, 1).contiguous()
    found = [crop_and_flip_of(d, windows) for d in draws]
    assert None not in found, "every augmented image is a crop (and maybe a flip) of the padded original"
    assert {flipped for _, _, flipped in found} == {False, True}
    assert len({(top, left) for top, left, _ in found}) >= 10, "crops shift"


def test_cifar_train_augmentation_crops_and_flips(fake_cifar100: Path) -> None:
    dataset = build_dataset("cifar100", fake_cifar100, train=True, verify=False)
    plain = build_dataset("cifar100", fake_cifar100, train=True, verify=False, augment=False)
    torch.manual_seed(0)
    draws = [unnormalise(dataset[7][0], CIFAR100_MEAN, CIFAR100_STD) for _ in range(80)]
    # torchvision pads the PIL image with black pixels, before normalising.
    check_random_crops_and_flips(draws, unnormalise(plain[7][0], CIFAR100_MEAN, CIFAR100_STD))


def test_test_transform_is_deterministic(fake_cifar100: Path) -> None:
    dataset = build_dataset("cifar100", fake_cifar100, train=False, verify=False)
    assert torch.equal(dataset[3][0], dataset[3][0])
    synthetic = build_dataset("synthetic", "unused", train=False, test_size=20)
    assert torch.equal(synthetic[3][0], synthetic[3][0])


def test_synthetic_train_augmentation_crops_and_flips() -> None:
    dataset = build_dataset("synthetic", "unused", train=True, train_size=20)
    torch.manual_seed(0)
    draws = [dataset[4][0] for _ in range(80)]
    check_random_crops_and_flips(draws, dataset.images[4])


def test_synthetic_crop_padding_scales_with_the_image_size() -> None:
    # padded rows are exact zeros (generated pixels never are): at 16×16 a crop shifts by at most 2 rows
    dataset = build_dataset("synthetic", "unused", train=True, train_size=20, image_size=16)
    torch.manual_seed(0)
    shifts = set()
    for _ in range(200):
        zero_rows = (dataset[4][0] == 0).all(dim=2).all(dim=0).tolist()
        top = next(i for i, zero in enumerate(zero_rows) if not zero)
        bottom = next(i for i, zero in enumerate(reversed(zero_rows)) if not zero)
        shifts.add(max(top, bottom))
    assert shifts == {0, 1, 2}


# --- image folders -------------------------------------------------------------------------


def write_images(directory: Path, count: int, colour: tuple[int, int, int], size=(40, 30)) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", size, tuple(min(255, c + 10 * i) for c in colour)).save(directory / f"{i}.png")


@pytest.fixture()
def image_folder(tmp_path: Path) -> Path:
    write_images(tmp_path / "train" / "cat", 3, (200, 30, 30))
    write_images(tmp_path / "train" / "dog", 2, (30, 30, 200))
    write_images(tmp_path / "test" / "cat", 1, (200, 30, 30))
    write_images(tmp_path / "test" / "dog", 2, (30, 30, 200))
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
    return tmp_path


def test_folder_dataset_loads_both_splits(image_folder: Path) -> None:
    train = build_dataset("folder", image_folder, train=True, image_size=16)
    test = build_dataset("folder", image_folder, train=False, image_size=16)
    assert train.classes == test.classes == ["cat", "dog"], "hidden folders are not classes"
    assert train.labels.tolist() == [0, 0, 0, 1, 1] and test.labels.tolist() == [0, 1, 1]
    check_item_format(train, 2, (3, 16, 16))
    check_item_format(test, 2, (3, 16, 16))
    assert torch.equal(test[0][0], test[0][0])
    red = test[0][0].mean(dim=(1, 2))
    assert red[0] > red[2], "a red cat stays red after ImageNet normalisation"


def test_folder_accepts_val_and_custom_normalisation(image_folder: Path) -> None:
    (image_folder / "test").rename(image_folder / "val")
    test = build_dataset("folder", image_folder, train=False, mean=[0, 0, 0], std=[1, 1, 1])
    assert len(test) == 3 and test.input_shape == (3, 32, 32)
    assert torch.allclose(test[0][0][:, 0, 0], torch.tensor([200, 30, 30]) / 255, atol=1e-6)


def test_folder_missing_split_or_root(image_folder: Path, tmp_path: Path) -> None:
    (image_folder / "test").rename(image_folder / "holdout")
    with pytest.raises(DataError, match=r"no test split.*test or .*val"):
        build_dataset("folder", image_folder, train=False)
    with pytest.raises(DataError, match="does not exist"):
        build_dataset("folder", tmp_path / "nowhere", train=True)


def test_folder_mismatched_classes(image_folder: Path) -> None:
    (image_folder / "test" / "dog").rename(image_folder / "test" / "bird")
    with pytest.raises(DataError, match=r"only in train: dog; only in test: bird"):
        build_dataset("folder", image_folder, train=False)


def test_folder_empty_split_or_class(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        build_dataset("folder", tmp_path, train=True)
    (tmp_path / "train" / "cat").mkdir()
    with pytest.raises(DataError, match="at least one image"):
        build_dataset("folder", tmp_path, train=True)


def test_folder_option_values_are_checked(image_folder: Path) -> None:
    with pytest.raises(DataError, match="image_size"):
        build_dataset("folder", image_folder, train=True, image_size=0)
    with pytest.raises(DataError, match="std"):
        build_dataset("folder", image_folder, train=True, std=[0.2, 0.2])


# --- synthetic -----------------------------------------------------------------------------


def test_synthetic_is_deterministic_per_seed() -> None:
    first = build_dataset("synthetic", "unused", train=True, augment=False, train_size=300, seed=3)
    again = build_dataset("synthetic", "unused", train=True, augment=False, train_size=300, seed=3)
    other = build_dataset("synthetic", "unused", train=True, augment=False, train_size=300, seed=4)
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert not torch.allclose(first.images, other.images)
    test = build_dataset("synthetic", "unused", train=False, test_size=300, seed=3)
    assert not torch.allclose(first.images, test.images), "train and test draw different samples"


def test_synthetic_shapes_and_balance() -> None:
    train = build_dataset("synthetic", "unused", train=True, train_size=1003)
    test = build_dataset("synthetic", "unused", train=False, test_size=500, num_classes=25, image_size=24)
    assert len(train) == 1003 and len(test) == 500
    check_item_format(train, 10, (3, 32, 32))
    check_item_format(test, 25, (3, 24, 24))
    for dataset, classes in ((train, 10), (test, 25)):
        counts = torch.bincount(dataset.labels, minlength=classes)
        assert counts.max() - counts.min() <= 1
    assert 0.5 < float(train.images.std()) < 2.0 and abs(float(train.images.mean())) < 0.3
    assert train.classes[0] == "group0_class0" and train.classes[-1] == "group2_class9"


def test_synthetic_option_values_are_checked() -> None:
    with pytest.raises(DataError, match="num_classes"):
        build_dataset("synthetic", "unused", train=True, num_classes=1)
    with pytest.raises(DataError, match="train_size"):
        build_dataset("synthetic", "unused", train=True, train_size="many")
