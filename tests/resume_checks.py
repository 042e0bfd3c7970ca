"""What "resumed exactly" means in the tests: the final checkpoint and the metrics equal an uninterrupted run's."""

from __future__ import annotations

from pathlib import Path

import torch

from distill.engine.metrics import read_metrics

TIMING_KEYS = ("train/images_per_s", "time/epoch_s")


def final_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)


def assert_same_tensors(expected, actual, path: str = "") -> None:
    """Every tensor in two nested structures is bit-identical; other leaves equal."""
    if isinstance(expected, dict):
        assert set(expected) == set(actual), path
        for key in expected:
            assert_same_tensors(expected[key], actual[key], f"{path}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(expected) == len(actual), path
        for index, (a, b) in enumerate(zip(expected, actual)):
            assert_same_tensors(a, b, f"{path}[{index}]")
    elif isinstance(expected, torch.Tensor):
        assert torch.equal(expected, actual), f"{path} differs"
    else:
        assert expected == actual or (expected != expected and actual != actual), path


def assert_same_run(expected_dir: Path, actual_dir: Path) -> None:
    expected, actual = final_state(expected_dir), final_state(actual_dir)
    for key in ("model", "losses", "optimizer", "scheduler", "epoch", "state"):
        assert_same_tensors(expected[key], actual[key], key)

    def without_timing(rows):
        return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]

    assert without_timing(read_metrics(actual_dir)) == without_timing(read_metrics(expected_dir))
    assert (actual_dir / "summary.json").is_file()
