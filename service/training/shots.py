"""Few-shot examples in training prompts, retrieved the way serving retrieves them.

An adapter trained only on prompts without examples got worse when served with them (cron 0.51 alone against
0.25 with 3 examples; issue 28), while the study this product follows found retrieved examples add to a
fine-tuned model. So a share of the training prompts carry 1..k examples, retrieved for the pair's request by
the same BM25 index serving uses (:class:`service.retrieval.ExampleIndex`) over the training pairs, never
the pair itself nor another pair with the same code; the rest carry none. The adapter then learns both prompt
shapes, and onboarding serves it with the shape its own evaluation found better.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from service.grammars import Example
from service.retrieval import ExampleIndex

__all__ = ["RetrievedShots"]

_SAME_CODE_SLACK = 8  # examples retrieved beyond k, for those left out for having the pair's code


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
        # Never the pair, nor another pair with its code: an example whose code is the answer rewards copying the
        # nearest example, which served with 3 examples copied a near miss's hour (cron, issue 28).
        found = self._index.search(pair.text, k=n + _SAME_CODE_SLACK)
        return [ex for ex in found if ex.code != pair.code][:n]
