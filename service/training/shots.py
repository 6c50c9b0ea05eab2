"""Few-shot examples in training prompts, retrieved the way serving retrieves them.

An adapter trained only on prompts without examples got worse when served with them (cron 0.51 alone against
0.25 with 3 examples; issue 28), while the study this product follows found retrieved examples add to a
fine-tuned model. So a share of the training prompts carry 1..k examples, retrieved for the pair's request by
the same BM25 index serving uses (:class:`service.retrieval.ExampleIndex`) over the training pairs, never
the pair itself; the rest carry none. The adapter then learns both prompt shapes, and onboarding serves it
with the shape its own evaluation found better.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from service.grammars import Example
from service.retrieval import ExampleIndex

__all__ = ["RetrievedShots"]


class RetrievedShots:
    """``shots(pair)``: the examples a training prompt for ``pair`` carries (often none)."""

    def __init__(self, pool: Sequence[Example], *, k: int, share: float, seed: int = 0) -> None:
        self.k, self.share = k, share
        self._index = ExampleIndex(pool)
        self._rng = random.Random(seed)

    def __call__(self, pair: Example) -> list[Example]:
        if self.k <= 0 or self._rng.random() >= self.share:
            return []
        n = self._rng.randint(1, self.k)
        found = self._index.search(pair.text, k=n + 1)  # the index already leaves out the pair's own text
        return [ex for ex in found if ex != pair][:n]
