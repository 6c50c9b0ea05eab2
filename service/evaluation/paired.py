"""Is one configuration better than another on the same pairs? The exact McNemar test.

Two configurations scored on the same held-out pairs differ only on the pairs one gets right and the other
does not (the discordant pairs): ``wins`` for the candidate, ``losses`` against it. Under "no difference"
each discordant pair goes either way with probability 1/2, so the two-sided p-value is twice the binomial
tail of the smaller count (at most 1). Comparing two intervals instead says little: 3/12 against 2/12 once
passed as a gain (issue 28); on the same pairs that is 1 win, 0 losses, p = 1.0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Paired", "mcnemar_exact", "min_pairs", "paired"]


@dataclass(frozen=True)
class Paired:
    """A candidate against a reference on the same ``n`` pairs."""

    n: int
    wins: int
    losses: int
    p_value: float

    @property
    def gain(self) -> float:
        """The candidate's exact match minus the reference's."""
        return (self.wins - self.losses) / self.n if self.n else 0.0


def mcnemar_exact(wins: int, losses: int) -> float:
    """Two-sided exact McNemar p-value for ``wins`` against ``losses`` discordant pairs."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired(candidate: Sequence[bool], reference: Sequence[bool]) -> Paired:
    """Compare per-pair hits of two configurations (the same pairs, in the same order)."""
    if len(candidate) != len(reference):
        raise ValueError(f"{len(candidate)} results against {len(reference)}: not the same pairs")
    wins = sum(c and not r for c, r in zip(candidate, reference, strict=True))
    losses = sum(r and not c for c, r in zip(candidate, reference, strict=True))
    return Paired(len(candidate), wins, losses, mcnemar_exact(wins, losses))


def min_pairs(margin: float, alpha: float) -> int:
    """The fewest held-out pairs on which a gain of ``margin`` can be significant at ``alpha`` at all: even
    when every discordant pair is a win, ``w`` wins give p = 2 / 2^w, so ``w`` must reach log2(2 / alpha), and
    ``margin * n`` wins must be that many."""
    wins = max(1, math.ceil(math.log2(2 / alpha)))
    return max(wins, math.ceil(wins / margin)) if margin > 0 else wins
