"""Contrastive estimators behind CRD, CPC (InfoNCE) and ML-CPC distillation.

Small pure functions: no state, no memory bank, no projection heads. They all
take ``logits``, a float tensor of shape ``[B, M]``:

* row i is one anchor (B anchors);
* its M = K + 1 candidates sit in the columns; **column 0 is the positive**,
  columns 1..K are the K negatives;
* the entries are log-scores s_ik = <v_i, m_ik> / T, i.e. the log of CRD's
  ``exp(<v, m>/T)`` *before* its division by the normaliser Z.

Everything is computed in log space (``logsumexp``, ``softplus``), so scores of
any finite size (1e4 and beyond) give finite results wherever the mathematics is
finite. Half and bfloat16 inputs are upcast to float32; float32 and float64 are
kept, and the result has the compute dtype.

The functions, with the paper and equation each implements:

* :func:`log_normaliser_from_batch`: CRD's normaliser Z (Tian et al., "Contrastive
  Representation Distillation", ICLR 2020; RepDistiller ``crd/memory.py``).
* :func:`nce_loss`: CRD's binary NCE loss ("Eq. 18" in RepDistiller's
  ``crd/criterion.py``).
* :func:`cpc_bound`: α-CPC; α = 1 is CPC / InfoNCE (Oord et al., "Representation
  Learning with Contrastive Predictive Coding", 2018) and α ≠ 1 the re-weighted
  CPC of Song & Ermon, "Multi-label Contrastive Predictive Coding", NeurIPS 2020.
* :func:`ml_cpc_bound`: ML-CPC and α-ML-CPC (Song & Ermon, NeurIPS 2020).
* :func:`cpc_ceiling`, :func:`ml_cpc_min_valid_alpha`: the ceiling log(M/α) and
  the smallest α for which α-ML-CPC is still a lower bound (a derived range).
* :func:`nwj_bound`: the NWJ bound (Nguyen, Wainwright & Jordan, "Estimating
  Divergence Functionals and the Likelihood Ratio by Convex Risk Minimization",
  IEEE Trans. Inf. Theory 2010), which has no log M ceiling.

The distillation losses are the *negatives* of the bounds: ``-cpc_bound(...)``
and ``-ml_cpc_bound(...)``.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "cpc_bound",
    "cpc_ceiling",
    "log_normaliser_from_batch",
    "ml_cpc_bound",
    "ml_cpc_min_valid_alpha",
    "nce_loss",
    "nwj_bound",
]


# ----------------------------------------------------------------- helpers


def _as_compute(logits: Tensor, name: str = "logits") -> Tensor:
    """Check the [B, M] layout (M ≥ 2) and upcast half/bfloat16 to float32."""
    if not isinstance(logits, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(
            f"{name} must have shape [B, M] (anchors × candidates, column 0 the positive), "
            f"got shape {tuple(logits.shape)}"
        )
    batch, num_candidates = logits.shape
    if batch < 1:
        raise ValueError(f"{name} must hold at least one anchor (row), got shape {tuple(logits.shape)}")
    if num_candidates < 2:
        raise ValueError(
            f"{name} has M={num_candidates} candidate per anchor: a contrastive estimator needs the "
            "positive (column 0) and at least one negative, so M = K + 1 must be ≥ 2"
        )
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {logits.dtype}")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return logits


def _check_alpha(alpha: float, num_candidates: int) -> float:
    """α must lie in (0, M] so that both weights α and β = (M − α)/(M − 1) are ≥ 0 and α > 0."""
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise TypeError(f"alpha must be a real number, got {alpha!r}") from None
    if not (0.0 < alpha <= num_candidates):  # also rejects NaN
        raise ValueError(
            f"alpha must lie in (0, M] = (0, {num_candidates}] (the negatives' weight "
            f"β = (M − α)/(M − 1) must be ≥ 0 and the positive's weight α > 0), got {alpha}"
        )
    return alpha


def _check_dataset_size(dataset_size: int) -> int:
    if isinstance(dataset_size, bool) or int(dataset_size) != dataset_size or dataset_size < 1:
        raise ValueError(f"dataset_size must be a positive integer, got {dataset_size!r}")
    return int(dataset_size)


def _log_beta_over_alpha(alpha: float, num_candidates: int) -> float:
    """log(β/α) with β = (M − α)/(M − 1); −inf when α = M (β = 0: negatives carry no weight)."""
    beta = (num_candidates - alpha) / (num_candidates - 1)
    return math.log(beta / alpha) if beta > 0 else -math.inf


def _ceiling_tensor(num_candidates: int, alpha: float, like: Tensor) -> Tensor:
    """log(M/α) as a 0-d tensor of ``like``'s dtype and device, rounded *down* if the cast rounded up.

    The bounds are computed as ``ceiling − (non-negative terms)``; rounding the
    constant down makes ``bound ≤ log(M/α)`` hold exactly in floating point
    (compared against the float64 value), not just up to the last bit. Made once
    per (M, α, dtype, device) and then reused: a step copies nothing from the host
    (which a CUDA graph could not capture).
    """
    return _ceiling_constant(num_candidates, float(alpha), like.dtype, like.device)


@functools.lru_cache(maxsize=64)
@torch.inference_mode(False)  # an ordinary tensor even if first made under inference mode: it is reused everywhere
def _ceiling_constant(num_candidates: int, alpha: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    value = cpc_ceiling(num_candidates, alpha)
    ceiling = torch.tensor(value, dtype=dtype)
    if ceiling.item() > value:
        ceiling = torch.nextafter(ceiling, torch.tensor(-math.inf, dtype=dtype))
    return ceiling.to(device)


# ----------------------------------------------------------------- CRD: Z and NCE


def log_normaliser_from_batch(logits: Tensor, dataset_size: int) -> Tensor:
    """log Z for CRD's NCE, estimated from one batch: Z = N · mean_{i,k} exp(s_ik).

    What: the log of CRD's normaliser, with N = ``dataset_size`` and the mean over
    all B·M entries, positives included, computed as
    ``log N + logsumexp(s) − log(B·M)`` so that large scores cannot overflow.

    Why: CRD (Tian et al., ICLR 2020) turns the exponentiated scores into
    probabilities P = exp(s)/Z for its binary NCE loss. Z is a Monte-Carlo
    estimate of the partition function over the N training samples (hence the
    factor N). RepDistiller's ``ContrastMemory`` sets it **once**, on the first
    batch, and stores it as a Python number, so it is a constant: the returned
    tensor is detached. Store it and pass it to :func:`nce_loss` on every later
    step. Z only matters for NCE; the CPC-type bounds are invariant to it.

    Args:
        logits: [B, M] log-scores, column 0 the positive.
        dataset_size: N, the number of training samples (50,000 on CIFAR-100).

    Returns:
        0-d tensor, log Z, in the compute dtype (float32 for half/bf16 input).
    """
    s = _as_compute(logits)
    n = _check_dataset_size(dataset_size)
    log_z = math.log(n) + torch.logsumexp(s.detach().reshape(-1), dim=0) - math.log(s.numel())
    return log_z


def nce_loss(logits: Tensor, log_z: Tensor | float, dataset_size: int) -> Tensor:
    """CRD's binary NCE loss for one side (Tian et al., ICLR 2020; "Eq. 18" in RepDistiller).

    What: with x_ik = exp(s_ik − log Z), noise probability P_n = 1/N and
    c = K·P_n (K = M − 1 negatives),

        L = −(1/B) Σ_i [ log( x_i0 / (x_i0 + c) ) + Σ_{k≥1} log( c / (x_ik + c) ) ],

    i.e. a logistic classifier telling the positive (data) from the K negatives
    (noise) with posterior P(data | x) = x / (x + K·P_n). In log space each term
    is a softplus: −log(x/(x+c)) = softplus(log c − log x) and
    −log(c/(x+c)) = softplus(log x − log c). CRD's total is the sum of this loss
    over its two sides (student-anchored and teacher-anchored).

    Difference from the reference: RepDistiller's ``ContrastLoss`` adds
    ε = 1e-7 to both denominators (x + c + ε). This function does not: in log
    space it is not needed for stability. Per term the ε changes the loss by
    log(1 + ε/(x + c)) ≈ ε/c = ε·N/K, so the *gradient* changes only at the
    relative level ε/c (3·10⁻⁷ for CRD's K = 16384, N = 50000). The *value*,
    summed over a row's M terms, moves by a near-constant ≈ M·ε/c ≈ ε·N
    (5·10⁻³ nats at N = 50000: 10⁻⁴ to 10⁻³ of typical loss values, which
    run from ~10 at initialisation down to ~1), so logged loss values are
    that much below the reference's.
    ``tests/test_contrastive_estimators.py`` measures both.

    Args:
        logits: [B, M] log-scores, column 0 the positive.
        log_z: log Z, e.g. from :func:`log_normaliser_from_batch` on the first batch.
        dataset_size: N, which sets P_n = 1/N.

    Returns:
        0-d tensor, the batch-mean loss (the reference returns a 1-element tensor).
    """
    s = _as_compute(logits)
    n = _check_dataset_size(dataset_size)
    if isinstance(log_z, Tensor):
        if log_z.numel() != 1:
            raise ValueError(f"log_z must be a scalar, got shape {tuple(log_z.shape)}")
        log_z = log_z.reshape(()).to(device=s.device, dtype=s.dtype)
    num_negatives = s.shape[1] - 1
    log_c = math.log(num_negatives) - math.log(n)  # log(K · P_n)
    log_x = s - log_z
    positive = F.softplus(log_c - log_x[:, 0])  # −log( x0 / (x0 + c) )
    negatives = F.softplus(log_x[:, 1:] - log_c).sum(dim=1)  # −Σ_k log( c / (xk + c) )
    return (positive + negatives).mean()


# ----------------------------------------------------------------- CPC family


def cpc_ceiling(num_candidates: int, alpha: float = 1.0) -> float:
    """log(M/α): the value no batch can exceed for :func:`cpc_bound` or :func:`ml_cpc_bound`.

    At α = 1 this is the well-known log M limit of InfoNCE (Oord et al., 2018):
    the positive's share of a mean over M non-negative terms that include it is
    at most M. With α < 1 the positive is down-weighted in the normaliser and
    the ceiling rises to log(M/α) (Song & Ermon, NeurIPS 2020, the re-weighted
    CPC and ML-CPC). For ML-CPC, Jensen's inequality adds the batch-wide
    normaliser to the same argument.

    Args:
        num_candidates: M = K + 1 candidates per anchor (≥ 2).
        alpha: the positive's weight, in (0, M].
    """
    m = int(num_candidates)
    if m != num_candidates or m < 2:
        raise ValueError(f"num_candidates must be an integer M = K + 1 ≥ 2, got {num_candidates!r}")
    alpha = _check_alpha(alpha, m)
    return math.log(m / alpha)


def cpc_bound(logits: Tensor, alpha: float = 1.0) -> Tensor:
    """α-CPC estimate of the mutual information; α = 1 is CPC / InfoNCE.

    What (Song & Ermon, NeurIPS 2020, re-weighted CPC; α = 1: Oord et al. 2018,
    the InfoNCE bound): with β = (M − α)/(M − 1),

        mean_i [ s_i0 − log( (α·e^{s_i0} + β·Σ_{k≥1} e^{s_ik}) / M ) ].

    Each row has its own normaliser. The weights α and K·β add up to M, so
    all-equal scores give exactly 0. The value is computed as
    log(M/α) − softplus( log(β/α) + logsumexp_k(s_ik − s_i0) ), the same
    quantity written so that it cannot overflow and cannot round above the
    ceiling log(M/α) (:func:`cpc_ceiling`).

    Why: the CPC loss ``-cpc_bound(logits)`` is M-way softmax cross-entropy
    with the positive as the target, minus log M. α = 1 is a lower bound on the
    MI, capped at log M. α < 1 raises the cap to log(M/α), but that α-CPC is
    *not* guaranteed to be a lower bound (objectives.md §1.3: it overshoots the
    true MI). Use :func:`ml_cpc_bound` for a valid estimate above log M.

    Difference from the ML-CPC fork: ``_MultiClassLoss`` in jiamings/ml-cpc is
    meant to compute −(this bound) (it then equals the intended form), but on
    its real input shape [B, K+1, 1] the positive sum broadcasts against the
    per-row negative sums into a B×B matrix. It thus averages
    −log x_i0 + log((α·x_j0 + β·Σ_k x_ik)/M) over all pairs (i, j), mixing row
    i's negatives with row j's positive. This function is the intended per-row
    form. The fork's value differs from it (only slightly when K is large).

    Args:
        logits: [B, M] log-scores, column 0 the positive.
        alpha: weight of the positive in the normaliser, in (0, M].

    Returns:
        0-d tensor (mean over the B rows), in the compute dtype.
    """
    s = _as_compute(logits)
    m = s.shape[1]
    alpha = _check_alpha(alpha, m)
    ceiling = _ceiling_tensor(m, alpha, s)
    # log( β Σ_k e^{s_ik} / (α e^{s_i0}) ), then log(1 + ·) ≥ 0 via softplus.
    log_ratio = torch.logsumexp(s[:, 1:] - s[:, :1], dim=1) + _log_beta_over_alpha(alpha, m)
    return ceiling - F.softplus(log_ratio).mean()


def ml_cpc_bound(logits: Tensor, alpha: float = 1.0) -> Tensor:
    """α-ML-CPC estimate of the mutual information (Song & Ermon, NeurIPS 2020).

    What (objectives.md §1.4–1.5): one normaliser for the whole batch. With
    β = (M − α)/(M − 1),

        mean_i s_i0 − log( (α·Σ_i e^{s_i0} + β·Σ_i Σ_{k≥1} e^{s_ik}) / (B·M) ).

    All B positives compete against all B·M scored pairs at once, a
    multi-label classification. α = 1 is plain ML-CPC (a single softmax over
    the B·M scores). The value is computed as

        log(M/α) − J − softplus( log(β/α) + logsumexp_{i,k≥1}(s_ik) − logsumexp_i(s_i0) ),

    where J = logsumexp_i(s_i0) − log B − mean_i s_i0 ≥ 0 is a Jensen gap.
    J is clamped at 0, which removes only rounding noise: its true minimum 0 is
    reached when all positives are equal, and the gradient is zero there. So the
    value never exceeds the ceiling log(M/α), not even through rounding.

    Why: the positives share the normaliser, and α < 1 down-weights them in it,
    so the estimate can exceed log M while staying a lower bound on the MI for
    α ≥ :func:`ml_cpc_min_valid_alpha` (a derived range; see that function).
    The critic that is optimal for ML-CPC is not the log density ratio
    (objectives.md §1.6), so it needs its own trained scores.

    Relation to the ML-CPC fork: the fork's ``_MultiLabelLoss`` (jiamings/ml-cpc,
    ``knowledge-distillation/crd/criterion.py``), with x = exp(s)/Z for any Z,

        L_ML(x) = −(1/B)·Σ_i log x_i0 + log( (1/B)·[ α·Σ_i x_i0 + β·Σ_i Σ_k x_ik ] ),

    equals ``log M − ml_cpc_bound(s, α)``. Apart from that constant it is the
    loss ``-ml_cpc_bound``, so the two have the same gradients.

    Args:
        logits: [B, M] log-scores, column 0 the positive.
        alpha: weight of the positives in the normaliser, in (0, M].

    Returns:
        0-d tensor, in the compute dtype.
    """
    s = _as_compute(logits)
    batch, m = s.shape
    alpha = _check_alpha(alpha, m)
    ceiling = _ceiling_tensor(m, alpha, s)
    # Subtract a common reference (the detached largest positive; the value does
    # not depend on it) so that large scores (|s| ~ 1e4, where a float32 ulp is
    # ~1e-3) cost no precision in the differences below.
    r = s - s[:, 0].detach().max()
    positives = r[:, 0]
    lse_pos = torch.logsumexp(positives, dim=0)
    # Jensen gap of the positives: log-mean-exp minus mean (≥ 0; clamp removes rounding).
    jensen_gap = (lse_pos - math.log(batch) - positives.mean()).clamp_min(0)
    # log( β Σ_{i,k≥1} e^{s_ik} / (α Σ_i e^{s_i0}) ), then log(1 + ·) ≥ 0 via softplus.
    log_ratio = torch.logsumexp(r[:, 1:].reshape(-1), dim=0) - lse_pos + _log_beta_over_alpha(alpha, m)
    return ceiling - jensen_gap - F.softplus(log_ratio)


def ml_cpc_min_valid_alpha(batch_size: int, num_candidates: int) -> float:
    """α* = m / (n(m − 1) + 1): the smallest α for which α-ML-CPC stays an MI lower bound.

    With n = ``batch_size`` anchors and m = ``num_candidates`` = K + 1. This range
    is **derived** (objectives.md §1.6, marked [derived]), not copied from Song &
    Ermon's theorem, whose text could not be retrieved. At α*, Jensen's inequality
    bounds α-ML-CPC by the average of CPC bounds that each contrast one positive
    against all n(m − 1) negatives in the batch. At α = 1 the bound follows from
    Maclaurin's inequality. In between, the normaliser is a convex combination of
    the two. The ceiling at α* is log(m/α*) = log(n(m − 1) + 1). For example,
    n = m = 128 gives α* ≈ 0.00787 (ceiling 9.70 nats), and CRD's n = 64,
    m = 16385 gives α* ≈ 0.01563 ≈ 1/64 (ceiling 13.86 nats).
    """
    n = int(batch_size)
    m = int(num_candidates)
    if n != batch_size or n < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if m != num_candidates or m < 2:
        raise ValueError(f"num_candidates must be an integer M = K + 1 ≥ 2, got {num_candidates!r}")
    return m / (n * (m - 1) + 1)


# ----------------------------------------------------------------- NWJ


def nwj_bound(logits: Tensor) -> Tensor:
    """NWJ estimate of the mutual information (Nguyen, Wainwright & Jordan, IEEE Trans. Inf. Theory 2010).

    What: NWJ's variational lower bound KL(P ‖ Q) ≥ E_P[f] − E_Q[e^{f−1}], which
    holds for every critic f (the convex dual of the KL divergence: the Fenchel
    conjugate of t log t is e^{u−1}), applied with P the joint and Q the product
    of marginals, so that it bounds I(X;Y). With the positives in column 0 as the
    samples of P and every negative as a sample of Q,

        mean_i s_i0 − mean_{i, k≥1} e^{s_ik − 1},

    computed as ``mean_i s_i0 − exp( logsumexp_{i,k≥1}(s_ik) − 1 − log(B·K) )``.
    This is ``nwj_lower_bound`` of Poole et al., "On Variational Bounds of
    Mutual Information" (ICML 2019), and of the ML-CPC repository, on the
    in-batch [n, n] score matrix (there the negatives are its n(n − 1)
    off-diagonal entries).

    Why: unlike the CPC family it has no ceiling: with the optimal critic
    f* = 1 + log p(x, y)/(p(x)p(y)) it equals I exactly in expectation. The
    price is variance: the second term averages density ratios under Q, whose
    variance grows exponentially with the MI (e^{2I} − 1 for correlated
    Gaussians), so at high MI a batch's estimate is noisy, and a trained
    critic's estimate falls far below the truth. Negative scores above about
    89 + log(B·K) overflow the exponential in float32 and give −inf: the
    mathematical value is finite but not representable.

    Args:
        logits: [B, M] log-scores, column 0 the positive (M ≥ 2).

    Returns:
        0-d tensor (mean over the B positives and B·K negatives), in the compute dtype.
    """
    s = _as_compute(logits)
    batch, m = s.shape
    negatives = torch.logsumexp(s[:, 1:].reshape(-1), dim=0) - 1.0 - math.log(batch * (m - 1))
    return s[:, 0].mean() - negatives.exp()
