"""K distinct uniform indices per row at a cost that grows with B×K, not B×N.

The Gumbel-top-k draw (``negatives.draw_negatives``) gives every one of the N pool
entries of every row a random key and keeps the K largest: B×N random numbers and a
B×N top-k per step, most of the CRD step on a CPU at N = 50 000, K = 16 384, B = 64.

Here each row draws only in index space [0, M_b), M_b its number of eligible
entries, and keeps a value the first time it is drawn (*claim* rounds):

1. every open slot draws u uniform in [0, width) (one ``torch.randint``); u ≥ M_b is
   rejected (the slot stays open), which makes u uniform on [0, M_b) whatever M_b;
2. the slots of a row that drew the same still-free value claim it, the lowest slot
   number winning (a ``scatter_reduce`` amin of ``round·K + slot`` into a per-row
   table, so a value taken in an earlier round always holds); a slot that drew a
   value already taken, or lost the claim, stays open;
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

FREE = torch.iinfo(torch.int32).max  # claim-table entry of a value no slot holds
MASKED_ROUNDS = 16  # rounds between two checks for open slots off the CPU


class ClaimTable:
    """A reusable claim table: allocated once (B×width int32), left all-free after every draw.

    A draw writes only the entries of the values it returns, so it restores them
    with one B×K scatter instead of filling B×width entries again (cost ∝ B×K).
    """

    def __init__(self) -> None:
        self.table: Tensor | None = None

    def take(self, numel: int, device: torch.device) -> Tensor:
        """An all-free flat int32 table of at least ``numel`` entries on ``device``."""
        if self.table is None or self.table.device != device or self.table.numel() < numel:
            self.table = torch.full((numel,), FREE, dtype=torch.int32, device=device)
        return self.table


def uniform_subsets(
    sizes: Tensor,
    width: int,
    num: int,
    generator: torch.Generator | None = None,
    compact: bool | None = None,
    scratch: ClaimTable | None = None,
    all_full: bool = False,
) -> Tensor:
    """[B, num] draws: row b holds ``num`` distinct values uniform on [0, sizes[b]).

    Without replacement where ``sizes[b] ≥ num``, with replacement otherwise (see the
    module docstring for why the subsets are exactly uniform). ``width`` is an upper
    bound on ``sizes`` known on the host (it sizes the claim table and the draws);
    every size must be ≥ 1.

    ``compact`` (default: on the CPU) works on the open slots only, reading their
    count on the host each round (free for CPU tensors). Otherwise every round works
    on all B×num slots under a mask and the loop checks for open slots every
    ``MASKED_ROUNDS`` rounds: a device→host read, about once per draw at the
    reference sizes. ``scratch`` keeps the claim table between draws. ``all_full``
    says (from the host) that every size equals ``width``: no draw is rejected, and
    the per-row tests are skipped.
    """
    device = sizes.device
    batch = sizes.shape[0]
    if compact is None:
        compact = device.type == "cpu"
    table = (scratch or ClaimTable()).take(batch * width, device)[: batch * width]
    row_size = None if all_full else sizes.long().unsqueeze(1)  # [B, 1]: broadcast, never materialised per slot
    claims = None if all_full and width >= num else (sizes >= num).unsqueeze(1)  # None: every row claims its values
    slots = torch.arange(num, dtype=torch.int32, device=device).unsqueeze(0)
    shape = (batch, num)
    claim = _Claims(table, width, num, generator)
    if compact:  # after the first round, only the open slots (flat indices row·num + slot) are drawn again
        won, values = claim.round(shape, None, slots, row_size, claims, None)
        values, open_slots = values.view(-1), (~won).view(-1).nonzero().squeeze(1)
        while open_slots.numel():
            rows = open_slots.div(num, rounding_mode="floor")
            won, drawn = claim.round(
                open_slots.shape, rows * width, (open_slots - rows * num).int(),
                None if row_size is None else row_size.view(-1).index_select(0, rows),
                None if claims is None else claims.view(-1).index_select(0, rows), None,
            )
            winners = won.nonzero().squeeze(1)
            values.index_copy_(0, open_slots.index_select(0, winners), drawn.index_select(0, winners))
            open_slots = open_slots.index_select(0, (~won).nonzero().squeeze(1))
        return _release(table, values.view(batch, num), width)
    values = torch.zeros(shape, dtype=torch.long, device=device)
    is_open = torch.ones(shape, dtype=torch.bool, device=device)
    while True:
        for _ in range(MASKED_ROUNDS):
            won, drawn = claim.round(shape, None, slots, row_size, claims, is_open)
            values = torch.where(won, drawn, values)
            is_open &= ~won
        if not bool(is_open.any()):  # device→host read
            return _release(table, values, width)


def _release(table: Tensor, values: Tensor, width: int) -> Tensor:
    """Free the table's entries the draw held (only those of ``values`` can be held); returns ``values``."""
    table.view(values.shape[0], width).scatter_(1, values, FREE)
    return values


class _Claims:
    """The claim table of one draw and its round counter."""

    def __init__(self, table: Tensor, width: int, num: int, generator: torch.Generator | None) -> None:
        self.table, self.width, self.num, self.generator = table, width, num, generator
        self.count = 0
        self.free = torch.full((), FREE, dtype=torch.int32, device=table.device)

    def round(
        self,
        shape: tuple[int, ...],
        keys_base: Tensor | None,
        slots: Tensor,
        row_size: Tensor | None,
        claims: Tensor | None,
        is_open: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """The open slots draw and claim free values, the lowest slot winning; (won, drawn).

        ``keys_base`` (row·width of each slot) for a flat list of slots; None for all
        B×num slots as a [B, num] grid, drawn into the table's rows directly.
        ``row_size`` None: every draw is accepted; ``claims`` None: every slot claims.

        A claim writes ``round·num + slot``: values taken in earlier rounds hold smaller
        codes, so the amin keeps them. Before the codes would overflow int32 every held
        value is rewritten to −1 and the count restarts (never at the reference sizes).
        """
        if (self.count + 1) * self.num >= FREE:
            self.table.masked_fill_(self.table != FREE, -1)
            self.count = 0
        base = self.count * self.num
        self.count += 1
        drawn = torch.randint(0, self.width, shape, generator=self.generator, device=self.table.device)
        accepted = None if row_size is None else drawn < row_size
        if is_open is not None:
            accepted = is_open if accepted is None else accepted & is_open
        codes = slots + base if base else slots
        contending = accepted if claims is None else claims.expand(shape) if accepted is None else accepted & claims
        offers = codes.expand(shape) if contending is None else torch.where(contending, codes, self.free)
        if keys_base is None:
            table = self.table.view(shape[0], self.width)
            table.scatter_reduce_(1, drawn, offers, reduce="amin")
            held = table.gather(1, drawn) == codes
        else:
            keys = keys_base + drawn
            self.table.scatter_reduce_(0, keys, offers, reduce="amin")
            held = self.table.index_select(0, keys) == codes
        won = held if claims is None else held | ~claims
        return (won if accepted is None else won & accepted), drawn
