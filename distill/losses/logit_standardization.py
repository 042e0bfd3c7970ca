"""Logit standardization (LS): Sun et al., "Logit Standardization in Knowledge Distillation", CVPR 2024.

Each sample's logit vector is z-scored before the temperature is applied, so the student
matches the teacher's logit *relations* rather than their magnitude; a large KD weight
then stays stable (paper Table 4). Paper, Algorithm 1 (§4.3):

    Z(x; τ) = (x − mean(x)) / σ(x) / τ,   σ the population standard deviation.

The authors' code (``sunshangquan/logit-standardization-KD@f6e5aa5``,
``mdistiller/distillers/KD.py`` L7–10, the same in ``DKD.py`` and ``MLKD.py``) divides by
``1e-7 + std(x)`` with torch's *unbiased* std (divisor K − 1): that produced the
published numbers, so it is the default here; ``unbiased=False, eps=0`` is the paper's
form. For K = 100 classes the two differ by √(99/100), a 0.5 % change of τ.
"""

from __future__ import annotations

from torch import Tensor

CODE_EPS = 1e-7
"""The epsilon the authors' code adds to the standard deviation (not inside the square root)."""


def standardize_logits(logits: Tensor, *, unbiased: bool = True, eps: float = CODE_EPS) -> Tensor:
    """Each row of ``logits`` (B×C) minus its mean, divided by ``eps + std`` (std over the C classes).

    Invariant to adding a constant to a row and to multiplying it by a positive number
    (up to ``eps``); the result has zero mean and unit standard deviation per row.
    """
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True, correction=1 if unbiased else 0)
    return (logits - mean) / (eps + std)
