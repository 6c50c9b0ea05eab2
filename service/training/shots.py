"""Few-shot examples in training prompts, retrieved the way serving retrieves them.

An adapter trained only on prompts without examples got worse when served with them (cron 0.51 alone against
0.25 with 3 examples; issue 28), while the study this product follows found retrieved examples add to a
fine-tuned model. So a share of the training prompts carry 1..k examples, retrieved for the pair's request by
the same BM25 index serving uses (:class:`service.retrieval.ExampleIndex`) over the training pairs, never
the pair itself nor another pair with the same code; the rest carry none. The adapter then learns both prompt
shapes, and onboarding serves it with the shape its own evaluation found better.

Examples lengthen a training prompt about three times (NL2Bash: 71 -> 206 tokens a row), so they are spent
only where they carry the answer: before training, the base model's loss on held-out answers is measured with
the nearest k examples in their prompts and without (:func:`share_for`). Where they take off less than
``INFORMATIVE`` of it, no training prompt carries them. Measured on the base model (docs/ONBOARDING.md): cron
83%, flow 81%, logq 79%, sql 64%, shop 52%, NL2Bash 37%.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from service.grammars import Example
from service.retrieval import ExampleIndex

__all__ = ["INFORMATIVE", "SHARE", "RetrievedShots", "share_for", "taken_off"]

_SAME_CODE_SLACK = 8  # examples retrieved beyond k, for those left out for having the pair's code
#: The share of training prompts that carry examples where they are informative.
SHARE = 0.5
#: How much of the base model's loss on held-out answers the examples must take off to be trained with.
INFORMATIVE = 0.5


class RetrievedShots:
    """``shots(pair)``: the examples a training prompt for ``pair`` carries (often none)."""

    def __init__(self, pool: Sequence[Example], *, k: int, share: float, seed: int = 0) -> None:
        self.k, self.share = k, share
        self._index = ExampleIndex(pool)
        self._rng = random.Random(seed)

    def __call__(self, pair: Example) -> list[Example]:
        if self.k <= 0 or self._rng.random() >= self.share:
            return []
        return self.nearest(pair, self._rng.randint(1, self.k))

    def nearest(self, pair: Example, n: int) -> list[Example]:
        """The ``n`` examples nearest the pair's request, never the pair nor another pair with its code: an
        example whose code is the answer rewards copying the nearest example, which served with 3 examples
        copied a near miss's hour (cron, issue 28)."""
        found = self._index.search(pair.text, k=n + _SAME_CODE_SLACK)
        return [ex for ex in found if ex.code != pair.code][:n]


def taken_off(loss_without: float, loss_with: float) -> float:
    """The share of the base model's held-out loss the examples take off (0 when there is none to take)."""
    return 1 - loss_with / loss_without if loss_without > 0 else 0.0


def share_for(loss_without: float, loss_with: float) -> float:
    """The share of training prompts given examples, from the base model's held-out loss without and with them."""
    return SHARE if loss_without > 0 and taken_off(loss_without, loss_with) >= INFORMATIVE else 0.0
