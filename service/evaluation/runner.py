"""Send a test set through ``POST /generate`` with bounded concurrency and score what comes back."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from tqdm import tqdm

from service.client import APIError, AsyncNL2DSLClient
from service.grammars import Example

__all__ = ["Outcome", "RunConfig", "run", "summarize"]


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


@dataclass
class Outcome:
    gold: str
    code: str
    valid: bool
    finish_reason: str
    latency_s: float
    completion_tokens: int = 0
    error: str | None = None

    @property
    def exact(self) -> bool:
        return self.code.strip() == self.gold.strip()


async def run(url: str, config: RunConfig, rows: Sequence[Example], *, concurrency: int = 8,
              progress: bool = True) -> list[Outcome]:
    """Outcomes in the order of ``rows``; an API error is an outcome too (never drops a row)."""
    limit = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(rows), desc=config.label, disable=not progress, unit="req")

    async def one(client: AsyncNL2DSLClient, row: Example) -> Outcome:
        async with limit:
            try:
                r = await client.generate(dsl=config.dsl, text=row.text, context=row.context, tenant=config.tenant,
                                          adapter=config.adapter, examples=config.examples,
                                          constrained=config.constrained, max_tokens=config.max_tokens,
                                          temperature=0.0)
                return Outcome(row.code, r.code, r.valid, r.finish_reason, r.timings.total, r.usage.completion_tokens)
            except APIError as exc:
                return Outcome(row.code, "", False, "error", 0.0, error=str(exc))
            finally:
                bar.update()

    async with AsyncNL2DSLClient(url, timeout=600) as client:
        outcomes = await asyncio.gather(*(one(client, row) for row in rows))
    bar.close()
    return list(outcomes)


@dataclass
class Summary:
    n: int
    exact_match: float
    valid_rate: float
    #: Share of outputs that finished by themselves ("stop") and still do not parse: 0 under the constraint.
    grammar_violation_rate: float
    #: Share of outputs cut at max_tokens (the only way constrained output fails to parse).
    cut_rate: float
    error_rate: float
    p50_s: float
    p95_s: float
    extra: dict[str, float] = field(default_factory=dict)


def summarize(outcomes: Sequence[Outcome]) -> Summary:
    n = len(outcomes)
    latencies = sorted(o.latency_s for o in outcomes if o.error is None) or [0.0]
    return Summary(
        n=n,
        exact_match=sum(o.exact for o in outcomes) / n,
        valid_rate=sum(o.valid for o in outcomes) / n,
        grammar_violation_rate=sum(o.finish_reason == "stop" and not o.valid for o in outcomes) / n,
        cut_rate=sum(o.finish_reason == "length" for o in outcomes) / n,
        error_rate=sum(o.error is not None for o in outcomes) / n,
        p50_s=statistics.median(latencies),
        p95_s=latencies[min(len(latencies) - 1, round(0.95 * (len(latencies) - 1)))],
    )
