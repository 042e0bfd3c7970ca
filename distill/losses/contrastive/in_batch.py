"""In-batch negatives (``bank: batch``): the other samples of the global batch, no memory at all.

CRD's memory holds an N×d row per training sample and side (two 1 281 167×128 float
banks are 1.3 GB on ImageNet; at tens of millions of images they no longer fit,
RepDistiller#40). The CRD authors' advice for such datasets is a queue or large
batches with in-batch negatives (SimCLR-style). Here each anchor's candidates are
the other network's **current** embeddings of every sample of the global batch
(all processes' rows, gathered in rank order): its own sample's embedding is the
positive, the B_global − 1 others are the negatives. Nothing in the state grows
with the dataset.

The [B, B] score matrix S[i, j] = ⟨anchor_i, other_j⟩/T is turned into the
estimators' layout (column 0 the positive) by :func:`diagonal_first`. Negatives an
anchor may not use are *masked*, not dropped, so every row keeps B columns: their
log-score is set to :data:`EXCLUDED_LOG_SCORE`, whose exponential is exactly 0 in
float32 and float64, so they add nothing to the log-sum-exps of ``cpc_bound`` and
``ml_cpc_bound`` nor to ``nce_loss`` (each contributes softplus(−huge) = 0) and
receive no gradient. A finite value rather than −inf keeps a row whose every
negative is excluded (a batch of one class) finite: −inf would give NaN gradients
through ``logsumexp``.

Gradients across processes: every process scores *all* B_global anchors (a
B_global² product, small next to any network), so its loss value is the one a
single process fed the whole batch computes. Only its own anchors carry gradient,
scaled by the world size (:func:`gather_with_local_gradient`), so that DDP's
average of the processes' gradients is the single-process gradient, for the
per-row estimators (CPC, NCE) and for ML-CPC's batch-wide normaliser alike.
"""

from __future__ import annotations

import torch
from torch import Tensor

from distill import distributed
from distill.losses.contrastive.negatives import SamplingMode

EXCLUDED_LOG_SCORE = -1.0e9
"""The log-score of a masked negative: exp of it (minus any finite score) is exactly 0."""


def diagonal_first(scores: Tensor) -> Tensor:
    """A square [B, B] matrix in the estimators' layout: row i starts with S[i, i].

    Row i becomes (S[i, i], S[i, i+1], …, S[i, B−1], S[i, 0], …, S[i, i−1]), each row
    rotated left by i; the estimators do not depend on the order of the negatives.
    Differentiable (a gather). The MI bench's ``pairwise_logits`` is the same layout.
    """
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"scores must be a square [B, B] matrix with the positives on the diagonal, got {tuple(scores.shape)}")
    index = torch.arange(scores.shape[0], device=scores.device)
    return scores.gather(1, (index.unsqueeze(1) + index.unsqueeze(0)) % scores.shape[0])


def excluded_negatives(labels: Tensor, indices: Tensor, mode: SamplingMode) -> Tensor:
    """[B, B] bool in the estimators' layout: which candidates an anchor may not use as negatives.

    Column 0 (the positive) is never excluded. ``exact``: every other sample of the
    anchor's class (as CRD's exact mode draws negatives only from other classes);
    ``uniform``: none but repeats of the anchor's own sample. In both, a repeat of
    the anchor's dataset index (Accelerate pads the last batch by repeating
    samples) is excluded: a sample is never its own negative.
    """
    if mode == "relax":
        raise ValueError("mode 'relax' needs a row per sample: use bank: memory")
    excluded = indices.unsqueeze(1) == indices.unsqueeze(0)
    if mode == "exact":
        excluded |= labels.unsqueeze(1) == labels.unsqueeze(0)
    excluded = diagonal_first(excluded)
    excluded[:, 0] = False
    return excluded


def in_batch_logits(anchors: Tensor, others: Tensor, temperature: float, excluded: Tensor | None = None) -> Tensor:
    """[B, B] log-scores ⟨anchor_i, other_j⟩/T, column 0 the own sample, excluded negatives masked.

    ``others`` are detached: as CRD scores against detached memory rows, each side's
    gradient flows through its anchors only (the other side's embedding is the
    target of that direction; it receives its gradient as the anchor of the other).
    """
    scores = anchors.float() @ others.detach().float().t() / temperature
    logits = diagonal_first(scores)
    if excluded is not None:
        logits = logits.masked_fill(excluded, EXCLUDED_LOG_SCORE)
    return logits


def gather_with_local_gradient(rows: Tensor) -> Tensor:
    """All processes' ``rows`` in rank order; this process's own rows carry its gradient, times the world size.

    The other processes' rows arrive detached (an all-gather has no backward). A loss
    computed from the result is the same number on every process; its gradient on
    process p reaches only p's rows. Scaling them by P = world size makes DDP's
    average (1/P)·Σ_p of those partial gradients the full gradient of the loss,
    which is what one process fed the whole batch gets. With one process: ``rows``.
    """
    world = distributed.world_size()
    if world == 1:
        return rows
    counts = distributed.all_gather_rows(torch.tensor([rows.shape[0]], device=rows.device))
    offset = int(counts[: distributed.rank()].sum())
    gathered = distributed.all_gather_rows(rows.detach())
    scaled = rows.detach() + world * (rows - rows.detach())  # value of rows, gradient × world
    return torch.cat([gathered[:offset], scaled, gathered[offset + rows.shape[0] :]], dim=0)
