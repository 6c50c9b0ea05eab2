"""Cold start: from spawning ``nl2dsl serve`` to its first 200 on /readyz, and where that time goes.

``python -m bench.coldstart``: starts the service on the embedded model ``ROUNDS`` times, taking turns with a bare
Python process that only opens the engine (``open_engine``, as the service configures it) and reports the moment
it is up: the service against the engine alone; and, taking turns with both, the service with an eager engine
(``NL2DSL_CPU_COMPILE=false``): what the compiled engine adds to a start once its compiled model is cached. The
phases come from the service's log: its own lines carry milliseconds, vLLM's carry whole seconds. Each phase
ends at the first line of the next one.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
from datetime import datetime

from bench.results import ROOT, Comparison, progress, save
from service.local_server import local_server

COMMAND = "python -m bench.coldstart"
ROUNDS = 3
LOG = ROOT / "reports" / "bench" / "coldstart.log"
EAGER_LOG = ROOT / "reports" / "bench" / "coldstart-eager.log"

#: (phase that ends at this line, pattern of the line). In log order; a phase missing from a log is skipped.
MILESTONES = [
    ("Python imports and app set-up", r"nl2dsl starting the engine"),
    ("vLLM import and engine configuration", r"Resolved architecture"),
    ("engine-core process: spawn and imports", r"\(EngineCore pid=\d+\).*Initializing a V1 LLM engine"),
    # In the engine-core process when it computes the model (NL2DSL_CPU_ONE_PROCESS), else in a worker process.
    ("model runner set-up (a worker process: its spawn and imports)",
     r"\((Worker|EngineCore) pid=\d+\).*Starting to load model"),
    ("model weights", r"Loading weights took"),
    ("profile run, KV cache, engine warm-up", r"init engine \(profile, create kv cache, warmup model\) took"),
    ("engine handed over, first grammar + adapter generation", r"nl2dsl engine ready in"),
]


def _timestamp(line: str, year: int) -> float | None:
    """Seconds since the epoch of a log line: the service's (with ms) or vLLM's (whole seconds)."""
    if m := re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ", line):
        return datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S").timestamp() + int(m[2]) / 1000
    if m := re.search(r"\) \w+ (\d\d-\d\d \d\d:\d\d:\d\d) \[", line):
        return datetime.strptime(f"{year}-{m[1]}", "%Y-%m-%d %H:%M:%S").timestamp()
    return None


def phases(log: str, spawned: float, ready: float) -> dict[str, float]:
    """Seconds per phase of one start, from its log, the spawn time and the first ready answer."""
    year = datetime.fromtimestamp(spawned).year
    found: list[tuple[str, float]] = []
    lines = log.splitlines()
    for phase, pattern in MILESTONES:
        at = next((_timestamp(line, year) for line in lines if re.search(pattern, line)), None)
        if at is not None:
            found.append((phase, at))
    result, previous = {}, spawned
    for phase, at in found:
        result[phase] = max(0.0, at - previous)
        previous = max(previous, at)
    result["store sync and the first ready answer"] = max(0.0, ready - previous)
    return result


_ENGINE_ALONE = """
import asyncio
from service.config import Settings
from service.engine import open_engine
from service.model import resolve_model

async def main():
    settings = Settings()
    async with open_engine(settings, model=resolve_model(settings.model, settings.cache_dir)):
        print("up", flush=True)

asyncio.run(main())
"""


def engine_alone_s() -> float:
    """Seconds from spawning a bare Python process to its engine being up."""
    spawned = time.time()
    with subprocess.Popen([sys.executable, "-c", _ENGINE_ALONE], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True, cwd=ROOT) as process:
        for line in process.stdout:
            if line.strip() == "up":
                up = time.time()
                break
        else:
            raise RuntimeError("the engine did not start")
        process.wait(timeout=120)
    return up - spawned


def main() -> None:
    rounds: list[dict[str, float]] = []
    totals: list[float] = []
    alone: list[float] = []
    eager: list[float] = []
    for n in range(1, ROUNDS + 1):
        spawned = time.time()
        with local_server(log=LOG, poll_s=0.1):
            ready = time.time()
        totals.append(ready - spawned)
        rounds.append(phases(LOG.read_text(), spawned, ready))
        progress(f"round {n}/{ROUNDS}: service ready in {totals[-1]:.1f} s: "
                 + ", ".join(f"{k} {v:.1f}" for k, v in rounds[-1].items()))
        alone.append(engine_alone_s())
        progress(f"round {n}/{ROUNDS}: engine alone up in {alone[-1]:.1f} s")
        spawned = time.time()
        with local_server(env={"NL2DSL_CPU_COMPILE": "false"}, log=EAGER_LOG, poll_s=0.1):
            eager.append(time.time() - spawned)
        progress(f"round {n}/{ROUNDS}: service with an eager engine ready in {eager[-1]:.1f} s")
    facts = {"service cold start, rounds (s)": ", ".join(f"{t:.1f}" for t in totals),
             "engine alone, rounds (s)": ", ".join(f"{t:.1f}" for t in alone),
             "service cold start with an eager engine, rounds (s)": ", ".join(f"{t:.1f}" for t in eager)}
    for phase in rounds[0]:
        values = [r.get(phase, 0.0) for r in rounds]
        facts[f"cold start phase: {phase} (s)"] = round(statistics.median(values), 1)
    comparisons = [Comparison("cold start", "spawn to ready", statistics.median(totals), statistics.median(alone),
                              "s", ("nl2dsl serve, first 200 on /readyz", "a bare process opening the engine"),
                              higher_is_better=False, note=f"median of {ROUNDS} starts each, taking turns; "
                              "goal: the service ready within 30 s"),
                   Comparison("cold start", "spawn to ready, the compiled engine's cost", statistics.median(totals),
                              statistics.median(eager), "s", ("compiled engine (default)", "eager engine"),
                              higher_is_better=False, note="the compiled model loaded from its cache "
                              "(~/.cache/vllm), as every start after a machine's first")]
    save("coldstart", COMMAND, comparisons, facts)


if __name__ == "__main__":
    main()
