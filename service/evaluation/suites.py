"""Named sets of evaluation runs and the markdown/JSON reports they write.

``adapters``: the shipped adapters on their held-out test sets (issue: tenant adapter beats the general one on
its tenant's flows and stays within 0.02 of it on general flows). Written to ``docs/TRAINING.md``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from service.evaluation.runner import RunConfig, Summary, run, summarize
from service.training.datasets import load_split

__all__ = ["SUITES", "Case", "run_suite", "write_report"]


@dataclass(frozen=True)
class Case:
    """A configuration scored on a test set (``data/<dsl>[/tenants/<tenant>]/test.jsonl``, first ``limit`` rows)."""

    config: RunConfig
    test_set: str  # "flow", "sql", "flow/contoso"
    limit: int

    def rows(self, data_dir: Path):
        dsl, _, tenant = self.test_set.partition("/")
        return load_split(data_dir, dsl, "test", tenant=tenant or None, limit=self.limit)


def _adapters_suite(limit: int) -> list[Case]:
    half = max(1, limit // 2)
    cases = [
        Case(RunConfig("flow-general", "flow", adapter="flow-general"), "flow", limit),
        Case(RunConfig("sql-general", "sql", adapter="sql-general"), "sql", half),
    ]
    for tenant in ("contoso", "fabrikam"):
        cases += [
            Case(RunConfig(f"flow-general on {tenant}", "flow", tenant=tenant, adapter="flow-general"),
                 f"flow/{tenant}", half),
            Case(RunConfig(tenant, "flow", tenant=tenant, adapter=tenant), f"flow/{tenant}", half),
            Case(RunConfig(f"{tenant} on general flow", "flow", adapter=tenant), "flow", limit),
        ]
    return cases


SUITES = {"adapters": _adapters_suite}

INTROS = {
    "adapters": """The shipped LoRA adapters, trained with `nl2dsl train` on the embedded base (SmolLM2-135M-Instruct,
CPU), scored through `POST /generate` on held-out test sets: flow's test set only has trigger/action pairs that
no training flow has, sql's only query shapes no training query has, and each tenant's test set only flows with
its private connector. Exact match is the whole program, character for character. Greedy decoding, grammar
constraint on (the tenant's grammar for tenant runs), no retrieved examples for adapters (their training prompt
had none). "grammar violations" = finished by themselves and still invalid (0 by construction); "cut" = stopped
by max_tokens.

How the adapters were trained (wall times in each `adapters/<name>/manifest.yaml`):

```sh
nl2dsl data                                   # data/: 20,000 train + 500 test pairs per DSL, 400 + 100 per tenant
nl2dsl train --dsl flow --name flow-general --steps 60
nl2dsl train --dsl sql --name sql-general --steps 60
nl2dsl train --dsl flow --name contoso --tenant contoso --tenants contoso \\
    --init-from adapters/flow-general --steps 40 --lr 5e-4      # half of each batch replays general flows
nl2dsl train --dsl flow --name fabrikam --tenant fabrikam --tenants fabrikam \\
    --init-from adapters/flow-general --steps 40 --lr 5e-4
```""",
}


def run_suite(url: str, cases: list[Case], *, data_dir: Path, concurrency: int) -> list[tuple[Case, Summary]]:
    results = []
    for case in cases:
        outcomes = asyncio.run(run(url, case.config, case.rows(data_dir), concurrency=concurrency))
        summary = summarize(outcomes)
        print(f"{case.config.label:<32} on {case.test_set:<14} n={summary.n:<4} exact={summary.exact_match:.3f} "
              f"valid={summary.valid_rate:.3f} violations={summary.grammar_violation_rate:.3f} "
              f"cut={summary.cut_rate:.3f} p50={summary.p50_s:.2f}s", flush=True)
        results.append((case, summary))
    return results


def write_report(results: list[tuple[Case, Summary]], *, title: str, command: str, markdown: Path,
                 intro: str = "") -> None:
    """A markdown table (plus the same numbers as JSON beside it)."""
    lines = [f"# {title}", "", intro, "", "Produced by:", "", f"```sh\n{command}\n```", "",
             "| configuration | test set | n | exact match | valid | grammar violations | cut at max_tokens | "
             "p50 s | p95 s |", "|---|---|---|---|---|---|---|---|---|"]
    for case, s in results:
        lines.append(f"| {case.config.label} | {case.test_set} | {s.n} | {s.exact_match:.3f} | {s.valid_rate:.3f} | "
                     f"{s.grammar_violation_rate:.3f} | {s.cut_rate:.3f} | {s.p50_s:.2f} | {s.p95_s:.2f} |")
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text("\n".join(lines) + "\n")
    payload = [
        {"case": {**asdict(case.config), "test_set": case.test_set}, "summary": asdict(s)} for case, s in results
    ]
    markdown.with_suffix(".json").write_text(json.dumps(payload, indent=1))
