"""Chi-square p-values shared by the statistical tests (device loader draws, negatives draws)."""

from __future__ import annotations

import torch


def chi_square_p(statistic: torch.Tensor | float, dof: int) -> float:
    """Upper-tail p-value of a chi-square statistic with ``dof`` degrees of freedom."""
    statistic = torch.as_tensor(statistic, dtype=torch.float64)
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), statistic / 2))


def homogeneity_p(counts_a: torch.Tensor, counts_b: torch.Tensor) -> float:
    """p-value of the chi-square test that two count vectors come from one distribution."""
    table = torch.stack([counts_a, counts_b]).double()
    table = table[:, table.sum(0) > 0]
    expected = table.sum(1, keepdim=True) * table.sum(0, keepdim=True) / table.sum()
    statistic = ((table - expected) ** 2 / expected).sum()
    return chi_square_p(statistic, table.shape[1] - 1)


def goodness_of_fit_p(counts: torch.Tensor) -> float:
    """p-value of the chi-square test that ``counts`` come from the uniform distribution over their cells."""
    counts = counts.double()
    expected = counts.sum() / counts.numel()
    return chi_square_p(((counts - expected) ** 2 / expected).sum(), counts.numel() - 1)
