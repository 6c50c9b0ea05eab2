"""Candidates that agree.

``candidates: n`` samples n constrained programs in one engine batch (the first greedy unless the request asks
for a temperature, the others at ``candidate_temperature``). The answer is the candidate whose meaning most
candidates share: programs are grouped by their DSL's canonical form (:mod:`service.grammars.comparison`;
unordered rules sorted, literals normalized), one that does not parse is a group of its own text; a tie goes to
the group whose best candidate the model found likelier (mean log-probability per token).

Each answer's confidence (:mod:`service.evaluation.confidence`) counts the share of candidates that agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from service.grammars import Grammar, ParseResult, canonical

__all__ = ["Sample", "Vote", "vote"]


@dataclass(frozen=True)
class Sample:
    """One candidate as generated and parsed."""

    code: str
    parsed: ParseResult
    logprob: float
    completion_tokens: int
    finish_reason: str

    @property
    def mean_logprob(self) -> float:
        return self.logprob / self.completion_tokens if self.completion_tokens else 0.0


@dataclass(frozen=True)
class Vote:
    """The chosen candidate, and each candidate's votes (how many share its meaning, itself included)."""

    winner: int
    votes: tuple[int, ...]


def vote(samples: Sequence[Sample], grammar: Grammar) -> Vote:
    """The candidate whose meaning most candidates share (parsing ones before any that does not parse)."""
    keys = [("tree", repr(canonical(s.parsed.tree, grammar.compare))) if s.parsed.valid and s.parsed.tree is not None
            else ("text", s.code.strip()) for s in samples]
    votes = tuple(keys.count(key) for key in keys)
    winner = max(range(len(samples)), key=lambda i: (samples[i].parsed.valid, votes[i], samples[i].mean_logprob))
    return Vote(winner, votes)
