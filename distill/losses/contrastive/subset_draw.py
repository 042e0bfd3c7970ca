"""K distinct uniform indices per row at a cost that grows with B×K, not B×N.

The Gumbel-top-k draw (``negatives.draw_negatives``) gives every one of the N pool
entries of every row a random key and keeps the K largest: B×N random numbers and a
B×N top-k per step, most of the CRD step on a CPU at N = 50 000, K = 16 384, B = 64.

Here each row draws only in index space [0, M_b), M_b its number of eligible
entries, and keeps a value the first time it is drawn (*claim* rounds):

1. every open slot draws u uniform in [0, width) (one ``torch.randint``); u ≥ M_b is
   rejected (the slot stays open), which makes u uniform on [0, M_b) whatever M_b;
2. the slots of a row that drew the same still-free value claim it, the lowest slot
   number winning (a ``scatter_reduce`` amin into a per-row table); a slot that drew
   a value already taken, or lost the claim, stays open;
3. repeat until no slot is open.

Why the result is exactly a uniform K-subset of [0, M_b): every decision depends
only on which draws are *equal* (and on slot numbers, never on the values), and the
draws are i.i.d. uniform on [0, M_b). Relabel the values by any permutation π of
[0, M_b): the relabelled draws have the same law and lead to the same decisions, so
P(result = A) = P(result = π(A)) for every K-subset A. All K-subsets lie in one orbit
of the permutations, so they are equally likely. Rows with M_b < K are drawn with
replacement (every accepted draw is kept), the reference's rule
(``np.random.choice(..., replace=True)`` when K exceeds the pool).

Cost: an open slot stays open with probability at most K/M_b per round, so the
expected work is B·K/(1 − K/M) draws and table updates (about 1.5 B·K at the
reference sizes), plus one fill of the B×width int32 claim table (a memset).
"""

from __future__ import annotations

import torch
from torch import Tensor

TAKEN = -1  # claim-table entry of a value a slot holds


def uniform_subsets(
    sizes: Tensor, width: int, num: int, generator: torch.Generator | None = None, compact: bool | None = None
) -> Tensor:
    """[B, num] draws: row b holds ``num`` distinct values uniform on [0, sizes[b]).

    Without replacement where ``sizes[b] ≥ num``, with replacement otherwise (see the
    module docstring for why the subsets are exactly uniform). ``width`` is an upper
    bound on ``sizes`` known on the host (it sizes the claim table and the draws);
    every size must be ≥ 1.

    ``compact`` (default: on the CPU) works on the open slots only, reading their
    count on the host each round (free for CPU tensors). Otherwise every round works
    on all B×num slots under a mask and the loop checks for open slots every 16
    rounds: a device→host read, about once per draw at the reference sizes.
    """
    device = sizes.device
    batch = sizes.shape[0]
    if compact is None:
        compact = device.type == "cpu"
    total = batch * num
    rows = torch.arange(batch, device=device).repeat_interleave(num)
    slots = torch.arange(num, dtype=torch.int32, device=device).repeat(batch)
    row_size = sizes.long()[rows]
    claims = (sizes >= num)[rows]  # rows drawn without replacement claim their values
    table = torch.full((batch * width,), num, dtype=torch.int32, device=device)  # num: free
    keys_base = rows * width
    values = torch.zeros(total, dtype=torch.long, device=device)
    free_mark = torch.full((), num, dtype=torch.int32, device=device)
    taken_mark = torch.full((), TAKEN, dtype=torch.int32, device=device)
    if compact:
        open_slots = torch.arange(total, device=device)
        while open_slots.numel():
            won, drawn = _claim_round(
                table, width, keys_base[open_slots], slots[open_slots], row_size[open_slots], claims[open_slots],
                None, generator, free_mark, taken_mark,
            )
            values[open_slots[won]] = drawn[won]
            open_slots = open_slots[~won]
        return values.view(batch, num)
    is_open = torch.ones(total, dtype=torch.bool, device=device)
    while True:
        for _ in range(16):
            won, drawn = _claim_round(table, width, keys_base, slots, row_size, claims, is_open, generator, free_mark, taken_mark)
            values = torch.where(won, drawn, values)
            is_open &= ~won
        if not bool(is_open.any()):  # device→host read
            return values.view(batch, num)


def _claim_round(
    table: Tensor,
    width: int,
    keys_base: Tensor,
    slots: Tensor,
    row_size: Tensor,
    claims: Tensor,
    is_open: Tensor | None,
    generator: torch.Generator | None,
    free_mark: Tensor,
    taken_mark: Tensor,
) -> tuple[Tensor, Tensor]:
    """One round: the open slots draw, claim free values (lowest slot wins); (won, drawn)."""
    drawn = torch.randint(0, width, keys_base.shape, generator=generator, device=keys_base.device)
    accepted = drawn < row_size
    if is_open is not None:
        accepted &= is_open
    contending = accepted & claims
    keys = keys_base + drawn
    table.scatter_reduce_(0, keys, torch.where(contending, slots, free_mark), reduce="amin")
    won = accepted & (~claims | (table[keys] == slots))
    table.scatter_reduce_(0, keys, torch.where(won & claims, taken_mark, free_mark), reduce="amin")
    return won, drawn
