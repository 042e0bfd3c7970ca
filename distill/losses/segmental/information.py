"""Information-theoretic quantities of segment codes, estimated from a batch.

Small pure functions over float tensors; no state, no heads. The shapes:

* ``codes``: ``[N, S, C]``, for N samples, S segments and C attributes per
  segment; ``codes[i, s]`` is the distribution p^s(· | x_i) over the attributes.
* a ``joint``: ``[..., C, C']``, a distribution over pairs of attributes.

What comes from where. MUSIC (Niu & Wang, "Multi-Segmental Informational Coding
for Self-Supervised Representation Learning", arXiv 2206.06461) verifiably splits
an embedding into segments, each a softmax distribution over discrete attributes,
estimates the attribute distributions over a batch, and trains with
information-theoretic terms so that the features are invariant, non-trivial,
diverse and discriminative. The exact terms, weights and temperatures of MUSIC
could not be read (``objectives.md`` §3.2); the entropies below are the standard
terms that a reconstruction maps to those four properties, and are marked
**[unverified]** where they stand for a MUSIC term. The cross-network joint and
its mutual information are **ours** (Variant B of ``objectives.md`` §3.3, after
IIC: Ji et al., "Invariant Information Clustering", ICCV 2019, which uses the
same joint between two views of one network).

Every estimate is the plug-in one: probabilities are batch averages and the
entropies are computed from them. The plug-in mutual information is biased
upwards by about (C − 1)(C' − 1) / (2N) nats for independent variables (the
Miller–Madow correction), so it needs N well above C·C' samples: the loss
averages the between-segment joints over batches for that (``estimates.py``;
``loss.py`` says why not the cross-network joint).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "between_segment_dependence",
    "cross_joint",
    "entropy",
    "input_information",
    "marginal_entropy",
    "mutual_information",
    "sample_entropy",
    "segment_codes",
    "segment_gram",
]


def segment_codes(logits: Tensor, segments: int, temperature: float) -> Tensor:
    """Per-segment softmax codes: ``[N, S·C]`` logits → ``[N, S, C]``.

    p^s(c | x) = exp(z^s_c / τ) / Σ_c' exp(z^s_c' / τ), where z^s is the s-th block
    of C logits. MUSIC (verified): each segment is a distribution over discrete
    attributes. The temperature τ is ours (MUSIC's could not be read).
    """
    if logits.dim() != 2:
        raise ValueError(f"segment logits must be [N, S·C], got shape {tuple(logits.shape)}")
    count, width = logits.shape
    if segments < 1 or width % segments != 0:
        raise ValueError(f"{width} logits do not split into {segments} segments of equal size")
    return torch.softmax(logits.float().view(count, segments, width // segments) / temperature, dim=-1)


def entropy(distribution: Tensor, dim: int = -1) -> Tensor:
    """H(p) = −Σ p log p along ``dim`` (in nats), with 0 · log 0 = 0.

    The logarithm's argument is clamped at the dtype's smallest normal number, so
    a zero probability gives a zero term and a finite gradient.
    """
    tiny = torch.finfo(distribution.dtype).tiny
    return -(distribution * distribution.clamp_min(tiny).log()).sum(dim)


def marginal_entropy(codes: Tensor) -> Tensor:
    """H(p̄^s) per segment, ``[S]``, where p̄^s = (1/N) Σ_i p^s(· | x_i).

    The batch-estimated attribute distribution of each segment (verified MUSIC:
    distributions over attributes estimated over the batch). Its entropy is the
    reconstruction's **non-triviality** term [unverified]: at most log C, when
    the batch uses every attribute equally; 0 under collapse, when every sample
    gets the same code.
    """
    return entropy(codes.mean(0))


def sample_entropy(codes: Tensor) -> Tensor:
    """(1/N) Σ_i H(p^s(· | x_i)) per segment, ``[S]``.

    The reconstruction's **discriminativeness** term [unverified]: 0 when every
    sample's code is one-hot (confident), log C when every code is uniform.
    """
    return entropy(codes).mean(0)


def input_information(codes: Tensor) -> Tensor:
    """I(x; c^s) = H(p̄^s) − (1/N) Σ_i H(p^s(· | x_i)) per segment, ``[S]``.

    Non-triviality plus discriminativeness: the information-maximisation
    clustering objective that the reconstruction of MUSIC's terms amounts to
    [unverified]. It bounds the cross-network information of a segment from
    above: c_T and c_S depend on each other only through x, so
    I(c_T^s; c_S^s) ≤ min(I(x; c_T^s), I(x; c_S^s)) (data processing).
    """
    return marginal_entropy(codes) - sample_entropy(codes)


def cross_joint(teacher_codes: Tensor, student_codes: Tensor) -> Tensor:
    """P^s_TS(c, c') = (1/N) Σ_i p_T^s(c | x_i) · p_S^s(c' | x_i), ``[S, C_T, C_S]``.

    Ours (Variant B): the joint distribution of the teacher's and the student's
    attribute of segment s for a sample drawn from the batch, the two codes being
    independent given the sample. IIC forms the same joint between two views of
    one network; here it is between two networks on one view.
    """
    if teacher_codes.shape[:2] != student_codes.shape[:2]:
        raise ValueError(
            f"teacher and student codes must share samples and segments, got {tuple(teacher_codes.shape)} "
            f"and {tuple(student_codes.shape)}"
        )
    return torch.einsum("nsc,nsd->scd", teacher_codes, student_codes) / teacher_codes.shape[0]


def segment_gram(codes: Tensor) -> Tensor:
    """(1/N) Σ_i vec p(x_i) · vec p(x_i)ᵀ, ``[S·C, S·C]``: every pair of segments' joint at once.

    Block (s, t), rows s·C … s·C + C − 1 and columns t·C … t·C + C − 1, is the joint
    P^{st}(c, c') = (1/N) Σ_i p^s(c | x_i) · p^t(c' | x_i) of the reconstruction's
    diversity term [unverified]. One matrix product gives all S² blocks.
    """
    flat = codes.reshape(codes.shape[0], -1)
    return flat.t() @ flat / codes.shape[0]


def mutual_information(joint: Tensor) -> Tensor:
    """Plug-in I(X; Y) = H(P_X) + H(P_Y) − H(P_XY) of ``[..., C, C']`` joints, in nats, ``[...]``.

    P_X and P_Y are the joint's row and column sums. 0 when the joint factorises;
    at most min(log C, log C'). Its gradient with respect to the joint is the
    pointwise mutual information log P_XY − log P_X − log P_Y, minus 1.
    """
    rows, columns = joint.sum(-1), joint.sum(-2)
    return entropy(rows) + entropy(columns) - entropy(joint.flatten(-2))


def between_segment_dependence(gram: Tensor, segments: int) -> Tensor:
    """(2 / (S(S − 1))) Σ_{s<t} I(c^s; c^t): the mean mutual information over pairs of segments.

    From a :func:`segment_gram`. Ours: the form of the diversity term. MUSIC
    (verified) wants diverse segments and measures redundancy with information
    terms rather than linear correlation; the reconstruction [unverified] asks for
    low dependence between segments. The total correlation of all S segments
    would need the C^S-cell joint, so we use pairs: 0 for pairwise independent
    segments, H(p̄^s) when segment t copies segment s. A mean (not a sum) keeps the
    term in [0, log C] whatever S is. One segment has no pairs and gives 0.
    """
    width = gram.shape[-1]
    if width % segments != 0:
        raise ValueError(f"a Gram of width {width} does not split into {segments} segments")
    if segments < 2:
        return gram.sum() * 0.0
    attributes = width // segments
    blocks = gram.view(segments, attributes, segments, attributes).transpose(1, 2)  # [S, S, C, C]
    first, second = torch.triu_indices(segments, segments, offset=1, device=gram.device)
    return mutual_information(blocks[first, second]).mean()
