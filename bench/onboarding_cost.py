"""What an onboarding run on a serving replica costs the other tenants: ``python -m bench.onboarding_cost``.

Starts ``nl2dsl serve`` on the embedded model, then times another tenant's ``POST /generate`` (the same requests,
one at a time) in three phases of one run: before any onboarding run, while a run started through
``POST /onboarding`` trains (the child confined as the service confines it: nice 10, CPU and memory limits),
and after the run was stopped. Writes docs/ONBOARDING_COST.md: the medians, the ratios to "before", the command.
The chart's onboarding Job (a pod of its own) is the production path; this is what a single-replica user pays.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.results import ROOT, progress
from service.local_server import local_server

COMMAND = "python -m bench.onboarding_cost"
REQUESTS = 12
OUT = ROOT / "docs" / "ONBOARDING_COST.md"
BODY = {"dsl": "flow", "text": "when a form is submitted, post the answers to #sales", "max_tokens": 32,
        "tenant": "beta", "examples": 0}


def _timed(client: httpx.Client, n: int) -> list[float]:
    seconds = []
    for _ in range(n):
        started = time.perf_counter()
        response = client.post("/generate", json=BODY)
        response.raise_for_status()
        seconds.append(time.perf_counter() - started)
    return seconds


def _wait_for_stage(client: httpx.Client, job: str, stage: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/onboarding/{job}").json()
        if status["stage"] == stage or status["state"] != "running":
            return status
        time.sleep(2)
    raise TimeoutError(f"the run never reached {stage}")


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="nl2dsl-onboarding-cost-"))
    pairs = (ROOT / "data" / "flow" / "train.jsonl").read_text().splitlines()[:300]
    with local_server(env={"NL2DSL_ONBOARDING_DIR": str(work / "onboarding")}, log=work / "server.log") as url, \
            httpx.Client(base_url=url, timeout=600) as client:
        grammar = client.get("/dsls/flow").json()["grammar"]
        progress("warming up")
        _timed(client, 2)
        progress(f"before: {REQUESTS} requests")
        before = _timed(client, REQUESTS)
        run = client.post("/onboarding", json={"name": "flowcopy", "grammar": grammar, "pairs": "\n".join(pairs),
                                               "budget_s": 900, "heldout": 4, "max_tokens": 16, "examples": 0})
        run.raise_for_status()
        job = run.json()["id"]
        progress(f"onboarding run {job}: waiting for its training stage")
        status = _wait_for_stage(client, job, "train", timeout=900)
        assert status["state"] == "running", status
        progress(f"during training: {REQUESTS} requests")
        during = _timed(client, REQUESTS)
        still = client.get(f"/onboarding/{job}").json()
        client.delete(f"/onboarding/{job}")
        time.sleep(5)
        progress(f"after: {REQUESTS} requests")
        after = _timed(client, REQUESTS)
    rows = [("before any run", before), ("while a run trains", during), ("after the run was stopped", after)]
    base = statistics.median(before)
    lines = [
        "# What an onboarding run on a serving replica costs the other tenants",
        "",
        f"`{COMMAND}` (2-core CPU, embedded model, {time.strftime('%Y-%m-%d')}): another tenant's `POST /generate`",
        f"(flow, 32 tokens, no examples), {REQUESTS} requests one at a time in each phase of one run. The run was",
        "started through `POST /onboarding` and confined as the service confines it (nice 10, CPU-time and",
        f"address-space limits); it was in stage `{still['stage']}` when the middle phase ended.",
        "",
        "| phase | median s | p90 s | ratio to before |",
        "|---|---|---|---|",
    ]
    for label, seconds in rows:
        p90 = sorted(seconds)[int(0.9 * (len(seconds) - 1))]
        lines.append(f"| {label} | {statistics.median(seconds):.2f} | {p90:.2f} | "
                     f"{statistics.median(seconds) / base:.2f} |")
    lines += ["", "Training takes the cores the engine also uses; the lower priority keeps the engine first, not",
              "alone. The chart's onboarding Job (a pod and a GPU of its own) is the production path; on a",
              "single replica, run onboarding when the traffic allows it.", ""]
    OUT.write_text("\n".join(lines))
    (work / "samples.json").write_text(json.dumps(dict((label, s) for label, s in rows)))
    progress(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
