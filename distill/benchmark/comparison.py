"""Whether our number and a published one were measured the same way, and so whether their difference means anything.

A published number carries its source's :class:`~distill.benchmark.published.Protocol`;
ours is the protocol of a report cell (:class:`OurProtocol`: which epoch, how many
epochs, views and runs). :func:`compare` decides, as a pure function, what the report
prints beside the two:

* the same protocol: the difference, plain;
* the source does not say whether it reports the last or the best epoch: the
  difference, labelled so (it may be a best-epoch number, which flatters it);
* anything else differs (last vs best epoch, views, epochs): no difference, and the
  reason, because a gap between two protocols is not a gap between two methods.

The number of runs never withholds a difference: a mean of 3 and a mean of 5
estimate the same thing; both counts are shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from distill.benchmark.published import Protocol

OURS_EPOCH = {"final": "last", "best": "best"}
"""The epoch each report metric reads: ``final`` is ``final_top1`` (last epoch), ``best`` is ``best_top1``."""


@dataclass(frozen=True)
class OurProtocol:
    """How a report cell's numbers were measured: the metric's epoch, the runs' epoch counts, views, finished runs."""

    epoch: Literal["last", "best"]
    epochs: tuple[int, ...]
    """The distinct epoch counts of the finished runs (one, normally)."""
    runs: int
    views: tuple[int, ...] = (1,)
    """The distinct views per step of the finished runs (``(2,)`` for MLKD's weak and strong views)."""

    def describe(self) -> str:
        """``last epoch, 240 epochs, 1 view, 3 runs``: the same words as :meth:`Protocol.describe`."""
        epochs = ", ".join(map(str, self.epochs)) or "?"
        views = "1 view" if self.views == (1,) else f"{', '.join(map(str, self.views))} views"
        return f"{self.epoch} epoch, {epochs} epochs, {views}, {self.runs} run{'s' if self.runs != 1 else ''}"


@dataclass(frozen=True)
class Comparison:
    """What to print for ours vs one published number.

    ``delta`` is ours − paper, or None when it is withheld; ``caveat`` says why it is
    withheld or what to keep in mind when it is not (empty for a like-for-like comparison).
    """

    delta: float | None
    caveat: str = ""

    @property
    def withheld(self) -> bool:
        return self.delta is None

    @property
    def kind(self) -> str:
        """``same protocol``, ``labelled`` or ``withheld``: for the CSV file."""
        if self.withheld:
            return "withheld"
        return "labelled" if self.caveat else "same protocol"


def published_delta(mean: float, published: float) -> float:
    """Ours − paper, from the mean as displayed (2 decimals) so the numbers in a cell add up."""
    return round(round(mean, 2) - published, 2)


def differences(ours: OurProtocol, paper: Protocol) -> list[str]:
    """What the paper's protocol does differently from ours, in the paper's terms (``best epoch``, ``2 views``)."""
    found = []
    if paper.epoch != "not stated" and paper.epoch != ours.epoch:
        found.append(f"{paper.epoch} epoch")
    if ours.views and ours.views != (paper.views,):
        found.append(f"{paper.views} view{'s' if paper.views != 1 else ''}")
    if ours.epochs and ours.epochs != (paper.epochs,):
        found.append(f"{paper.epochs} epochs")
    return found


def compare(mean: float, ours: OurProtocol, published: float, paper: Protocol) -> Comparison:
    """The difference ours − paper when the protocols match; labelled when the paper's epoch is unstated; else withheld."""
    differ = differences(ours, paper)
    if differ:
        return Comparison(None, f"paper: {', '.join(differ)}")
    delta = published_delta(mean, published)
    if paper.epoch == "not stated":
        return Comparison(delta, "paper: last or best epoch not stated")
    return Comparison(delta)
