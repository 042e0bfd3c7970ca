"""The index-space ("claim") draw of negatives: exactly uniform K-subsets of the eligible entries.

Statistical tests use fixed seeds (so they cannot flake) and a p-value threshold of
1e-4; each statistic is shown to reject a plausible wrong scheme at the same threshold.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from chi_square import goodness_of_fit_p, homogeneity_p

from distill.losses.contrastive.negatives import class_order, draw_candidates, draw_pool_negatives
from distill.losses.contrastive.subset_draw import FREE, ClaimTable, uniform_subsets

P_MIN = 1e-4
# A pool of 30 entries in 4 classes of unequal sizes (10, 8, 7, 5), interleaved.
LABELS = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 0, 1, 0, 0])
N = len(LABELS)


def subset_counts(rows: torch.Tensor, size: int) -> torch.Tensor:
    """Counts of each K-subset of [0, size) among the rows (cells in lexicographic order)."""
    num = rows.shape[1]
    cell = {subset: i for i, subset in enumerate(itertools.combinations(range(size), num))}
    counts = torch.zeros(len(cell), dtype=torch.long)
    for row in rows.sort(dim=1).values.tolist():
        counts[cell[tuple(row)]] += 1
    return counts


def pair_z_max(rows: torch.Tensor, size: int) -> float:
    """Largest |z| of a pair's inclusion count against Binomial(R, K(K−1)/(M(M−1)))."""
    num = rows.shape[1]
    onehot = torch.zeros(len(rows), size, dtype=torch.float64).scatter_(1, rows, 1.0)
    pairs = (onehot.t() @ onehot)[torch.triu_indices(size, size, 1).unbind()]
    p = num * (num - 1) / (size * (size - 1))
    return float(((pairs - len(rows) * p).abs() / math.sqrt(len(rows) * p * (1 - p))).max())


@pytest.mark.parametrize("all_full", [False, True], ids=["per-row-sizes", "all-full"])
@pytest.mark.parametrize("compact", [True, False], ids=["compacted", "masked"])
def test_every_k_subset_is_equally_likely(compact, all_full):
    """M = 7, K = 3: all 35 subsets, 35 000 rows; the exact test of a uniform K-subset."""
    generator = torch.Generator().manual_seed(0)
    rows = uniform_subsets(torch.full((35000,), 7), 7, 3, generator, compact=compact, all_full=all_full)
    assert (rows.sort(dim=1).values.diff(dim=1) > 0).all() and rows.min() >= 0 and rows.max() < 7
    counts = subset_counts(rows, 7)
    assert goodness_of_fit_p(counts) > P_MIN


def test_the_subset_test_rejects_first_occurrences_without_redraw_topped_up():
    """Draw with replacement, keep distinct values, top up with the smallest unused: wrong, and seen."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for draw in torch.randint(0, 7, (35000, 3), generator=generator).tolist():
        kept = list(dict.fromkeys(draw))
        kept += [v for v in range(7) if v not in kept][: 3 - len(kept)]
        rows.append(kept)
    assert goodness_of_fit_p(subset_counts(torch.tensor(rows), 7)) < P_MIN


def test_sizes_per_row_and_the_rejection_of_draws_past_a_rows_size():
    """Rows of different M share one width: each row's values stay below its own M, uniform there."""
    generator = torch.Generator().manual_seed(1)
    sizes = torch.tensor([5, 9, 20]).repeat(4000)
    rows = uniform_subsets(sizes, 20, 4, generator)
    for size in (5, 9, 20):
        mine = rows[sizes == size]
        assert mine.max() < size and (mine.sort(dim=1).values.diff(dim=1) > 0).all()
        assert goodness_of_fit_p(torch.bincount(mine.flatten(), minlength=size)) > P_MIN


def test_exact_negatives_distinct_eligible_uniform_with_uniform_pairs():
    """Anchors of class 0 (10 entries): M = 20 eligible, K = 8; marginals 8/20, pairs K(K−1)/(M(M−1))."""
    classes = class_order(LABELS)
    anchors = torch.zeros(20000, dtype=torch.long)  # entry 0 is class 0
    negatives = draw_pool_negatives(anchors, LABELS[anchors], 8, "exact", classes, N, torch.Generator().manual_seed(2))
    assert (LABELS[negatives] != 0).all()
    assert (negatives.sort(dim=1).values.diff(dim=1) > 0).all()
    eligible = torch.nonzero(LABELS != 0).squeeze(1)
    counts = torch.bincount(negatives.flatten(), minlength=N)
    assert counts[LABELS == 0].sum() == 0
    assert goodness_of_fit_p(counts[eligible]) > P_MIN
    ranks = torch.searchsorted(eligible, negatives)  # positions among the eligible entries
    assert pair_z_max(ranks, 20) < 5  # 190 pairs, Bonferroni: P(max |z| ≥ 5) < 190 · 5.7e-7 ≈ 1e-4


def test_the_pair_test_rejects_uniform_marginals_with_wrong_pairs():
    """A random rotation of one fixed 8-subset: every index equally likely, pairs not."""
    generator = torch.Generator().manual_seed(3)
    shifts = torch.randint(0, 20, (20000, 1), generator=generator)
    rows = (torch.arange(8).unsqueeze(0) + shifts) % 20
    assert goodness_of_fit_p(torch.bincount(rows.flatten(), minlength=20)) > P_MIN  # marginals cannot tell
    assert pair_z_max(rows, 20) > 5


def test_with_replacement_only_where_fewer_than_k_are_eligible():
    """K = 22: class 0 anchors have 20 eligible (with replacement); class 3 anchors 25 (without)."""
    classes = class_order(LABELS)
    anchors = torch.tensor([0, 3]).repeat(3000)  # class 0, class 3
    negatives = draw_pool_negatives(anchors, LABELS[anchors], 22, "exact", classes, N, torch.Generator().manual_seed(4))
    assert (LABELS[negatives] != LABELS[anchors].unsqueeze(1)).all()
    short, long = negatives[LABELS[anchors] == 0], negatives[LABELS[anchors] == 3]
    assert (long.sort(dim=1).values.diff(dim=1) > 0).all()
    assert (short.sort(dim=1).values.diff(dim=1) == 0).any(dim=1).all()  # 22 out of 20: a repeat in every row
    counts = torch.bincount(short.flatten(), minlength=N)
    assert goodness_of_fit_p(counts[LABELS != 0]) > P_MIN


def test_uniform_mode_never_takes_the_anchor_and_is_uniform_over_the_rest():
    anchors = torch.tensor([0, 17, 29]).repeat(4000)
    negatives = draw_pool_negatives(anchors, LABELS[anchors], 10, "uniform", None, N, torch.Generator().manual_seed(5))
    assert (negatives != anchors.unsqueeze(1)).all() and negatives.max() < N
    assert (negatives.sort(dim=1).values.diff(dim=1) > 0).all()
    for anchor in (0, 17, 29):
        counts = torch.bincount(negatives[anchors == anchor].flatten(), minlength=N)
        others = torch.arange(N) != anchor
        assert goodness_of_fit_p(counts[others]) > P_MIN


def test_relax_positive_is_uniform_over_the_anchors_class():
    anchors = torch.tensor([1, 3]).repeat(8000)  # classes 1 (8 entries) and 3 (5 entries)
    candidates = draw_candidates(anchors, LABELS[anchors], 6, "relax", LABELS, N, torch.Generator().manual_seed(6), method="claim")
    positives = candidates[:, 0]
    assert (LABELS[positives] == LABELS[anchors]).all() and (LABELS[candidates[:, 1:]] != LABELS[anchors].unsqueeze(1)).all()
    for label in (1, 3):
        counts = torch.bincount(positives[LABELS[anchors] == label], minlength=N)[LABELS == label]
        assert goodness_of_fit_p(counts) > P_MIN


def test_claim_and_topk_draws_agree_in_distribution():
    """The two methods are different streams of one distribution: per-index counts are homogeneous."""
    anchors = torch.tensor([0, 1, 2, 3]).repeat(3000)
    counts = {}
    for method in ("claim", "topk"):
        candidates = draw_candidates(anchors, LABELS[anchors], 7, "exact", LABELS, N, torch.Generator().manual_seed(7), method=method)
        counts[method] = torch.bincount((LABELS[anchors].unsqueeze(1) * N + candidates[:, 1:]).flatten(), minlength=4 * N)
    assert homogeneity_p(counts["claim"], counts["topk"]) > P_MIN


def test_same_seed_same_draw_other_seed_other_draw():
    anchors = torch.arange(12)
    draw = lambda seed: draw_candidates(anchors, LABELS[anchors], 9, "exact", LABELS, N, torch.Generator().manual_seed(seed), method="claim")  # noqa: E731
    assert torch.equal(draw(8), draw(8)) and not torch.equal(draw(8), draw(9))


def test_no_eligible_negative_is_refused():
    labels = torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match="no eligible negative"):
        draw_pool_negatives(torch.tensor([0]), labels[:1], 3, "exact", class_order(labels), 10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_draw_has_the_cpu_draws_statistics():
    """On CUDA (masked rounds): subsets of [0, 7) and exact-mode marginals homogeneous with the CPU's."""
    cuda = torch.device("cuda")
    rows = {}
    for device in (torch.device("cpu"), cuda):
        generator = torch.Generator(device=device).manual_seed(10)
        rows[device.type] = uniform_subsets(torch.full((35000,), 7, device=device), 7, 3, generator).cpu()
    assert homogeneity_p(subset_counts(rows["cpu"], 7), subset_counts(rows["cuda"], 7)) > P_MIN
    anchors = torch.tensor([0, 1, 2, 3], device=cuda).repeat(3000)
    labels = LABELS.to(cuda)
    candidates = draw_candidates(anchors, labels[anchors], 7, "exact", labels, N, torch.Generator(device=cuda).manual_seed(11), method="claim")
    assert (labels[candidates[:, 1:]] != labels[anchors].unsqueeze(1)).all()
    assert (candidates[:, 1:].sort(dim=1).values.diff(dim=1) > 0).all()


def test_a_reused_claim_table_is_left_free_and_changes_nothing():
    """The scratch table holds only the returned values' entries during a draw, and none after it."""
    scratch = ClaimTable()
    sizes = torch.tensor([20, 25, 3, 20])  # the 3-row is drawn with replacement (K = 8)
    first = uniform_subsets(sizes, 25, 8, torch.Generator().manual_seed(12), scratch=scratch)
    assert (scratch.table == FREE).all() and scratch.table.numel() == 4 * 25
    again = uniform_subsets(sizes, 25, 8, torch.Generator().manual_seed(12), scratch=scratch)
    fresh = uniform_subsets(sizes, 25, 8, torch.Generator().manual_seed(12))
    assert torch.equal(first, again) and torch.equal(first, fresh)
