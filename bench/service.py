"""The service's own cost: ``POST /generate`` over HTTP against the raw AsyncLLM on the same prompts.

``python -m bench.service``: starts the service (``nl2dsl serve`` on the embedded model) and, in this process, a
raw AsyncLLM configured the same way. Both get the same
held-out flow requests (the raw engine gets the token ids, grammar and adapter the service's request path
builds), greedy, grammar-constrained, flow-general, at concurrency 1, 8 and 32, taking turns after one
unrecorded round each (so both engines have the prompts in their prefix caches alike).
"""

from __future__ import annotations

import asyncio
import time

import httpx

from bench import workload
from bench.results import ROOT, Comparison, interleaved, progress, save
from service.config import Settings
from service.engine import open_engine
from service.local_server import local_server

COMMAND = "python -m bench.service"
REPEATS = 3
MAX_TOKENS = 48
#: (concurrency, requests per run)
LOADS = ((1, 4), (8, 16), (32, 32))


async def main_async() -> None:
    settings = Settings()
    serving = workload.serving(settings)
    rows = workload.test_rows(max(n for _, n in LOADS))
    bodies = [{"dsl": "flow", "text": r["text"], "adapter": "flow-general", "max_tokens": MAX_TOKENS} for r in rows]
    jobs = [workload.job(p) for p in await workload.prompts(serving, len(rows), adapter="flow-general",
                                                      max_tokens=MAX_TOKENS)]
    facts: dict = {}
    comparisons: list[Comparison] = []
    progress("starting the service (its cold start is bench.coldstart's)")
    env = {"NL2DSL_TENANT_MAX_CONCURRENCY": "64", "NL2DSL_AUTH": "off"}
    with local_server(env=env, log=ROOT / "reports" / "bench" / "service.log") as url:
        progress("starting the raw engine in this process")
        async with open_engine(settings, model=serving.engine.model) as engine, \
                httpx.AsyncClient(base_url=url, timeout=600) as client:
            for concurrency, n in LOADS:
                progress(f"concurrency {concurrency}: {n} requests, service vs raw engine")
                checked: dict[str, int] = {}
                medians = await interleaved({
                    "service": _service_rps(client, bodies[:n], concurrency, checked),
                    "raw": _raw_rps(engine.llm, jobs[:n], concurrency, checked),
                }, REPEATS, warmup=True)
                # Greedy outputs should match token for token; batch order can flip a near-tie on the CPU, so
                # a difference is reported next to the ratio rather than thrown away with the run.
                facts[f"output tokens at concurrency {concurrency} (service / raw)"] = \
                    f"{checked['service']} / {checked['raw']}"
                comparisons.append(Comparison(
                    "service vs raw engine", f"concurrency {concurrency} ({n} requests)", medians["service"],
                    medians["raw"], "requests/s", ("POST /generate over HTTP", "raw AsyncLLM"), goal=">= 0.95",
                    note="same prompts, adapter, grammar and outputs"))
    save("service", COMMAND, comparisons, facts)


def _service_rps(client: httpx.AsyncClient, bodies: list[dict], concurrency: int, checked: dict):
    async def case() -> float:
        gate = asyncio.Semaphore(concurrency)

        async def one(body: dict) -> int:
            async with gate:
                r = await client.post("/generate", json=body)
                r.raise_for_status()
                return r.json()["usage"]["completion_tokens"]

        started = time.perf_counter()
        tokens = await asyncio.gather(*(one(b) for b in bodies))
        elapsed = time.perf_counter() - started
        checked["service"] = sum(tokens)
        return len(bodies) / elapsed

    return case


def _raw_rps(llm, jobs: list[workload.Job], concurrency: int, checked: dict):
    async def case() -> float:
        stats = await workload.run_raw(llm, jobs, concurrency=concurrency)
        checked["raw"] = stats.output_tokens
        return len(jobs) / stats.wall_s

    return case


def main() -> None:
    asyncio.run(main_async())


if __name__ == "__main__":
    main()
