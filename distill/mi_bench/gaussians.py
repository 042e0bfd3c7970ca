"""The toy task of the ML-CPC paper's first experiment: correlated Gaussians on a staircase of MI levels.

Song & Ermon, "Multi-label Contrastive Predictive Coding" (NeurIPS 2020),
following Poole et al., "On Variational Bounds of Mutual Information" (ICML 2019)
and the ``mutual-information-estimation/utils.py`` of github.com/jiamings/ml-cpc
(objectives.md §1.7):

* x ~ N(0, I_d) and y = ρx + sqrt(1 − ρ²)·ε with ε ~ N(0, I_d), d = 20;
* optionally the "cubic" variant y ← y³ (elementwise, invertible: same MI);
* I(X; Y) = −(d/2)·log(1 − ρ²) in closed form, so ρ = sqrt(1 − exp(−2I/d));
* the true MI climbs a staircase 2 → 4 → 6 → 8 → 10 nats during training.

Everything here is a pure function of its arguments; randomness comes from an
explicit :class:`torch.Generator`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "PAPER_LEVELS",
    "PAPER_DIM",
    "log_density_ratio",
    "mi_to_rho",
    "rho_to_mi",
    "sample_correlated_gaussians",
    "staircase",
]

PAPER_LEVELS: tuple[float, ...] = (2.0, 4.0, 6.0, 8.0, 10.0)
"""The true MI (nats) of the paper's five stairs."""

PAPER_DIM = 20
"""The dimension d of x and of y in the paper."""


def rho_to_mi(rho: float, dim: int) -> float:
    """I(X; Y) = −(d/2)·log(1 − ρ²) for y = ρx + sqrt(1 − ρ²)ε in d dimensions (nats).

    The d coordinates are independent pairs, each a bivariate Gaussian with
    correlation ρ and MI −½·log(1 − ρ²).
    """
    if not 0.0 <= rho < 1.0:
        raise ValueError(f"rho must lie in [0, 1), got {rho!r}")
    return -0.5 * dim * math.log1p(-rho * rho)


def mi_to_rho(mi: float, dim: int) -> float:
    """The correlation ρ = sqrt(1 − exp(−2I/d)) at which the d-dimensional pair has MI ``mi`` nats."""
    if not mi >= 0.0:  # also rejects NaN
        raise ValueError(f"the mutual information must be ≥ 0 nats, got {mi!r}")
    if dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    return math.sqrt(-math.expm1(-2.0 * mi / dim))


def sample_correlated_gaussians(
    batch_size: int,
    dim: int,
    rho: float,
    generator: torch.Generator | None = None,
    cubic: bool = False,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """n pairs (x_i, y_i): x ~ N(0, I_d), y = ρx + sqrt(1 − ρ²)ε, and y ← y³ when ``cubic``.

    Drawn on the CPU from ``generator`` (so a seed gives the same numbers on any
    device); move them to the training device afterwards. x is drawn before ε,
    as in the reference ``sample_correlated_gaussian``.

    Returns:
        x and y, each of shape [batch_size, dim].
    """
    x = torch.randn(batch_size, dim, generator=generator, dtype=dtype)
    eps = torch.randn(batch_size, dim, generator=generator, dtype=dtype)
    y = rho * x + math.sqrt(1.0 - rho * rho) * eps
    return x, (y**3 if cubic else y)


def log_density_ratio(x: Tensor, y: Tensor, rho: float, cubic: bool = False) -> Tensor:
    """log r(x_i, y_j) = log p(x_i, y_j) / (p(x_i) p(y_j)) for every pair: the [n, n] optimal log-critic.

    For the Gaussian pair (objectives.md §1.7),

        log r(x, y) = Σ_k [ −(y_k − ρx_k)² / (2(1 − ρ²)) + y_k²/2 ] − (d/2)·log(1 − ρ²),

    the log of the conditional density of y given x over the marginal of y. In
    the cubic variant y = u³ with u Gaussian; the Jacobian of the map cancels in
    the ratio, so log r is the same formula applied to u = y^{1/3}.

    Its mean over the joint (the diagonal) is the true MI, and its exponential
    has mean 1 over the product of marginals (the off-diagonal entries).

    Args:
        x: [n, d] samples of X.
        y: [n, d] samples of Y (paired with x row by row).
        rho: the correlation the pairs were drawn with.
        cubic: whether y was cubed.

    Returns:
        [n, n] tensor, entry [i, j] = log r(x_i, y_j); the positives lie on the diagonal.
    """
    if cubic:
        y = torch.sign(y) * y.abs().pow(1.0 / 3.0)
    one_minus = 1.0 - rho * rho
    diff = y.unsqueeze(0) - rho * x.unsqueeze(1)  # [i, j, k] = y_jk − ρ x_ik
    quadratic = -(diff * diff).sum(dim=2) / (2.0 * one_minus) + 0.5 * (y * y).sum(dim=1).unsqueeze(0)
    return quadratic - 0.5 * x.shape[1] * math.log(one_minus)


def staircase(levels: Sequence[float], total_steps: int) -> list[float]:
    """The true MI at each of ``total_steps`` training steps: ``levels`` in order, in equal blocks.

    Step s gets ``levels[s·L // total_steps]`` for L levels, so the blocks differ
    in length by at most one step. With the paper's levels and 20,000 steps this
    is its schedule, 4,000 steps per stair, except for one step: the reference
    ``mi_schedule`` rounds ``linspace(0.5, 5.5)``, and numpy rounds 0.5 to 0, so
    its very first step has MI 0 (objectives.md §1.7). Here it has the first level.
    """
    if not levels:
        raise ValueError("the staircase needs at least one MI level")
    if total_steps < len(levels):
        raise ValueError(
            f"{total_steps} step(s) cannot cover {len(levels)} MI levels: give at least one step per level"
        )
    count = len(levels)
    return [float(levels[step * count // total_steps]) for step in range(total_steps)]
