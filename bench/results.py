"""What every benchmark shares: interleaved repeats, medians, and one results file per benchmark.

A comparison is always measured side by side in one process and one run: the cases of a comparison take turns
(A, B, A, B, ...) so that the machine's drift hits both alike, and the ratio of their medians is reported.
Each benchmark writes ``docs/bench/results/<name>.json`` (the previous run's file moves to
``docs/bench/history/``); ``python -m bench.report`` turns them into docs/BENCHMARKS.md and its plot.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "docs" / "bench" / "results"
HISTORY_DIR = ROOT / "docs" / "bench" / "history"


@dataclass(frozen=True)
class Comparison:
    """One line of the report: ``value`` against ``baseline`` (medians), ratio = value / baseline."""

    group: str
    name: str
    value: float
    baseline: float
    unit: str
    #: What the value and the baseline are, e.g. "constrained" / "unconstrained".
    versus: tuple[str, str]
    #: The goal on the ratio (">= 0.95"), or "" where the issue sets none.
    goal: str = ""
    higher_is_better: bool = True
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else float("nan")


async def interleaved(cases: dict[str, Callable[[], Awaitable[float]]], repeats: int, *,
                      warmup: bool = False) -> dict[str, float]:
    """Run each case ``repeats`` times, taking turns; the median of each case's values.

    ``warmup``: run every case once first, unrecorded (one-time costs such as loading adapters).
    """
    if warmup:
        for name, case in cases.items():
            progress(f"  warm-up {name}: {await case():.4g}")
    values: dict[str, list[float]] = {name: [] for name in cases}
    for round_ in range(1, repeats + 1):
        for name, case in cases.items():
            values[name].append(await case())
            progress(f"  round {round_}/{repeats} {name}: {values[name][-1]:.4g}")
    return {name: statistics.median(v) for name, v in values.items()}


def progress(message: str) -> None:
    print(time.strftime("%H:%M:%S"), message, flush=True)


def save(bench: str, command: str, comparisons: list[Comparison], facts: dict | None = None) -> Path:
    """Write one benchmark's comparisons (and plain measurements, ``facts``) for the report; the results of its
    previous run go to the history, named for when that run finished."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{bench}.json"
    if path.exists():
        finished = json.loads(path.read_text()).get("finished", "earlier").replace(" ", "_").replace(":", "")
        HISTORY_DIR.mkdir(parents=True, exist_ok=True)
        path.replace(HISTORY_DIR / f"{bench}-{finished}.json")
    path.write_text(json.dumps({
        "bench": bench,
        "command": command,
        "machine": f"{platform.machine()}, {_cpus()} CPUs",
        "finished": time.strftime("%Y-%m-%d %H:%M"),
        "comparisons": [{**asdict(c), "ratio": c.ratio} for c in comparisons],
        "facts": facts or {},
    }, indent=2) + "\n")
    progress(f"wrote {path.relative_to(ROOT)}")
    return path


def load_all() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(RESULTS_DIR.glob("*.json"))]


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))
