"""The release gate: compare Locust's statistics with the thresholds file.

``thresholds.yaml`` holds a p95 (milliseconds) per request name, a maximum failure ratio per name and for
all requests together, and a minimum request count (a run that sent nothing proves nothing). Used by the
locustfile (exit code of a plain ``locust`` run) and by ``loadtest.run`` (the summary's verdict).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

__all__ = ["Breach", "Row", "check", "load_thresholds", "read_rows", "write_rows"]

DEFAULT_THRESHOLDS = Path(__file__).resolve().parent / "thresholds.yaml"


@dataclass(frozen=True)
class Row:
    """One line of Locust's statistics (``Aggregated`` for all requests together)."""

    name: str
    requests: int
    failures: int
    p50_ms: float
    p95_ms: float
    rps: float

    @property
    def failure_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0

    @classmethod
    def from_entry(cls, entry) -> Row:
        """From a live ``locust.stats.StatsEntry``."""
        return cls(
            name=entry.name,
            requests=entry.num_requests,
            failures=entry.num_failures,
            p50_ms=entry.get_response_time_percentile(0.5) or 0.0,
            p95_ms=entry.get_response_time_percentile(0.95) or 0.0,
            rps=entry.total_rps,
        )


def write_rows(path: Path, rows: list[Row]) -> None:
    """The run's final statistics, for ``read_rows``: written by the locustfile once every request has ended.

    Locust's own ``_stats.csv`` is rewritten once a second while it runs, so it can miss the requests that end in
    the last second, as slow ones waited out by ``--stop-timeout`` do; the gate would then see a row as empty.
    """
    path.write_text(json.dumps([asdict(row) for row in rows], indent=1))


def read_rows(path: Path) -> list[Row]:
    return [Row(**row) for row in json.loads(path.read_text())]


@dataclass(frozen=True)
class Breach:
    name: str
    what: str

    def __str__(self) -> str:
        return f"{self.name}: {self.what}"


def load_thresholds(path: Path | None = None) -> dict:
    return yaml.safe_load((path or DEFAULT_THRESHOLDS).read_text())


def check(rows: list[Row], thresholds: dict) -> list[Breach]:
    """Every threshold the run broke; an empty list is a pass."""
    by_name = {row.name: row for row in rows}
    breaches: list[Breach] = []
    total = by_name.get("Aggregated")
    min_requests = thresholds.get("min_requests", 1)
    if total is None or total.requests < min_requests:
        sent = total.requests if total else 0
        breaches.append(Breach("Aggregated", f"{sent} requests < {min_requests} required"))
    elif total.failure_ratio > thresholds.get("max_failure_ratio", 0.0):
        breaches.append(Breach("Aggregated", f"failure ratio {total.failure_ratio:.3f} > "
                                             f"{thresholds['max_failure_ratio']}"))
    for name, limits in (thresholds.get("endpoints") or {}).items():
        row = by_name.get(name)
        if row is None or row.requests == 0:
            if limits.get("required", False):
                breaches.append(Breach(name, "no requests were made"))
            continue
        if "p95_ms" in limits and row.p95_ms > limits["p95_ms"]:
            breaches.append(Breach(name, f"p95 {row.p95_ms:.0f} ms > {limits['p95_ms']} ms"))
        if "max_failure_ratio" in limits and row.failure_ratio > limits["max_failure_ratio"]:
            breaches.append(Breach(name, f"failure ratio {row.failure_ratio:.3f} > {limits['max_failure_ratio']}"))
    return breaches
