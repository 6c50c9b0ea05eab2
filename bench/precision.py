"""Quality at bfloat16 against float32: the same held-out requests through ``POST /generate`` at both precisions.

``python -m bench.precision``: starts the service at float32 and then at bfloat16 (``NL2DSL_DTYPE``), one after
the other on one fresh store, and sends each the same ``N`` held-out requests of three DSLs, greedy and
grammar-constrained:

- flow with the shipped flow-general adapter, sql with sql-general (a LoRA adapter at each precision);
- cron, the onboarding example (``data/onboarding/cron``): its grammar published through ``POST /dsls`` with its
  first 900 pairs as retrieval examples, the last ``N`` pairs asked of the base model with 3 retrieved examples.

Per DSL and precision: exact match and valid rate with 95% intervals, and the two precisions on the same pairs
(exact McNemar test, how many outputs are identical). The speed side of the choice is ``bench.cpu_peer``.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from dataclasses import asdict

from nl2dsl_client import NL2DSLClient

from bench.results import ROOT, Comparison, progress, save
from service.config import PROJECT_ROOT
from service.evaluation.paired import paired
from service.evaluation.runner import Outcome, RunConfig, run, summarize, wilson_interval
from service.grammars import Example, load_examples
from service.local_server import local_server

COMMAND = "python -m bench.precision"
N = 100
PRECISIONS = ("float32", "bfloat16")
CRON = PROJECT_ROOT / "data" / "onboarding" / "cron"
CASES = {  # DSL -> the configuration scored on its held-out requests
    "flow": RunConfig("flow-general", "flow", adapter="flow-general", examples=0, max_tokens=192),
    "sql": RunConfig("sql-general", "sql", adapter="sql-general", examples=0, max_tokens=96),
    "cron": RunConfig("base + 3 examples", "cron", adapter="base", examples=3, max_tokens=32),
}


def test_rows() -> dict[str, list[Example]]:
    """The first ``N`` held-out requests of flow and sql, the last ``N`` pairs of cron."""
    rows = {dsl: load_examples(PROJECT_ROOT / "data" / dsl / "test.jsonl")[:N] for dsl in ("flow", "sql")}
    rows["cron"] = load_examples(CRON / "pairs.jsonl")[-N:]
    return rows


def publish_cron(url: str) -> None:
    """The cron grammar and its first 900 pairs (never the scored ones) as a shared DSL with retrieval examples."""
    pairs = load_examples(CRON / "pairs.jsonl")[:-N]
    with NL2DSLClient(url, timeout=120) as client:
        client.upload_dsl(name="cron", grammar=(CRON / "cron.lark").read_text(),
                          description="five-field cron schedules (minute hour day-of-month month day-of-week)")
        added = client.add_examples("cron", "".join(json.dumps({"text": p.text, "code": p.code}) + "\n"
                                                    for p in pairs))
    if added["added"] != len(pairs):
        raise RuntimeError(f"cron: {added['added']} of {len(pairs)} examples added: {added['rejected'][:3]}")


def score(url: str, rows: dict[str, list[Example]]) -> dict[str, list[Outcome]]:
    """Every DSL's requests at once (the engine batches them), outcomes in the order of the rows."""
    async def together() -> list[list[Outcome]]:
        limit = asyncio.Semaphore(32)
        return await asyncio.gather(*(run(url, CASES[dsl], rows[dsl], limit=limit) for dsl in CASES))

    return dict(zip(CASES, asyncio.run(together()), strict=True))


def main() -> None:
    rows = test_rows()
    outcomes: dict[str, dict[str, list[Outcome]]] = {}
    logs = ROOT / "reports" / "bench"
    with tempfile.TemporaryDirectory(prefix="nl2dsl-precision-store-") as store:
        for precision in PRECISIONS:
            progress(f"the service at {precision}: {N} requests each of {list(CASES)}")
            env = {"NL2DSL_DTYPE": precision, "NL2DSL_STORE": store, "NL2DSL_TENANT_MAX_CONCURRENCY": "64"}
            with local_server(env=env, log=logs / f"precision-{precision}.log", timeout=600) as url:
                if precision == PRECISIONS[0]:
                    publish_cron(url)
                outcomes[precision] = score(url, rows)
    facts: dict = {}
    comparisons: list[Comparison] = []
    for dsl, config in CASES.items():
        summaries = {p: summarize(outcomes[p][dsl]) for p in PRECISIONS}
        for p, s in summaries.items():
            valid = sum(o.valid for o in outcomes[p][dsl])
            facts[f"{dsl} ({config.label}), {p}: exact match [95%]"] = _rate(s.exact_match, s.exact_match_ci)
            facts[f"{dsl} ({config.label}), {p}: valid [95%]"] = _rate(valid / s.n, wilson_interval(valid, s.n))
        test = paired(summaries["bfloat16"].hits, summaries["float32"].hits)
        same = sum(a.code == b.code for a, b in zip(outcomes["bfloat16"][dsl], outcomes["float32"][dsl],
                                                      strict=True))
        facts[f"{dsl}: bfloat16 against float32 on the same {test.n} requests"] = (
            f"{test.wins} won, {test.losses} lost, McNemar p = {test.p_value:.2f}; {same} outputs identical")
        comparisons.append(Comparison(
            "bfloat16 vs float32 (quality)", f"{dsl} ({config.label}): exact match", summaries["bfloat16"].exact_match,
            summaries["float32"].exact_match, "", ("bfloat16", "float32"),
            note=f"n = {test.n}, same requests, greedy, constrained; {test.wins} won, {test.losses} lost "
                 f"(p = {test.p_value:.2f}); {same} identical outputs"))
    progress(json.dumps(facts, indent=1))
    # Every answer, for a look at the ones that differ (JSON lines: the report reads only docs/bench/results/*.json).
    (logs / "precision-outcomes.jsonl").write_text("".join(
        json.dumps({"precision": p, "dsl": dsl, **asdict(o)}) + "\n"
        for p, by_dsl in outcomes.items() for dsl, out in by_dsl.items() for o in out))
    save("precision", COMMAND, comparisons, facts)


def _rate(value: float, interval: tuple[float, float]) -> str:
    return f"{value:.2f} [{interval[0]:.2f}, {interval[1]:.2f}]"


if __name__ == "__main__":
    main()
