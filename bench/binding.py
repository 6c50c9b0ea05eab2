"""Which cores compute the model: every core vs vLLM's own rule, at concurrency 1, 8 and 32.

``python -m bench.binding``: vLLM's CPU backend pins its compute threads (``VLLM_CPU_OMP_THREADS_BIND``). Its
"auto" rule keeps one core per engine worker for its scheduler process, which on a 2-core machine leaves the
model one core; "all cores" computes on every core this process may use, the scheduler and the HTTP server
sharing them. A binding is fixed when the engine starts, so each round starts one engine per binding, in turn
(A, B, A, B), and measures the same flow-general requests at each concurrency on the raw engine.
"""

from __future__ import annotations

import asyncio
import os
import statistics

from bench import workload
from bench.results import Comparison, progress, save
from service.config import Settings
from service.engine import open_engine
from service.engine.cpu import cpu_threads_bind

COMMAND = "python -m bench.binding"
ROUNDS = 3
#: Concurrency -> requests in one measurement.
LOADS = {1: 4, 8: 16, 32: 32}
MAX_TOKENS = 48


async def _measure(binding: str, model: str, prompts: list) -> dict[int, float]:
    """Tokens/s at each concurrency on a fresh engine bound as ``binding``."""
    async with open_engine(Settings(cpu_threads_bind=binding), model=model) as engine:
        jobs = [workload.job(p, max_tokens=MAX_TOKENS) for p in prompts]
        await workload.run_raw(engine.llm, jobs[:4], concurrency=4)  # grammar and adapter set-up, unrecorded
        result = {}
        for concurrency, n in LOADS.items():
            stats = await workload.run_raw(engine.llm, jobs[:n], concurrency=concurrency)
            result[concurrency] = stats.tokens_per_s
            progress(f"  {binding:>8}: concurrency {concurrency:>2}: {stats.tokens_per_s:.1f} tokens/s")
        return result


async def main_async() -> None:
    settings = Settings()
    serving = workload.serving(settings)
    prompts = await workload.prompts(serving, max(LOADS.values()), adapter="flow-general")
    bindings = {"all cores": cpu_threads_bind("all"), "vLLM auto": "auto"}
    progress(f"{len(os.sched_getaffinity(0))} cores; bindings {bindings}")
    values: dict[str, dict[int, list[float]]] = {name: {c: [] for c in LOADS} for name in bindings}
    for round_ in range(1, ROUNDS + 1):
        for name, binding in bindings.items():
            progress(f"round {round_}/{ROUNDS}: {name} ({binding})")
            for concurrency, tokens_per_s in (await _measure(binding, serving.engine.model, prompts)).items():
                values[name][concurrency].append(tokens_per_s)
    comparisons = []
    for concurrency in LOADS:
        every, auto = (values[name][concurrency] for name in bindings)
        comparisons.append(Comparison(
            "cpu threads", f"compute on every core vs vLLM's auto binding, concurrency {concurrency}",
            statistics.median(every), statistics.median(auto), "tokens/s", ("all cores", "vLLM auto"),
            note=f"rounds: all cores {', '.join(f'{v:.1f}' for v in every)}; "
                 f"auto {', '.join(f'{v:.1f}' for v in auto)}"))
    save("binding", COMMAND, comparisons, {"cores": len(os.sched_getaffinity(0)), "bindings": bindings})


def main() -> None:
    asyncio.run(main_async())


if __name__ == "__main__":
    main()
