"""CIFAR files handed to distill: read without running code, mismatches explained, never overwritten.

* A CIFAR python file is a pickle, and a pickle can call ``os.system``. Every CIFAR file
  (train, test, meta; with and without ``data.verify``) is read by the restricted
  unpickler of :mod:`distill.data.safe_pickle`; a planted payload is refused, the file
  and the global named, and the payload (which would create a marker file) never runs.
  Checkpoints are refused the same way. The real format still loads: the fake writer's
  Python 2 pickles and Python 3 pickles of the exact CIFAR key set, at every protocol.
* A local copy whose md5 does not match is reported as a checksum mismatch, also when
  the recipe says ``download: true``, and ``distill teachers verify`` words its data
  advice with its own flags (``--no-verify-data``, ``--data-root``).
* ``distill fake-cifar`` does not write over an existing CIFAR without ``--force``, and
  never over files that match the official release.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.error import URLError

import numpy as np
import pytest
import torch
import yaml

from distill.cli.main import EXIT_USER_ERROR, main
from distill.data import build_dataset, fake_cifar, write_fake_cifar
from distill.data.cifar import CIFAR100Dataset
from distill.data.fake_cifar import ExistingDatasetError
from distill.data.safe_pickle import RefusedGlobalError, load_restricted
from distill.errors import DataError
from distill.models import create_model

REPO = Path(__file__).resolve().parents[1]
SYSTEM = f"{os.system.__module__}.system"
"""How a pickle names ``os.system`` on this platform (``posix.system`` on Linux)."""
FILES = ("train", "test", "meta")


class RunsShellCommand:
    """Pickles as a call of ``os.system(command)``: what a planted payload looks like."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Callable[[str], int], tuple[str]]:
        return os.system, (self.command,)


def touch(marker: Path) -> RunsShellCommand:
    return RunsShellCommand(f"touch {shlex.quote(str(marker))}")


@pytest.fixture
def cifar_root(tmp_path: Path) -> Path:
    """A fresh fake CIFAR-100 (100 train / 100 test images) that a test may spoil."""
    return write_fake_cifar(tmp_path / "cifar", num_classes=100, train_size=100, test_size=100, seed=3)


def plant(path: Path, marker: Path) -> None:
    """Replace a CIFAR file by one of the same shape whose loading would create ``marker``."""
    with path.open("rb") as file:
        entry = pickle.load(file, encoding="bytes")
    key = b"fine_label_names" if path.name == "meta" else b"data"
    entry[key] = touch(marker)
    with path.open("wb") as file:
        pickle.dump(entry, file, protocol=2)


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def contents(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


# --- the restricted unpickler ---------------------------------------------------------------


def test_the_payload_is_live_when_loaded_with_plain_pickle(cifar_root: Path, tmp_path: Path) -> None:
    """The control for the refusals below: unrestricted loading of the planted file runs it."""
    marker = tmp_path / "code-ran"
    plant(cifar_root / "cifar-100-python" / "train", marker)
    with (cifar_root / "cifar-100-python" / "train").open("rb") as file:
        pickle.load(file, encoding="latin1")
    assert marker.exists()


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("verify", [False, True])
def test_a_cifar_file_that_would_run_code_is_refused_and_never_run(
    name: str, verify: bool, cifar_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "code-ran"
    path = cifar_root / "cifar-100-python" / name
    plant(path, marker)
    if verify:  # as if the planted file matched the official md5: the file is still read safely
        monkeypatch.setattr(CIFAR100Dataset, "_bad_checksums", lambda self, directory: [])
    with pytest.raises(DataError) as info:
        build_dataset("cifar100", cifar_root, train=name != "test", verify=verify)
    message = str(info.value)
    assert f"CIFAR-100 file {path} was refused" in message
    assert f"asks to call or build {SYSTEM}" in message and "nothing in it was run" in message
    assert not marker.exists(), "reading the CIFAR file ran the code pickled in it"


def test_a_payload_nested_in_the_labels_is_refused(cifar_root: Path, tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = cifar_root / "cifar-100-python" / "test"
    with path.open("rb") as file:
        entry = pickle.load(file, encoding="bytes")
    entry[b"fine_labels"] = [0, 1, [touch(marker)]]
    path.write_bytes(pickle.dumps(entry, protocol=4))
    with pytest.raises(DataError, match=f"file {path} was refused.*{SYSTEM}"):
        build_dataset("cifar100", cifar_root, train=False, verify=False)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("payload", "refused"),
    [
        (b"cbuiltins\neval\n(S'1'\ntR.", "builtins.eval"),
        (b"c__builtin__\nopen\n(S'/etc/passwd'\ntR.", "__builtin__.open"),
        (b"csubprocess\nPopen\n(S'true'\ntR.", "subprocess.Popen"),
        (b"cnumpy\nload\n(S'x.npy'\ntR.", "numpy.load"),
    ],
)
def test_globals_outside_the_data_format_are_refused_by_name(payload: bytes, refused: str, tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(payload)
    with pytest.raises(RefusedGlobalError) as info:
        load_restricted(path)
    assert info.value.qualified_name == refused


@pytest.mark.parametrize(
    "payload",
    [
        b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R.",  # a codec lookup by name
        b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x40\x85R.",  # bytes(2**30): a gigabyte from five bytes
        b"\x80\x02X\x01\x00\x00\x00xQ.",  # a persistent id
    ],
)
def test_admitted_helpers_do_only_what_the_format_needs(payload: bytes, tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(payload)
    with pytest.raises(pickle.UnpicklingError):
        load_restricted(path)


def test_the_fake_writers_files_read_the_same_as_with_plain_pickle(cifar_root: Path) -> None:
    for name in FILES:
        path = cifar_root / "cifar-100-python" / name
        with path.open("rb") as file:
            expected = pickle.load(file, encoding="latin1")
        got = load_restricted(path)
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            if isinstance(value, np.ndarray):
                assert got[key].dtype == value.dtype and np.array_equal(got[key], value)
            else:
                assert got[key] == value


def write_real_key_set(folder: Path, protocol: int, rng: np.random.Generator) -> dict[str, Any]:
    """CIFAR-100 as Python 3 pickles it: the real files' exact keys, as bytes, at ``protocol``."""
    folder.mkdir(parents=True)
    written: dict[str, Any] = {}
    for name, size in (("train", 200), ("test", 100)):
        fine = [int(label) for label in rng.permutation(np.arange(size) % 100)]
        entry = {
            b"filenames": [f"img_{i}.png".encode() for i in range(size)],
            b"batch_label": f"{name} batch 1 of 1".encode(),
            b"fine_labels": fine,
            b"coarse_labels": [label // 5 for label in fine],
            b"data": rng.integers(0, 256, size=(size, 3072), dtype=np.uint8),
        }
        (folder / name).write_bytes(pickle.dumps(entry, protocol=protocol))
        written[name] = entry
    meta = {
        b"fine_label_names": [f"class_{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"super_{i}".encode() for i in range(20)],
    }
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return written


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_python3_pickles_of_the_real_key_set_load(protocol: int, tmp_path: Path) -> None:
    written = write_real_key_set(tmp_path / "cifar-100-python", protocol, np.random.default_rng(protocol))
    for name, train in (("train", True), ("test", False)):
        dataset = build_dataset("cifar100", tmp_path, train=train, verify=False, augment=False)
        entry = written[name]
        images = entry[b"data"].reshape(-1, 3, 32, 32)
        assert dataset.labels.tolist() == entry[b"fine_labels"]
        assert dataset.classes == [f"class_{i}" for i in range(100)]
        for index in (0, len(dataset) - 1):
            assert torch.equal(dataset.raw_image(index), torch.from_numpy(images[index]))


def test_a_file_that_is_not_a_cifar_batch_names_the_file_and_the_key(cifar_root: Path) -> None:
    path = cifar_root / "cifar-100-python" / "test"
    path.write_bytes(pickle.dumps({b"pixels": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 1]}))
    with pytest.raises(DataError, match=f"file {path} has no 'data' key \\(it has 'pixels', 'fine_labels'\\)"):
        build_dataset("cifar100", cifar_root, train=False, verify=False)
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"fine_labels": [0, 1]}))
    with pytest.raises(DataError, match=f"file {path}: 'data' is a float32 array of shape \\(2, 3072\\)"):
        build_dataset("cifar100", cifar_root, train=False, verify=False)


# --- through the command line ---------------------------------------------------------------


def write_recipe(folder: Path, data_root: Path, teacher: Path | None = None) -> Path:
    """A one-epoch resnet8 recipe on ``data_root`` (KD from a resnet8 ``teacher`` when given)."""
    recipe: dict[str, Any] = {
        "student": {"arch": "resnet8"},
        "losses": {"ce": {"weight": 1.0}},
        "data": {"root": str(data_root), "download": False, "verify": False, "batch_size": 50, "num_workers": 0},
        "schedule": {"epochs": 1, "milestones": []},
        "output_dir": str(folder / "runs"),
    }
    if teacher is not None:
        recipe["teacher"] = {"arch": "resnet8", "checkpoint": str(teacher)}
        recipe["losses"] = {"ce": {"weight": 0.1}, "kd": {"weight": 0.9, "temperature": 4}}
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


@pytest.mark.slow
@pytest.mark.e2e
def test_distill_train_refuses_a_cifar_file_that_would_run_code(cifar_root: Path, tmp_path: Path) -> None:
    """A real process: exit 2, one line naming the file and the global, no traceback, no marker."""
    marker = tmp_path / "code-ran"
    path = cifar_root / "cifar-100-python" / "train"
    plant(path, marker)
    recipe = write_recipe(tmp_path, cifar_root)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "distill", "train", str(recipe), "--run-dir", str(tmp_path / "run"), "--no-tensorboard"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path, check=False)
    assert result.returncode == EXIT_USER_ERROR, result.stderr
    line = one_line(result.stderr)
    assert line.startswith(f"distill train: error: CIFAR-100 file {path} was refused")
    assert SYSTEM in line and "nothing in it was run" in line
    assert not marker.exists(), "distill train ran the code pickled in the CIFAR file"
    assert not (tmp_path / "run").exists()


@pytest.mark.e2e
def test_distill_train_refuses_a_checkpoint_that_would_run_code(
    cifar_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "code-ran"
    checkpoint = tmp_path / "teacher.pth"
    torch.save({"epoch": 240, "model": touch(marker)}, checkpoint)
    recipe = write_recipe(tmp_path, cifar_root, teacher=checkpoint)
    code = main(["train", str(recipe), "--run-dir", str(tmp_path / "run"), "--no-tensorboard"])
    line = one_line(capsys.readouterr().err)
    assert code == EXIT_USER_ERROR
    assert f"checkpoint {checkpoint} was refused" in line and SYSTEM in line and "nothing in it was executed" in line
    assert not marker.exists(), "distill train ran the code pickled in the checkpoint"


# --- checksum mismatches ----------------------------------------------------------------------


def test_a_copy_failing_the_md5_is_a_checksum_mismatch_even_with_download_on(
    cifar_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every shipped recipe says download: true; the files are there, so nothing is downloaded over them."""
    calls = []

    def offline(*args: Any, **kwargs: Any) -> None:
        calls.append(args)
        raise URLError("no network")

    monkeypatch.setattr("distill.data.cifar.download_and_extract_archive", offline)
    with pytest.raises(DataError) as info:
        build_dataset("cifar100", cifar_root, train=True, download=True, verify=True)
    message = str(info.value)
    assert f"CIFAR-100 in {cifar_root / 'cifar-100-python'}: checksum mismatch: train, test, meta" in message
    assert "could not download" not in message and "data.download: false" not in message
    assert "data.verify: false" in message, "what to do with a copy you made yourself"
    assert f"delete {cifar_root / 'cifar-100-python'} and set data.download: true" in message, "and with a damaged one"
    assert calls == [], "the user's files were about to be downloaded over"


def write_teacher_manifest(folder: Path) -> Path:
    """A one-teacher manifest (``small``, a random resnet8) with its checkpoint in place."""
    folder.mkdir(parents=True)
    path = folder / "cifar100.yaml"
    path.write_text(
        "version: 1\ndataset: cifar100\nsources:\n  - name: nowhere\n    kind: file\n"
        '    url: "http://127.0.0.1:9/{file}"\nteachers:\n  small:\n    arch: resnet8\n'
        "    reference_top1: 50.0\n    file: small/ckpt_epoch_240.pth\n    sha256: \"\"\n"
        "    recipe: recipes/small.yaml\n    trained_runs: trained/small\n",
        encoding="utf-8",
    )
    checkpoint = folder / "small" / "ckpt_epoch_240.pth"
    checkpoint.parent.mkdir()
    torch.save({"epoch": 240, "model": create_model("resnet8").state_dict()}, checkpoint)
    return path


@pytest.mark.e2e
def test_teachers_verify_names_its_own_flags_not_recipe_keys(
    cifar_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = write_teacher_manifest(tmp_path / "teachers")
    verify = ["teachers", "verify", "small", "--manifest", str(manifest), "--data-root"]
    assert main([*verify, str(cifar_root)]) == EXIT_USER_ERROR
    line = one_line(capsys.readouterr().err)
    assert "checksum mismatch: train, test, meta" in line
    assert "pass --no-verify-data" in line and "data.verify" not in line and "data.download" not in line
    assert "download cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html" in line

    inside = cifar_root / "cifar-100-python"
    assert main([*verify, str(inside), "--no-verify-data"]) == EXIT_USER_ERROR
    line = one_line(capsys.readouterr().err)
    assert f"--data-root should be the directory containing cifar-100-python/: {cifar_root}" in line
    assert "data.root" not in line and "data.download" not in line


# --- distill fake-cifar -------------------------------------------------------------------------


def fake_cifar_cli(root: Path, *extra: str) -> list[str]:
    return ["fake-cifar", str(root), "--train", "100", "--test", "100", *extra]


@pytest.mark.e2e
def test_fake_cifar_does_not_overwrite_a_dataset_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "cifar-100-python"
    assert main(fake_cifar_cli(tmp_path, "--seed", "1")) == 0
    first = contents(folder)
    capsys.readouterr()
    assert main(fake_cifar_cli(tmp_path, "--seed", "2")) == EXIT_USER_ERROR
    line = one_line(capsys.readouterr().err)
    assert f"{folder} already holds CIFAR files (train, test, meta)" in line and "pass --force" in line
    assert contents(folder) == first, "the refused run changed the files"
    assert main(fake_cifar_cli(tmp_path, "--seed", "2", "--force")) == 0
    assert contents(folder) != first
    with pytest.raises(ExistingDatasetError, match="overwrite=True"):
        write_fake_cifar(tmp_path, train_size=100, test_size=100)


@pytest.mark.e2e
def test_fake_cifar_never_overwrites_files_matching_the_official_md5(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "cifar-100-python"
    assert main(fake_cifar_cli(tmp_path)) == 0
    before = contents(folder)
    # Stand in for the real release: the official md5 of "train" becomes that of the file on disk.
    official = [(name, md5(folder / name) if name == "train" else digest) for name, digest in fake_cifar.OFFICIAL_FILES[100][1]]
    monkeypatch.setitem(fake_cifar.OFFICIAL_FILES, 100, ("cifar-100-python", official))
    capsys.readouterr()
    assert main(fake_cifar_cli(tmp_path, "--seed", "5", "--force")) == EXIT_USER_ERROR
    line = one_line(capsys.readouterr().err)
    assert f"{folder} holds the real CIFAR: train matches the official MD5" in line and "not even with --force" in line
    assert contents(folder) == before
