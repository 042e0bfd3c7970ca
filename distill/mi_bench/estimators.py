"""The MI bench's estimators: a table of names over the pure functions that the distillation losses use.

Nothing is re-implemented here. Each entry points at a function of
:mod:`distill.losses.contrastive.estimators`, which take ``logits`` of shape
[B, M] with **column 0 the positive**:

========  ===============================================  =======================
name      function                                         ceiling (M candidates)
========  ===============================================  =======================
cpc       ``cpc_bound(logits, α)``: CPC/InfoNCE, α-CPC     log(M/α)
ml-cpc    ``ml_cpc_bound(logits, α)``: ML-CPC, α-ML-CPC    log(M/α)
nwj       ``nwj_bound(logits)``: NWJ                       none
nce       ``log K − nce_loss(logits, log Z = 0, N = 1)``   log K, K = M − 1
========  ===============================================  =======================

An estimator is written ``NAME`` or ``NAME:ALPHA`` (``cpc:0.01``, ``ml-cpc:0.1``);
α defaults to 1 and only the CPC family takes one. ``infonce`` is another name for ``cpc``.

CRD's NCE is an MI estimate on the same scores. In deriving their objective,
Tian et al. (CRD, ICLR 2020) show that for **any** classifier h with values
in (0, 1), with K negatives per positive,

    I(X;Y) ≥ log K + E_P[log h] + K·E_Q[log(1 − h)].

(The Bayes classifier h* = r/(r + K), r the density ratio, has log h* ≤ log r − log K,
so I ≥ log K + E_P[log h*]; adding K·E_Q[log(1 − h*)] ≤ 0 lowers the right side,
and h* maximises E_P[log h] + K·E_Q[log(1 − h)] over h.) With h = e^s/(e^s + K),
which is CRD's h = P/(P + K·P_n) for log Z = 0 and N = 1 (so P_n = 1), the right
side is exactly ``log K − nce_loss(logits, 0.0, 1)``, and maximising it is
minimising CRD's loss. Its optimal critic is log r; it never exceeds log K, and
even with that critic it sits about 1 nat below the MI at low MI (the added
K·E_Q[log(1 − h*)] ≈ −E_Q[r] = −1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from distill.losses.contrastive.estimators import (
    cpc_bound,
    cpc_ceiling,
    ml_cpc_bound,
    ml_cpc_min_valid_alpha,
    nce_loss,
    nwj_bound,
)
from distill.losses.contrastive.in_batch import diagonal_first
from distill.mi_bench.errors import MIBenchError
from distill.registry import Registry

__all__ = [
    "DEFAULT_ESTIMATORS",
    "ESTIMATORS",
    "EstimatorFamily",
    "EstimatorSpec",
    "pairwise_logits",
    "parse_estimator",
    "parse_estimators",
]


def _nce_bound(logits: Tensor) -> Tensor:
    """CRD's NCE lower bound log K − L_NCE (Tian et al., ICLR 2020) with h = e^s/(e^s + K).

    log K is cast to the loss's dtype rounded *down*, so that the bound (log K
    minus a non-negative loss) cannot round above its ceiling log K.
    """
    loss = nce_loss(logits, 0.0, 1)
    log_k = math.log(logits.shape[1] - 1)
    ceiling = torch.tensor(log_k, dtype=loss.dtype)
    if ceiling.item() > log_k:
        ceiling = torch.nextafter(ceiling, torch.tensor(-math.inf, dtype=loss.dtype))
    return ceiling.to(loss.device) - loss


def _ml_cpc_optimal(log_ratio: Tensor, alpha: float) -> Tensor:
    """f*_α = log r − log((α/M)·r + (M − α)/M): the large-batch optimum of α-ML-CPC (objectives.md §1.6)."""
    m = log_ratio.shape[1]
    return log_ratio - torch.logaddexp(log_ratio + math.log(alpha / m), torch.full_like(log_ratio, math.log((m - alpha) / m)))


@dataclass(frozen=True)
class EstimatorFamily:
    """One kind of estimator: its bound, its ceiling and its optimal critic, all on [B, M] logits."""

    name: str
    label: str
    bound: Callable[[Tensor, float], Tensor]
    ceiling: Callable[[int, float], float]
    optimal_logits: Callable[[Tensor, float], Tensor]
    takes_alpha: bool


ESTIMATORS: Registry[EstimatorFamily] = Registry("MI estimator")
for _family in (
    EstimatorFamily(
        name="cpc",
        label="CPC",
        bound=cpc_bound,
        ceiling=cpc_ceiling,
        optimal_logits=lambda log_ratio, alpha: log_ratio,
        takes_alpha=True,
    ),
    EstimatorFamily(
        name="ml-cpc",
        label="ML-CPC",
        bound=ml_cpc_bound,
        ceiling=cpc_ceiling,
        optimal_logits=_ml_cpc_optimal,
        takes_alpha=True,
    ),
    EstimatorFamily(
        name="nwj",
        label="NWJ",
        bound=lambda logits, alpha: nwj_bound(logits),
        ceiling=lambda m, alpha: math.inf,
        optimal_logits=lambda log_ratio, alpha: 1.0 + log_ratio,
        takes_alpha=False,
    ),
    EstimatorFamily(
        name="nce",
        label="NCE (CRD)",
        bound=lambda logits, alpha: _nce_bound(logits),
        ceiling=lambda m, alpha: math.log(m - 1),
        optimal_logits=lambda log_ratio, alpha: log_ratio,
        takes_alpha=False,
    ),
):
    ESTIMATORS.register(_family.name)(_family)
ESTIMATORS.register("infonce")(ESTIMATORS.get("cpc"))  # InfoNCE is CPC's other name (Poole et al. 2019)


@dataclass(frozen=True)
class EstimatorSpec:
    """An estimator family with its α: what one curve of the bench trains and plots."""

    family: EstimatorFamily
    alpha: float = 1.0

    @property
    def name(self) -> str:
        """The canonical ``NAME`` or ``NAME:ALPHA`` (as in the CSV and on the command line)."""
        return self.family.name if self.alpha == 1.0 else f"{self.family.name}:{self.alpha:g}"

    @property
    def label(self) -> str:
        """The legend entry: ``CPC``, ``α-CPC (α=0.01)``, ``ML-CPC``, ``α-ML-CPC (α=0.1)``, ``NWJ``."""
        if self.alpha == 1.0:
            return self.family.label
        return f"α-{self.family.label} (α={self.alpha:g})"

    def bound(self, logits: Tensor) -> Tensor:
        """The estimate on [B, M] logits (column 0 the positive): a 0-d tensor to maximise."""
        return self.family.bound(logits, self.alpha)

    def ceiling(self, num_candidates: int) -> float:
        """The largest value the estimate can take with M candidates per anchor (``inf``: none)."""
        return self.family.ceiling(num_candidates, self.alpha)

    def optimal_logits(self, log_ratio: Tensor) -> Tensor:
        """The critic this estimator is best with, from the exact log ratio in [B, M] layout.

        log r for CPC (optimal at α = 1; objectives.md §1.7 also scores α-CPC with
        it) and NCE, 1 + log r for NWJ, and the large-batch optimum f*_α for α-ML-CPC.
        """
        return self.family.optimal_logits(log_ratio, self.alpha)

    def is_lower_bound(self, batch_size: int, num_candidates: int) -> bool:
        """Whether the estimate is an MI lower bound in expectation for this α (objectives.md §1.3, §1.6).

        α-CPC: for α ∈ [1, M] (derived); α-ML-CPC: for α ≥ ``ml_cpc_min_valid_alpha``
        (derived); NWJ and NCE: always.
        """
        if self.family.name == "cpc":
            return self.alpha >= 1.0
        if self.family.name == "ml-cpc":
            return self.alpha >= ml_cpc_min_valid_alpha(batch_size, num_candidates)
        return True


DEFAULT_ESTIMATORS: tuple[str, ...] = ("cpc", "cpc:0.01", "ml-cpc", "ml-cpc:0.1", "ml-cpc:0.01", "nwj", "nce")
"""The curves drawn by default: the paper's CPC, α-CPC and ML-CPC panels, plus NWJ and CRD's NCE."""


def parse_estimator(text: str) -> EstimatorSpec:
    """``NAME`` or ``NAME:ALPHA`` → :class:`EstimatorSpec`.

    Raises:
        UnknownNameError: NAME is not an estimator (with the closest names).
        MIBenchError: α is malformed, not positive, or given to an estimator that takes none.
    """
    name, sep, alpha_text = text.strip().partition(":")
    family = ESTIMATORS.get(name.strip())
    if not sep:
        return EstimatorSpec(family)
    if not family.takes_alpha:
        raise MIBenchError(
            f"estimator {text!r}: {family.name} takes no α; write {family.name!r} "
            f"(only {', '.join(n for n in ESTIMATORS if ESTIMATORS.get(n).takes_alpha)} take NAME:ALPHA)"
        )
    try:
        alpha = float(alpha_text)
    except ValueError:
        raise MIBenchError(f"estimator {text!r}: α must be a number, as in '{family.name}:0.01'") from None
    if not (alpha > 0.0 and math.isfinite(alpha)):
        raise MIBenchError(f"estimator {text!r}: α must be a positive number (the positive's weight), got {alpha_text!r}")
    return EstimatorSpec(family, alpha)


def parse_estimators(items: Sequence[str]) -> list[EstimatorSpec]:
    """Several specs, in order, each once; an empty list or a repeated estimator is an error."""
    specs = [parse_estimator(item) for item in items if item.strip()]
    if not specs:
        raise MIBenchError(f"no estimator given; choose from {', '.join(ESTIMATORS)} (e.g. {','.join(DEFAULT_ESTIMATORS)})")
    names = [spec.name for spec in specs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise MIBenchError(f"estimator(s) given more than once: {', '.join(repeated)}")
    return specs


def pairwise_logits(scores: Tensor) -> Tensor:
    """The [n, n] critic matrix S[i, j] = f(x_i, y_j) in the estimators' layout: the positive S[i, i] in column 0.

    Row i becomes (S[i, i], S[i, i+1], …, S[i, n−1], S[i, 0], …, S[i, i−1]): each
    row rotated left by i, so column 0 holds the diagonal and columns 1..n−1 the
    n − 1 in-batch negatives y_j, j ≠ i (their order does not matter to any
    estimator). Differentiable (a gather). This is the layout of the contrastive
    losses' in-batch negatives (``bank: batch``), so the bench's ceilings (log n for
    CPC, log(n/α) for the α-family) are theirs with n = B_global.
    """
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"scores must be a square [n, n] matrix with the positives on the diagonal, got {tuple(scores.shape)}")
    return diagonal_first(scores)
