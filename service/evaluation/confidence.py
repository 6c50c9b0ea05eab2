"""A confidence to act on: a score in [0, 1] for each answer, calibrated on the adapter's own held-out pairs.

The raw score is made from what the engine already gives: the model's mean per-token probability of the code
(``exp`` of its mean log-probability, before the grammar's mask) and, with candidates, the share of them that
agree (:mod:`service.api.generate.candidates`). Onboarding fits a :class:`Calibration` (Platt scaling) of that
score on the adapter's held-out answers and keeps it in the adapter's manifest (``confidence: {a, b}``), so that
"0.8" means right about 80% of the time; an adapter without one answers the raw score. :func:`reliability`
says how well it is calibrated (expected calibration error) and what a product team can do with it ("answers
above 0.8 are right X% of the time and are Y% of requests").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Calibration", "Reliability", "raw_confidence", "reliability"]


def raw_confidence(mean_logprob: float, *, valid: bool = True, votes: int = 1, candidates: int = 1) -> float:
    """The model's mean per-token probability of the code, times the share of candidates that agree (0 for code
    that does not parse)."""
    if not valid:
        return 0.0
    return math.exp(min(0.0, mean_logprob)) * votes / max(1, candidates)


@dataclass(frozen=True)
class Calibration:
    """Platt scaling of the raw score: ``sigmoid(a * logit(raw) + b)``, fitted on held-out pairs."""

    a: float = 1.0
    b: float = 0.0

    @classmethod
    def of(cls, manifest_entry: object) -> Calibration | None:
        """The calibration an adapter's manifest records (``confidence: {a, b}``); None when it has none."""
        if not isinstance(manifest_entry, dict):
            return None
        a, b = manifest_entry.get("a"), manifest_entry.get("b")
        if not all(isinstance(v, int | float) and math.isfinite(v) and abs(v) <= 100 for v in (a, b)):
            return None
        return cls(float(a), float(b))

    def __call__(self, raw: float) -> float:
        p = min(1 - 1e-6, max(1e-6, raw))
        z = self.a * math.log(p / (1 - p)) + self.b
        return 1 / (1 + math.exp(-max(-50.0, min(50.0, z))))

    @classmethod
    def fit(cls, raw: Sequence[float], right: Sequence[bool], *, steps: int = 500) -> Calibration:
        """Least log-loss ``a``, ``b`` on ``(raw score, was it right)`` pairs (gradient descent; bounded steps)."""
        xs = [math.log(min(1 - 1e-6, max(1e-6, r)) / (1 - min(1 - 1e-6, max(1e-6, r)))) for r in raw]
        ys = [1.0 if y else 0.0 for y in right]
        a, b, rate = 1.0, 0.0, 0.1
        n = max(1, len(xs))
        for _ in range(steps):
            grad_a = grad_b = 0.0
            for x, y in zip(xs, ys, strict=True):
                p = 1 / (1 + math.exp(-max(-50.0, min(50.0, a * x + b))))
                grad_a += (p - y) * x / n
                grad_b += (p - y) / n
            a, b = max(-100.0, min(100.0, a - rate * grad_a)), max(-100.0, min(100.0, b - rate * grad_b))
        return cls(a, b)


@dataclass(frozen=True)
class Reliability:
    """How confidences and rightness agree on a set of answers."""

    n: int
    #: Expected calibration error over ten equal-width bins: the mean gap between confidence and accuracy.
    ece: float
    #: (threshold, share of answers at or above it, how many of those are right), for 0.5, 0.8 and 0.9.
    above: tuple[tuple[float, float, float | None], ...]


def reliability(confidences: Sequence[float], right: Sequence[bool], *,
                thresholds: Sequence[float] = (0.5, 0.8, 0.9)) -> Reliability:
    """The calibration error and the thresholds' table of ``confidences`` against ``right``."""
    n = len(confidences)
    if n == 0:
        return Reliability(0, 0.0, tuple((t, 0.0, None) for t in thresholds))
    bins: dict[int, list[tuple[float, bool]]] = {}
    for c, r in zip(confidences, right, strict=True):
        bins.setdefault(min(9, int(c * 10)), []).append((c, r))
    ece = sum(abs(sum(c for c, _ in b) - sum(r for _, r in b)) for b in bins.values()) / n
    above = []
    for t in thresholds:
        kept = [r for c, r in zip(confidences, right, strict=True) if c >= t]
        above.append((t, len(kept) / n, sum(kept) / len(kept) if kept else None))
    return Reliability(n, ece, tuple(above))
