"""Drawing contrast candidates on the device: one positive and K negatives per anchor.

The reference (RepDistiller ``CIFAR100InstanceSample``) draws 16384 negatives per sample
with numpy inside the data loader, about 0.8 ms per sample. Here they are drawn for
the whole batch at once, on the training device, uniformly **without replacement**
among the anchor's eligible entries, as the reference's ``np.random.choice`` when K
does not exceed them; when it does, with replacement, as there. Two draws:

* ``claim`` (:func:`draw_pool_negatives`, for a fixed pool whose labels are known, the
  memory bank): the pool is ordered by class once (:func:`class_order`); an anchor of
  class c is eligible for the M = N − n_c entries outside c's block, so K distinct
  indices of [0, M) (``subset_draw.uniform_subsets``, cost ∝ B×K) map to the pool.
* ``topk`` (:func:`draw_negatives`, any [B, N] eligibility mask, e.g. the queue whose
  labels change every step): each eligible entry gets a uniform random key and the K
  largest keys win (cost ∝ B×N, no device→host read).

Modes (the reference's ``--mode`` plus a label-free one):

* ``exact``: the positive is the anchor itself; negatives come only from other
  classes (CRD on CIFAR-100 uses the labels this way).
* ``relax``: the positive is a random sample of the anchor's class (possibly itself);
  negatives as in ``exact``.
* ``uniform``: no labels; negatives are any entries but the anchor itself.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

from distill.losses.contrastive.subset_draw import ClaimTable, uniform_subsets

SamplingMode = Literal["exact", "relax", "uniform"]
DrawMethod = Literal["auto", "claim", "topk"]
CPU_METHOD: DrawMethod = "claim"  # what "auto" picks on the CPU (tools/bench_contrastive.py times both)


class ClassOrder(NamedTuple):
    """A pool ordered by class: ``order[starts[c]:starts[c] + counts[c]]`` are class c's entries."""

    order: Tensor
    starts: Tensor
    counts: Tensor
    smallest: int  # the fewest entries of a class, 0 if one is absent (host-side: sizes the draw)
    largest: int


def class_order(pool_labels: Tensor) -> ClassOrder:
    """Sort the pool by class once (when its labels are known), on their device."""
    counts = torch.bincount(pool_labels)
    order = torch.argsort(pool_labels, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    return ClassOrder(order, starts, counts, int(counts.min()), int(counts.max()))


def draw_pool_negatives(
    anchor_indices: Tensor,
    anchor_labels: Tensor,
    num_negatives: int,
    mode: SamplingMode,
    classes: ClassOrder | None,
    pool_size: int,
    generator: torch.Generator | None = None,
    scratch: ClaimTable | None = None,
) -> Tensor:
    """[B, K] negatives from a fixed pool, drawn in index space (cost ∝ B×K, not B×N).

    ``exact``/``relax``: a uniform u ∈ [0, N − n_c) skips class c's block of the
    class-ordered pool (u, or u + n_c past its start) and maps through the order.
    ``uniform``: u ∈ [0, N − 1) skips the anchor's own index. Distinct per row when
    M ≥ K, with replacement otherwise (``uniform_subsets``; ``scratch`` keeps its table).
    """
    if mode == "uniform":
        if pool_size < 2:
            raise ValueError("an anchor has no eligible negative (the pool holds only the anchor)")
        sizes = torch.full_like(anchor_indices, pool_size - 1)
        drawn = uniform_subsets(sizes, pool_size - 1, num_negatives, generator, scratch=scratch, all_full=True)
        return drawn + (drawn >= anchor_indices.unsqueeze(1)).long()
    if classes.largest == pool_size:
        raise ValueError("an anchor has no eligible negative (every pool entry shares its class)")
    block_size = classes.counts[anchor_labels].unsqueeze(1)
    block_start = classes.starts[anchor_labels].unsqueeze(1)
    drawn = uniform_subsets(
        (pool_size - block_size).squeeze(1), pool_size - classes.smallest, num_negatives, generator, scratch=scratch,
        all_full=classes.smallest == classes.largest,
    )
    return classes.order[drawn + block_size * (drawn >= block_start).long()]


def draw_block_positives(anchor_labels: Tensor, classes: ClassOrder, generator: torch.Generator | None = None) -> Tensor:
    """``relax`` positives without a B×N mask: a uniform member of the anchor's class block."""
    sizes = classes.counts[anchor_labels]
    full = classes.smallest == classes.largest
    drawn = uniform_subsets(sizes, classes.largest, 1, generator, all_full=full).squeeze(1)  # one slot: never a collision
    return classes.order[classes.starts[anchor_labels] + drawn]


def eligible_negatives(
    anchor_labels: Tensor,
    pool_labels: Tensor | None,
    mode: SamplingMode,
    pool_size: int,
    own_positions: Tensor | None = None,
) -> Tensor:
    """A [B, pool] boolean mask of the entries each anchor may take as negatives.

    ``own_positions`` (the anchors' own rows of the pool, if they have one) are
    excluded in ``uniform`` mode.
    """
    batch = anchor_labels.shape[0]
    if mode == "uniform":
        eligible = torch.ones(batch, pool_size, dtype=torch.bool, device=anchor_labels.device)
        if own_positions is not None:
            eligible[torch.arange(batch, device=eligible.device), own_positions] = False
    else:
        eligible = pool_labels.unsqueeze(0) != anchor_labels.unsqueeze(1)
    return eligible


def fewest_eligible(pool_labels: Tensor | None, mode: SamplingMode, pool_size: int) -> int:
    """The smallest number of eligible negatives any anchor of a fixed pool can have.

    Known once from the labels (the pool minus the largest class; the pool minus the
    anchor itself in ``uniform`` mode), so the per-step draw needs no device→host
    read to choose between sampling with and without replacement.
    """
    if mode == "uniform" or pool_labels is None:
        return pool_size - 1
    return pool_size - int(torch.bincount(pool_labels).max())


def draw_negatives(
    eligible: Tensor, num_negatives: int, generator: torch.Generator | None = None, fewest: int | None = None
) -> Tensor:
    """K indices per row among the row's eligible entries: without replacement when possible.

    Rows with fewer than K eligible entries are drawn with replacement (the reference's
    rule); a row with none raises, since no negative exists. ``fewest`` (from
    :func:`fewest_eligible`) is the smallest row count when the caller knows it;
    otherwise it is read from the mask, which synchronises with the device.
    """
    if fewest is None:
        fewest = int(eligible.sum(dim=1).min())
    if fewest == 0:
        raise ValueError("an anchor has no eligible negative (every pool entry shares its class)")
    keys = torch.rand(eligible.shape, generator=generator, device=eligible.device)
    keys.masked_fill_(~eligible, -1.0)
    if fewest >= num_negatives:
        return keys.topk(num_negatives, dim=1, sorted=False).indices
    weights = eligible.float()
    return torch.multinomial(weights, num_negatives, replacement=True, generator=generator)


def draw_positives(
    anchor_indices: Tensor, anchor_labels: Tensor, pool_labels: Tensor | None, mode: SamplingMode, generator: torch.Generator | None = None
) -> Tensor:
    """Column 0 of the candidates: the anchor itself, or (``relax``) a random member of its class."""
    if mode != "relax":
        return anchor_indices
    same_class = pool_labels.unsqueeze(0) == anchor_labels.unsqueeze(1)
    keys = torch.rand(same_class.shape, generator=generator, device=same_class.device)
    keys.masked_fill_(~same_class, -1.0)
    return keys.argmax(dim=1)


def draw_candidates(
    anchor_indices: Tensor,
    anchor_labels: Tensor,
    num_negatives: int,
    mode: SamplingMode,
    pool_labels: Tensor | None,
    pool_size: int,
    generator: torch.Generator | None = None,
    fewest: int | None = None,
    classes: ClassOrder | None = None,
    method: DrawMethod = "auto",
    scratch: ClaimTable | None = None,
) -> Tensor:
    """[B, K+1] rows of a per-sample memory bank: column 0 the positive, then K negatives.

    ``method``: ``claim`` draws in index space (needs ``classes`` unless ``uniform``;
    computed here from ``pool_labels`` if not given), ``topk`` with a B×N mask; ``auto``
    is ``CPU_METHOD`` (``claim``: about 1.4× faster single-threaded at the reference
    sizes) on the CPU and ``topk`` elsewhere, which never reads from the device
    (``claim`` checks for open slots about once per draw there; not yet timed on a GPU).
    ``scratch`` keeps the ``claim`` draw's table between steps.
    """
    if method == "auto":
        method = CPU_METHOD if anchor_indices.device.type == "cpu" else "topk"
    if method == "claim":
        if mode != "uniform" and classes is None:
            classes = class_order(pool_labels)
        negatives = draw_pool_negatives(anchor_indices, anchor_labels, num_negatives, mode, classes, pool_size, generator, scratch)
        positives = draw_block_positives(anchor_labels, classes, generator) if mode == "relax" else anchor_indices
        return torch.cat([positives.unsqueeze(1), negatives], dim=1)
    eligible = eligible_negatives(anchor_labels, pool_labels, mode, pool_size, own_positions=anchor_indices)
    negatives = draw_negatives(eligible, num_negatives, generator, fewest)
    positives = draw_positives(anchor_indices, anchor_labels, pool_labels, mode, generator)
    return torch.cat([positives.unsqueeze(1), negatives], dim=1)
