"""Logit standardization (LS) against a hand computation and its invariances."""

from __future__ import annotations

import math

import pytest
import torch

from distill.losses.logit_standardization import standardize_logits


def test_a_hand_worked_row():
    row = torch.tensor([[1.0, 2.0, 3.0, 6.0]])  # mean 3, squared deviations 4+1+0+9 = 14
    unbiased = math.sqrt(14 / 3)
    expected = torch.tensor([[-2.0, -1.0, 0.0, 3.0]]) / (1e-7 + unbiased)
    assert torch.allclose(standardize_logits(row), expected, atol=1e-7)
    population = torch.tensor([[-2.0, -1.0, 0.0, 3.0]]) / math.sqrt(14 / 4)
    assert torch.allclose(standardize_logits(row, unbiased=False, eps=0.0), population, atol=1e-7)


@pytest.mark.parametrize("shift, scale", [(0.0, 1.0), (5.0, 1.0), (-3.0, 2.5), (100.0, 0.1)])
def test_invariant_to_a_shift_and_a_positive_scale_of_each_row(shift, scale):
    torch.manual_seed(0)
    logits = torch.randn(8, 100, dtype=torch.float64)
    moved = logits * scale + shift
    assert torch.allclose(standardize_logits(moved, eps=0.0), standardize_logits(logits, eps=0.0), atol=1e-10)


def test_each_row_has_zero_mean_and_unit_standard_deviation():
    torch.manual_seed(1)
    z = standardize_logits(torch.randn(16, 100, dtype=torch.float64) * 7 + 3, eps=0.0)
    assert torch.allclose(z.mean(dim=1), torch.zeros(16, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(z.std(dim=1), torch.ones(16, dtype=torch.float64), atol=1e-12)
