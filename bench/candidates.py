"""Candidates that agree: what 3 candidates add to quality and cost in latency and throughput, per DSL.

``python -m bench.candidates``: starts the service and sends the first ``N`` held-out requests of flow (with
flow-general) and sql (with sql-general), grammar-constrained, once with one greedy generation a request and
once with ``candidates: 3`` (the first greedy, two sampled at the service's ``candidate_temperature``):

- quality: exact, canonical and semantic match (the DSL's strongest score judged) on the same requests, the two
  ways compared pair by pair (exact McNemar), and how well each way's confidence is calibrated (raw: no
  adapter has a calibration yet) with the share and accuracy of answers at or above 0.8;
- cost: median latency at concurrency 1 (requests one at a time, the two ways taking turns) and 8, and
  generated tokens per second at concurrency 8 (every candidate's tokens count).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import replace

from bench.results import Comparison, progress, save
from service.config import PROJECT_ROOT
from service.evaluation.confidence import reliability
from service.evaluation.paired import paired
from service.evaluation.runner import Outcome, RunConfig, format_rate, run, summarize
from service.grammars import GrammarRegistry, load_examples
from service.local_server import local_server

COMMAND = "python -m bench.candidates"
N = 60
ONE_AT_A_TIME = 8
CANDIDATES = 3
CASES = {
    "flow": RunConfig("flow-general", "flow", adapter="flow-general", examples=0, max_tokens=192),
    "sql": RunConfig("sql-general", "sql", adapter="sql-general", examples=0, max_tokens=96),
}


async def _timed(url: str, config: RunConfig, rows: list, *, concurrency: int) -> tuple[list[Outcome], float]:
    started = time.perf_counter()
    outcomes = await run(url, config, rows, concurrency=concurrency, progress=False)
    return outcomes, time.perf_counter() - started


def main() -> None:
    grammars = GrammarRegistry(PROJECT_ROOT / "grammars").load()
    comparisons: list[Comparison] = []
    facts: dict[str, str] = {}
    with local_server(log=PROJECT_ROOT / "reports" / "bench" / "candidates.log", timeout=600,
                      env={"NL2DSL_TENANT_MAX_CONCURRENCY": "64"}) as url:
        for dsl, one in CASES.items():
            several = replace(one, label=f"{one.label}, {CANDIDATES} candidates", candidates=CANDIDATES)
            rows = load_examples(PROJECT_ROOT / "data" / dsl / "test.jsonl")[:N]
            progress(f"{dsl}: {N} requests at concurrency 8, one generation and {CANDIDATES} candidates")
            scored = {c.label: asyncio.run(_timed(url, c, rows, concurrency=8)) for c in (one, several)}
            progress(f"{dsl}: {ONE_AT_A_TIME} requests one at a time, the two ways taking turns")
            alone: dict[str, list[float]] = {one.label: [], several.label: []}
            for row in rows[:ONE_AT_A_TIME]:
                for config in (one, several):
                    outcome = asyncio.run(run(url, config, [row], concurrency=1, progress=False))[0]
                    alone[config.label].append(outcome.latency_s)
            grammar = grammars.get(dsl)
            summaries = {label: summarize(outcomes, grammar) for label, (outcomes, _) in scored.items()}
            base, voted = summaries[one.label], summaries[several.label]
            for label, s in summaries.items():
                facts[f"{dsl} ({label}): exact / canonical / semantic match [95%]"] = " / ".join(
                    format_rate(v, ci) for v, ci in ((s.exact_match, s.exact_match_ci),
                                                     (s.canonical_match, s.canonical_match_ci),
                                                     (s.semantic_match, s.semantic_match_ci)))
                r = reliability(s.confidences, s.judged_hits)
                share, right = r.above[1][1], r.above[1][2]
                facts[f"{dsl} ({label}): raw confidence"] = (
                    f"calibration error {r.ece:.3f}; answers >= 0.8: {share:.2f} of requests, "
                    f"{'-' if right is None else f'{right:.2f}'} right")
            test = paired(voted.judged_hits, base.judged_hits)
            comparisons.append(Comparison(
                "candidates (quality)", f"{dsl}: {base.judged_by} match", voted.judged, base.judged, "",
                (f"{CANDIDATES} candidates", "one generation"),
                note=f"n = {test.n}, same requests; {test.wins} won, {test.losses} lost (p = {test.p_value:.2f})"))
            one_s, several_s = (statistics.median(alone[c.label]) for c in (one, several))
            comparisons.append(Comparison(
                "candidates (cost)", f"{dsl}: latency at concurrency 1", several_s, one_s, "s",
                (f"{CANDIDATES} candidates", "one generation"), higher_is_better=False,
                note=f"median of {ONE_AT_A_TIME} requests, taking turns"))
            p50 = {label: statistics.median(o.latency_s for o in outcomes) for label, (outcomes, _) in scored.items()}
            comparisons.append(Comparison(
                "candidates (cost)", f"{dsl}: latency at concurrency 8", p50[several.label], p50[one.label], "s",
                (f"{CANDIDATES} candidates", "one generation"), higher_is_better=False, note=f"median of {N}"))
            rate = {label: sum(o.completion_tokens for o in outcomes) / seconds
                    for label, (outcomes, seconds) in scored.items()}
            comparisons.append(Comparison(
                "candidates (cost)", f"{dsl}: generated tokens per second at concurrency 8", rate[several.label],
                rate[one.label], "tokens/s", (f"{CANDIDATES} candidates", "one generation"),
                note="every candidate's tokens count"))
    save("candidates", COMMAND, comparisons, facts)


if __name__ == "__main__":
    main()
