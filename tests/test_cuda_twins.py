"""The CPU halves of tests/test_cuda_paths.py, run without a GPU: the shared step function and its premise."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cuda_twins import (
    ALL_NEGATIVES,
    TWIN_TRAIN_SIZE,
    assert_rows_close,
    build_trainer,
    cpu_twin,
    crd_reference_step,
    max_weight_difference,
    run_steps,
    twin_steps,
)

from distill.data import write_fake_cifar
from distill.losses.contrastive.negatives import fewest_eligible


@pytest.fixture(scope="module")
def twin_cifar(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("twin_cifar")
    write_fake_cifar(root, num_classes=100, train_size=TWIN_TRAIN_SIZE, test_size=100, seed=0)
    return root


def test_the_twins_take_every_eligible_negative():
    """Two images per class: K = 198 is the fewest eligible entries of any anchor, so the draw takes them all."""
    pool = torch.arange(TWIN_TRAIN_SIZE) % 100
    assert fewest_eligible(pool, "exact", TWIN_TRAIN_SIZE) == ALL_NEGATIVES == 198


@pytest.mark.slow
@pytest.mark.e2e
def test_the_cpu_twin_in_a_child_process_equals_the_same_steps_here(twin_cifar, tiny_teacher, tmp_path):
    """The CUDA test's comparison, CPU against CPU: the child's CRD steps equal this process's bit for bit."""
    here = twin_steps("crd", twin_cifar, tiny_teacher)
    child = cpu_twin("crd", twin_cifar, tiny_teacher, tmp_path / "cpu.pt")
    assert here["device"] == child["device"] == "cpu"
    assert here["rows"] == child["rows"] and max_weight_difference(here["student"], child["student"]) == 0.0
    assert set(here["buffers"].values()) == {"torch.float32"} and set(here["dtypes"].values()) == {"torch.float32"}


@pytest.mark.slow
@pytest.mark.parametrize(("method", "negatives", "same"), [("crd", ALL_NEGATIVES, True), ("crd", 64, False), ("ml_cpc", ALL_NEGATIVES, True)])
def test_another_negatives_stream_changes_nothing_only_when_every_eligible_entry_is_taken(
    method, negatives, same, twin_cifar, tiny_teacher
):
    """The premise of comparing CRD/ML-CPC across devices: with K = every eligible entry, a generator that draws
    other numbers (as CUDA's does) gives the same steps (terms within 1e-5); with K = 64 it does not."""
    key = f"losses.{method}.num_negatives={negatives}"
    reference = twin_steps(method, twin_cifar, tiny_teacher, key)
    trainer = build_trainer(method, twin_cifar, tiny_teacher, key)
    trainer.unwrapped.losses[method]._generator_seed += 12345  # another stream, as another device's generator
    other = run_steps(trainer)
    if same:
        assert_rows_close(other["rows"], reference["rows"], rel=1e-5, abs_=1e-5)
    else:
        with pytest.raises(AssertionError):
            assert_rows_close(other["rows"], reference["rows"], rel=1e-5, abs_=1e-5)


def test_assert_rows_close_tells_which_term_differs():
    assert_rows_close([{"ce": 1.0}], [{"ce": 1.0005}], rel=1e-3, abs_=0.0)
    with pytest.raises(AssertionError, match="step 1 ce"):
        assert_rows_close([{"ce": 1.0}], [{"ce": 1.01}], rel=1e-3, abs_=0.0)


def test_the_reference_size_crd_step_runs_on_the_cpu_at_small_sizes():
    """The peak-memory step's code on the CPU (batch 8, 1000 bank rows): finite, float32 CRD term, no CUDA figure."""
    result = crd_reference_step(torch.device("cpu"), batch_size=8, dataset_size=1000)
    assert torch.isfinite(torch.tensor(result["total"])) and result["crd_dtype"] == "torch.float32"
    assert result["peak_bytes"] is None
