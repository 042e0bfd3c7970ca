"""Seed statistics and their verdict in words: is a gain larger than the seed-to-seed spread?

Pure functions on plain numbers, so that what a demonstration *says* about its numbers
can be tested against hand-made figures. Used by ``distill quickstart``.

The rule: the **gain** is the difference of two means over seeds; the **spread** it is
held against is ``√(sd_a² + sd_b²)``, the standard deviation of the difference of one
run of each (sample standard deviations, n − 1). A gain larger than the spread is
called a gain (or a loss, when negative); anything else is "within noise". With a
single seed there is no spread, and the verdict says so instead of guessing.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Verdict = Literal["gain", "loss", "within noise", "one seed"]


@dataclass(frozen=True)
class SeedSummary:
    """Mean and sample standard deviation of one number over ``n`` seeds (``std`` is None for one seed)."""

    mean: float
    std: float | None
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.1f}" if self.std is None else f"{self.mean:.1f} ± {self.std:.1f}"


@dataclass(frozen=True)
class Comparison:
    """A method against a baseline: the gain in points, the spread it is held against, the verdict."""

    gain: float
    spread: float | None
    verdict: Verdict


def summarise(values: Sequence[float]) -> SeedSummary:
    """The mean ± sample standard deviation of per-seed values (at least one)."""
    if not values:
        raise ValueError("summarise needs at least one value")
    std = statistics.stdev(values) if len(values) > 1 else None
    return SeedSummary(statistics.fmean(values), std, len(values))


def compare(method: SeedSummary, baseline: SeedSummary) -> Comparison:
    """Hold ``method.mean - baseline.mean`` against ``√(sd_method² + sd_baseline²)``."""
    gain = method.mean - baseline.mean
    if method.std is None or baseline.std is None:
        return Comparison(gain, None, "one seed")
    spread = math.hypot(method.std, baseline.std)
    if gain > spread:
        return Comparison(gain, spread, "gain")
    if gain < -spread:
        return Comparison(gain, spread, "loss")
    return Comparison(gain, spread, "within noise")


#: What each verdict says, after the numbers; ``{what}`` names the method's effect.
_WORDS: dict[Verdict, str] = {
    "gain": "larger than the spread: {what} helps here",
    "loss": "larger than the spread, the wrong way: {what} hurts here",
    "within noise": "within the spread: no difference this demonstration can show",
    "one seed": "one seed only: no spread to hold it against, so no verdict",
}


def describe(comparison: Comparison, what: str) -> str:
    """One line in words, e.g. ``+7.2 points (spread 2.1), larger than the spread: KD helps here``."""
    spread = "no spread" if comparison.spread is None else f"spread {comparison.spread:.1f}"
    words = _WORDS[comparison.verdict].format(what=what)
    return f"{comparison.gain:+.1f} points ({spread}), {words}"
