"""Send a test set through ``POST /generate`` with bounded concurrency and score what comes back."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from nl2dsl_client import AsyncNL2DSLClient, NL2DSLError

from service.evaluation.meaning import match
from service.evaluation.metrics import exact_match, hallucinations, parsed_tree_similarity, string_similarity
from service.grammars import Example, Grammar
from service.progress import progress_bar

#: Retries per request when the service answers 429 or 503 (the client waits as the service says).
_RETRIES = 4
#: The error type of a request the tenant's safety policy refuses: an answer (the same for every configuration:
#: no code), not a failed measurement.
_REFUSED = "safety_blocked"

__all__ = ["Outcome", "RunConfig", "Summary", "format_rate", "run", "score", "score_together", "summarize",
           "wilson_interval"]


@dataclass(frozen=True)
class RunConfig:
    """One configuration of the service to score: which DSL, tenant, adapter, examples, constraint."""

    label: str
    dsl: str
    tenant: str | None = None
    adapter: str | None = None
    examples: int | None = None
    constrained: bool = True
    max_tokens: int = 256
    #: Candidates per request (POST /generate's ``candidates``); 1: one greedy generation.
    candidates: int = 1


@dataclass
class Outcome:
    gold: str
    code: str
    valid: bool
    finish_reason: str
    latency_s: float
    completion_tokens: int = 0
    error: str | None = None
    context: str | None = None
    #: The service's confidence in the answer.
    confidence: float = 0.0

    @property
    def exact(self) -> bool:
        return exact_match(self.code, self.gold)


async def run(url: str, config: RunConfig, rows: Sequence[Example], *, concurrency: int = 8,
              progress: bool = True, api_key: str | None = None,
              limit: asyncio.Semaphore | None = None, bar=None) -> list[Outcome]:  # noqa: ANN001 - a progress bar
    """Outcomes in the order of ``rows``; an API error is an outcome too (never drops a row).

    ``limit``: requests in flight, shared with other runs (default: ``concurrency`` of this run's own);
    ``bar``: a progress bar shared with them (default: one of this run's own).
    """
    limit = limit or asyncio.Semaphore(concurrency)
    own_bar = bar is None
    bar = bar if bar is not None else progress_bar(total=len(rows), desc=config.label, unit="req", enabled=progress)

    async def one(client: AsyncNL2DSLClient, row: Example) -> Outcome:
        async with limit:
            try:
                r = await client.generate(dsl=config.dsl, text=row.text, context=row.context, tenant=config.tenant,
                                          adapter=config.adapter, examples=config.examples,
                                          constrained=config.constrained, max_tokens=config.max_tokens,
                                          temperature=0.0,
                                          candidates=config.candidates if config.candidates > 1 else None)
                return Outcome(row.code, r.code, r.valid, r.finish_reason, r.timings.total,
                               r.usage.completion_tokens, context=row.context, confidence=r.confidence)
            except NL2DSLError as exc:
                if getattr(exc, "type", None) == _REFUSED:  # the tenant's policy answered: no code, not a failure
                    return Outcome(row.code, "", False, "refused", 0.0, context=row.context)
                return Outcome(row.code, "", False, "error", 0.0, error=str(exc), context=row.context)
            finally:
                bar.update()

    async with AsyncNL2DSLClient(url, api_key=api_key, timeout=600, max_retries=_RETRIES) as client:
        outcomes = await asyncio.gather(*(one(client, row) for row in rows))
    if own_bar:
        bar.close()
    return list(outcomes)


def wilson_interval(hits: int, n: int, *, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a rate of ``hits`` in ``n`` (good at small n and rates near 0 or 1)."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class Summary:
    n: int
    exact_match: float
    #: The 95% interval of ``exact_match`` (Wilson): configurations whose intervals overlap are not ranked.
    exact_match_ci: tuple[float, float]
    valid_rate: float
    #: Share of outputs that finished by themselves ("stop") and still do not parse: 0 under the constraint.
    grammar_violation_rate: float
    #: Share of outputs cut at max_tokens (the only way constrained output fails to parse).
    cut_rate: float
    #: Share of requests that failed to be measured (429s past retries, a dead engine...).
    error_rate: float
    p50_s: float
    p95_s: float
    #: Tokens generated per request, on average.
    completion_tokens: float = 0.0
    string_similarity: float | None = None
    tree_similarity: float | None = None
    #: Operation (flow) or table (sql) names that do not exist, per name used.
    name_hallucination_rate: float | None = None
    #: Parameter keys (flow) or columns (sql) that do not exist, per key used.
    key_hallucination_rate: float | None = None
    #: Each pair's exact match, in the order of the pairs: what a paired test compares
    #: (:mod:`service.evaluation.paired`).
    hits: tuple[bool, ...] = ()
    #: The same canonical form (service.grammars.comparison), and its 95% interval.
    canonical_match: float | None = None
    canonical_match_ci: tuple[float, float] | None = None
    #: The same computed meaning, for DSLs that declare a plug-in (service.evaluation.meaning).
    semantic_match: float | None = None
    semantic_match_ci: tuple[float, float] | None = None
    #: The strongest score the DSL declares ("exact" when scored without its grammar) and each pair's hit by
    #: it: what the onboarding gate judges on.
    judged_by: str = "exact"
    judged_hits: tuple[bool, ...] = ()
    #: The service's confidence in each answer, in the order of the pairs (service.evaluation.confidence).
    confidences: tuple[float, ...] = ()
    #: Share of requests the tenant's safety policy refused (answered without code; counted wrong).
    refusal_rate: float = 0.0
    #: What the service answered for each pair, in their order: for the measures a dataset's own paper uses
    #: (NL2Bash's template match, :mod:`service.demo_data.nl2bash`), computed afterwards.
    outputs: tuple[str, ...] = ()

    @property
    def judged(self) -> float:
        """The rate of the score the DSL is judged by."""
        return getattr(self, f"{self.judged_by}_match")


def summarize(outcomes: Sequence[Outcome], grammar: Grammar | None = None) -> Summary:
    """Rates over ``outcomes``; with the DSL's ``grammar`` also similarities and hallucination rates."""
    n = len(outcomes)
    latencies = sorted(o.latency_s for o in outcomes if o.error is None) or [0.0]
    scores: dict[str, object] = {}
    hits = sum(o.exact for o in outcomes)
    if grammar is not None:
        found = [hallucinations(grammar, o.code, context=o.context) for o in outcomes]
        names, keys = sum(h.names for h in found), sum(h.keys for h in found)
        parses = [(grammar.parse(o.code), grammar.parse(o.gold)) for o in outcomes]  # once, for every score
        matches = [match(grammar, o.code, o.gold, context=o.context, parsed=p) for o, p in zip(outcomes, parses,
                                                                                               strict=True)]
        judged_by = grammar.compare.strongest()
        scores = {
            **_rate("canonical_match", [m.canonical for m in matches]),
            **(_rate("semantic_match", [bool(m.semantic) for m in matches]) if judged_by == "semantic" else {}),
            "judged_by": judged_by,
            "judged_hits": tuple(bool(getattr(m, judged_by)) for m in matches),
            "string_similarity": sum(string_similarity(o.code, o.gold) for o in outcomes) / n,
            "tree_similarity": sum(parsed_tree_similarity(*p) for p in parses) / n,
            "name_hallucination_rate": sum(h.bad_names for h in found) / names if names else 0.0,
            "key_hallucination_rate": sum(h.bad_keys for h in found) / keys if keys else 0.0,
        }
    return Summary(
        n=n,
        exact_match=hits / n,
        exact_match_ci=wilson_interval(hits, n),
        valid_rate=sum(o.valid for o in outcomes) / n,
        grammar_violation_rate=sum(o.finish_reason == "stop" and not o.valid for o in outcomes) / n,
        cut_rate=sum(o.finish_reason == "length" for o in outcomes) / n,
        error_rate=sum(o.error is not None for o in outcomes) / n,
        p50_s=statistics.median(latencies),
        p95_s=latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
        completion_tokens=sum(o.completion_tokens for o in outcomes) / n,
        hits=tuple(o.exact for o in outcomes),
        confidences=tuple(o.confidence for o in outcomes),
        refusal_rate=sum(o.finish_reason == "refused" for o in outcomes) / n,
        outputs=tuple(o.code for o in outcomes),
        **({"judged_hits": tuple(o.exact for o in outcomes)} | scores),
    )


def format_rate(value: float | None, interval: tuple[float, float] | None) -> str:
    """A score and its 95% interval as a table cell ("0.420 (0.33-0.52)"); "-" for a score the DSL lacks."""
    if value is None or interval is None:
        return "-"
    return f"{value:.3f} ({interval[0]:.2f}-{interval[1]:.2f})"


def _rate(name: str, hits: Sequence[bool]) -> dict[str, object]:
    """A score's rate over the pairs and its 95% interval, as :class:`Summary` fields."""
    return {name: sum(hits) / len(hits), f"{name}_ci": wilson_interval(sum(hits), len(hits))}


def score(url: str, config: RunConfig, rows: Sequence[Example], grammar: Grammar | None, *, concurrency: int,
          api_key: str | None = None, where: str = "") -> Summary:
    """Run ``rows`` through the service as ``config`` says and summarize them; prints one line per run."""
    return score_together(url, [config], rows, grammar, concurrency=concurrency, api_key=api_key, where=where)[0]


def score_together(url: str, configs: Sequence[RunConfig], rows: Sequence[Example], grammar: Grammar | None, *,
                   concurrency: int, api_key: str | None = None, where: str = "") -> list[Summary]:
    """:func:`score` for several configurations at once: their requests interleave, ``concurrency`` in flight
    in all (what the service lets one tenant have), so the engine's batches stay full as configurations end."""
    async def together() -> list[list[Outcome]]:
        limit = asyncio.Semaphore(concurrency)
        # One bar for all: bars drawn at once interleave in a log.
        bar = progress_bar(total=len(configs) * len(rows), desc=f"scoring {len(configs)} configurations",
                           unit="req")
        try:
            return await asyncio.gather(*(run(url, c, rows, api_key=api_key, limit=limit, bar=bar)
                                          for c in configs))
        finally:
            bar.close()

    summaries = []
    for config, outcomes in zip(configs, asyncio.run(together()), strict=True):
        summary = summarize(outcomes, grammar)
        lo, hi = summary.exact_match_ci
        print(f"{config.label:<32}{f' on {where}' if where else ''} "
              f"{'constrained' if config.constrained else 'free'} n={summary.n} exact={summary.exact_match:.3f} "
              f"[{lo:.2f}, {hi:.2f}]{_meaning(summary)} tree={summary.tree_similarity or 0:.3f} "
              f"valid={summary.valid_rate:.3f} "
              f"finished-not-parsed={summary.grammar_violation_rate:.3f} cut={summary.cut_rate:.3f} "
              f"errors={summary.error_rate:.3f} p50={summary.p50_s:.2f}s", flush=True)
        summaries.append(summary)
    return summaries


def _meaning(summary: Summary) -> str:
    """The canonical and semantic matches of a log line, where the summary has them."""
    return "".join(f" {name}={value:.3f}" for name, value in (("canonical", summary.canonical_match),
                                                              ("semantic", summary.semantic_match))
                   if value is not None)
