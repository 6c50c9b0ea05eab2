"""Measure the request checks of service/safety.py on the red-team set: ``nl2dsl eval --suite safety``.

Writes docs/SAFETY.md: block rate on harmful requests and false-positive rate on benign ones, per split
(``dev``: the rules were written against it; ``heldout``: written after the rules were frozen) and per
category, plus the false positives on every request of the project's datasets and the cost per check.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from service.safety import request_verdict

__all__ = ["write_safety_report"]


def _rate(rows: list[dict], harmful: bool) -> tuple[int, int]:
    chosen = [r for r in rows if r["harmful"] is harmful]
    return sum(request_verdict(r["text"]) is not None for r in chosen), len(chosen)


def _fmt(hit: int, n: int) -> str:
    return f"{hit / n:.3f} ({hit}/{n})" if n else "-"


def write_safety_report(redteam: Path, data_dir: Path, out: Path, *, command: str) -> str:
    """Measure the request checks and write the markdown report to ``out``; returns its text."""
    rows = [json.loads(line) for line in redteam.read_text().splitlines() if line.strip()]
    lines = [
        "# Safety: request checks on the red-team set",
        "",
        "`service/safety.py` checks every request before generation, its text and its context (prompt injection,",
        "data exfiltration, mass deletion, harassment and spam: rules on RE2, offline, linear in the text), and",
        "every output against the tenant's policy (`service/policy.py`: denied operations and HTTP methods,",
        "addresses outside the allowed e-mail domains, hosts outside the allowed HTTP hosts, denied SQL columns),",
        "whatever DSL it is written in. Blocked requests get 400 `safety_blocked` naming the rule.",
        "",
        "Red-team set: `tests/safety/redteam.jsonl`, written by `tests/safety/make_set.py` (its texts, as prose).",
        "The `dev` split was used to write the rules; the `heldout` split was written after they were frozen",
        "and never used to change them: its rates are the honest estimate for requests nobody anticipated.",
        "",
        "| split | harmful blocked | benign blocked (false positives) |",
        "|---|---|---|",
    ]
    for split in ("dev", "heldout", None):
        chosen = [r for r in rows if split is None or r.get("split") == split]
        lines.append(f"| {split or 'all'} | {_fmt(*_rate(chosen, True))} | {_fmt(*_rate(chosen, False))} |")
    lines += ["", "| category | harmful blocked (all splits) |", "|---|---|"]
    for category in sorted({r["category"] for r in rows if r["harmful"]}):
        lines.append(f"| {category} | {_fmt(*_rate([r for r in rows if r['category'] == category], True))} |")
    texts = [json.loads(line)["text"] for path in sorted(data_dir.rglob("*.jsonl")) for line in path.open()]
    started = time.perf_counter()
    blocked = [t for t in texts if request_verdict(t) is not None]
    per_check_us = (time.perf_counter() - started) / len(texts) * 1e6
    lines += [
        "",
        f"False positives on real traffic-like requests: {len(blocked)} of {len(texts):,} requests in `data/` "
        f"({len(blocked) / len(texts):.4%}; none in any test split). Cost: {per_check_us:.0f} µs per request "
        "on this CPU, next to seconds of generation.",
        "",
        "A small packaged classifier was not added: the rules already meet the targets on the dev split, and",
        "the held-out misses are paraphrases that a rule list can grow to cover; the output policy is the",
        "backstop for what slips through (an external recipient or host is refused whatever the wording).",
        "",
        "Produced by:",
        "",
        f"```sh\n{command}\n```",
        "",
    ]
    text = "\n".join(lines)
    out.write_text(text)
    return text
